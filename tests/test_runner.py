"""The runner (metagen_plugins.runner): a configuration's strategy over many prompts on one host.
How many prompts run at once and who says so, what fails before the host is made, closing,
result order, per-prompt configurations, what it passes the host (conversations, streamed
text), the scorer shared by prompts, and a failure told apart as the host's or a component's.

On the fixture plugin tests/plugins/recording_host.py: a host with no model that records what
the runner asks of it. Prompts checked as text: test_properties.py; a dataset budget:
test_allocate.py; prompts batched on the transformers engine: tests/engines/transformers/."""

from __future__ import annotations

import threading

import pytest

import metagen_plugins
from metagen_plugins import ConfigError, PluginError
from metagen_plugins.runner import DEFAULT_CONCURRENCY, Runner
from tests.plugins import plugins_dir, source


def config(**sections) -> dict:
    return {**sections, "host": {"name": "recording", **sections.get("host", {})}}


@pytest.fixture
def reg(tmp_path, registry):
    return registry(plugins_dir=plugins_dir(tmp_path / "plugins", "recording_host"))


def recording(reg):
    """The fixture plugin's module as ``reg`` loaded it: ``RecordingHost.made`` (each host's
    ``events``), ``RecordingHost.gates``, ``TextLength.built``."""
    return reg.manager.pm.get_plugin("recording_host")


# -- how many prompts at once ------------------------------------------------------------------

def test_concurrency_is_the_callers_else_the_configurations_else_the_hosts_else_64(reg, tmp_path, registry):
    def concurrency(cfg, registry=reg, **kwargs):
        with Runner(cfg, registry=registry, **kwargs) as runner:
            return runner.concurrency

    assert concurrency(config(run={"concurrency": 5}), concurrency=2) == 2
    assert concurrency(config(run={"concurrency": 5}, host={"default_concurrency": 7})) == 5
    assert concurrency(config(host={"default_concurrency": 7})) == 7  # the host object's own
    assert concurrency(config()) == 3  # what the host declared: Capabilities(concurrency=3)
    (tmp_path / "undeclared.py").write_text(source("recording_host").replace(
        "capabilities=Capabilities(concurrency=3)", "capabilities=Capabilities()"))
    assert concurrency(config(), registry(plugins_dir=tmp_path)) == DEFAULT_CONCURRENCY == 64


def test_no_more_prompts_run_at_once_than_the_concurrency(reg):
    """Three prompts held at their gates take the three workers: a fourth waits for one of them."""
    gates = {p: threading.Event() for p in ("a", "b", "c")}
    recording(reg).RecordingHost.gates.update(gates)
    with Runner(config(), registry=reg) as runner:
        held = [runner.submit(p) for p in gates]
        fourth = runner.submit("dddd")
        with pytest.raises(TimeoutError):
            fourth.result(timeout=0.5)  # (never done while the three are held, however long)
        [host] = recording(reg).RecordingHost.made
        assert [e[0] for e in host.events] == ["generator"] * 3  # the fourth did not start
        gates["b"].set()
        assert fourth.result(timeout=30).best.text == "#### 4"
        gates["a"].set()
        gates["c"].set()
        assert [f.result(timeout=30).best.text for f in held] == ["#### 1"] * 3


@pytest.mark.parametrize("value", [0, -2, True, 2.5, "4"])
def test_a_bad_concurrency_fails_before_the_host_is_made(reg, value):
    with pytest.raises(ConfigError, match=r"concurrency must be an int >= 1 \(1 runs prompts one at a time\), got"):
        Runner(config(), concurrency=value, registry=reg)
    with pytest.raises(ConfigError, match="concurrency must be an int >= 1"):
        metagen_plugins.run(config(), ["x"], concurrency=value, registry=reg)
    assert recording(reg).RecordingHost.made == []
    with pytest.raises(ConfigError, match=r"\[run\] concurrency must be >= 1"):
        metagen_plugins.validate(config(run={"concurrency": 0}), reg)


# -- what fails before the host, and closing ---------------------------------------------------

def test_a_scorer_with_bad_parameters_fails_before_the_host_is_made(reg):
    with pytest.raises(ConfigError, match=r"scorer 'text_length' \(plugin 'recording_host', recording_host\) "
                                          r"rejected its parameters \{'scale': -1.0\}: scale must be > 0"):
        Runner(config(strategy={"name": "best_of_n", "n": 2}, scorer={"name": "text_length", "scale": -1.0}),
               registry=reg)
    assert recording(reg).RecordingHost.made == []


def test_a_factory_that_raises_is_reported_before_any_model_loads(install_plugin, registry, monkeypatch):
    install_plugin("metagen_faulty", source("faulty"), dist="metagen-faulty", version="0.3")
    reg = registry()
    monkeypatch.setattr(reg, "create_host", lambda *a, **k: pytest.fail("the host was created"))
    with pytest.raises(PluginError) as caught:
        metagen_plugins.run({"scorer": {"name": "unbuildable"}}, ["x", "y"])
    assert "scorer 'unbuildable' (plugin 'metagen_faulty', metagen-faulty 0.3) failed to build" in str(caught.value)
    assert "RuntimeError: cannot build" in str(caught.value)


def test_a_scorer_that_needs_the_host_and_fails_to_build_closes_the_host(reg):
    """A scorer built with the host's tokenizer is built once the host exists; when that fails,
    the runner closes the host it made before raising (a remote host's clients, a loaded model)."""
    with pytest.raises(PluginError, match="scorer 'needs_host' .* failed to build: RuntimeError: needs_host refuses"):
        Runner(config(scorer={"name": "needs_host", "refuse": True}), registry=reg)
    [host] = recording(reg).RecordingHost.made
    assert host.events == [("closed",)]


def test_closing_waits_for_running_prompts_then_closes_the_host_once(reg):
    gate = threading.Event()
    recording(reg).RecordingHost.gates["slow"] = gate
    runner = Runner(config(), registry=reg)
    running = runner.submit("slow")
    threading.Timer(0.2, gate.set).start()
    runner.close()
    assert running.done() and running.result().best.text == "#### 4"
    [host] = recording(reg).RecordingHost.made
    assert host.events[-2:] == [("answered", "slow"), ("closed",)]
    runner.close()  # again: nothing more
    assert host.events.count(("closed",)) == 1
    with pytest.raises(RuntimeError, match="this Runner is closed"):
        runner.submit("late")


# -- results, and what a prompt brings ---------------------------------------------------------

def test_results_come_back_in_input_order_and_on_result_in_the_order_they_finish(reg):
    gates = recording(reg).RecordingHost.gates
    gates.update(a=threading.Event(), bb=threading.Event())
    seen = []

    def on_result(result):  # each prompt that finishes lets the one before it finish: ccc, bb, a
        seen.append(result.prompt)
        {"ccc": gates["bb"], "bb": gates["a"]}.get(result.prompt, threading.Event()).set()

    with Runner(config(), registry=reg) as runner:
        results = runner.map(["a", "bb", "ccc"], on_result=on_result)
    assert seen == ["ccc", "bb", "a"]
    assert [r.prompt for r in results] == ["a", "bb", "ccc"]
    assert [r.best.text for r in results] == ["#### 1", "#### 2", "#### 3"]


def test_a_prompt_may_bring_its_own_configuration_but_not_another_host(reg):
    with Runner(config(), registry=reg) as runner:
        voting = metagen_plugins.validate(config(strategy={"name": "self_consistency", "n": 3}), reg)
        result = runner.submit("abc", config=voting).result()
        assert result.strategy == "self_consistency" and len(result.candidates) == 3
        assert runner.submit("abc").result().strategy == "generate"  # the runner's own, for the others
        elsewhere = metagen_plugins.validate(config(host={"streams": True}), reg)
        with pytest.raises(ConfigError, match=r"a per-prompt configuration must keep the runner's \[host\] settings"):
            runner.submit("abc", config=elsewhere)
    [host] = recording(reg).RecordingHost.made
    assert [extras for event, *extras in host.events if event == "generator"] == [[{"config": voting}], [{}]]


def test_the_scorer_is_built_once_for_each_configuration_and_shared_by_its_prompts(reg):
    text_length = recording(reg).TextLength
    scored = config(strategy={"name": "best_of_n", "n": 2}, scorer={"name": "text_length"})
    with Runner(scored, registry=reg) as runner:
        built = text_length.built
        results = runner.map(["a", "bb", "ccc", "dddd"])
        assert text_length.built == built  # not once per prompt
        assert [r.scores for r in results] == [[6.0, 6.0]] * 4  # "#### n": 6 characters
        doubled = metagen_plugins.validate({**scored, "scorer": {"name": "text_length", "scale": 2.0}}, reg)
        built = text_length.built
        assert [runner.submit(p, config=doubled).result().scores for p in ("a", "bb")] == [[12.0, 12.0]] * 2
        assert text_length.built == built + 1  # the second configuration's scorer, once for both prompts


def test_a_conversation_is_passed_only_to_a_host_that_formats_one(reg):
    turns = [{"role": "system", "content": "be brief", "name": "ops"}, {"role": "user", "content": "earlier"}]
    with Runner(config(), registry=reg) as runner:
        with pytest.raises(ConfigError, match="the recording host applies no chat template here, so it cannot "
                                              "format a conversation of several messages"):
            runner.submit("now", conversation=turns)
    with Runner(config(host={"conversations": True}), registry=reg) as runner:
        assert runner.submit("now", conversation=turns).result().best.text == "#### 3"
    refused, formatted = recording(reg).RecordingHost.made
    assert refused.events == [("closed",)]  # refused before anything ran
    assert formatted.events[0] == ("generator", {"conversation": [{"role": "system", "content": "be brief"},
                                                                  {"role": "user", "content": "earlier"}]})


def test_text_is_streamed_only_from_a_host_that_streams(reg):
    pieces: list[str] = []
    with Runner(config(), registry=reg) as runner:
        assert not runner.streams  # declared Capabilities(streaming=False), no attribute
        runner.submit("x", on_text=pieces.append).result()
    with Runner(config(host={"streams": True}), registry=reg) as runner:
        assert runner.streams  # the host object's attribute
        runner.submit("y", on_text=pieces.append).result()
    plain, streaming = recording(reg).RecordingHost.made
    assert plain.events[0] == ("generator", {})
    assert streaming.events[0] == ("generator", {"on_text": pieces.append})


# -- failures: the host's or a component's -----------------------------------------------------

def test_a_failure_is_told_apart_as_the_hosts_or_a_components_beside_it(reg):
    """An exception in the host's code is the host's failure; one in a component's code is that
    component's, even when the component lives in the host's own plugin module. In a list a
    failing prompt fails alone; a single prompt raises, a component's error with a note naming it."""
    results = metagen_plugins.run(config(), ["ok", "host fails"], registry=reg)
    assert results[0].best.text == "#### 2" and not metagen_plugins.failed(results[0])
    assert metagen_plugins.failed(results[1]) and results[1].best is None
    [failure] = results[1].failures
    assert (failure["kind"], failure["component"]) == ("host", "recording host")
    assert failure["message"].startswith("the recording host failed: RuntimeError: the recording host cannot "
                                         "answer this (at recording_host.py:")

    scored = config(strategy={"name": "best_of_n", "n": 2}, scorer={"name": "text_length", "fail": True})
    [failure] = metagen_plugins.run(scored, ["ok", "fine"], registry=reg)[1].failures
    assert (failure["kind"], failure["component_kind"], failure["name"], failure["plugin"]) == (
        "component", "scorers", "text_length", "recording_host")
    assert failure["message"].startswith("scorer 'text_length' (plugin 'recording_host', recording_host) raised "
                                         "ArithmeticError: text_length was told to fail at recording_host.py:")

    with pytest.raises(RuntimeError, match="the recording host cannot answer this") as caught:
        metagen_plugins.run(config(), "host fails", registry=reg)
    assert not getattr(caught.value, "__notes__", [])
    with pytest.raises(ArithmeticError) as caught:
        metagen_plugins.run(scored, "ok", registry=reg)
    assert caught.value.__notes__ == [failure["message"]]
