"""The tutorials' code, installed as written, works."""

import re
import tomllib
from pathlib import Path

import pytest

import metagen_plugins

DOC = (Path(__file__).resolve().parent.parent / "docs" / "plugin-tutorial.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def test_tutorial_plugin_is_short_and_works(install_plugin, registry, tiny):
    code = blocks("python")[0]
    pyproject = blocks("toml")[0]
    assert len([l for l in code.splitlines() if l.strip()]) <= 20
    assert len([l for l in pyproject.splitlines() if l.strip()]) <= 10
    meta = tomllib.loads(pyproject)
    [(entry_name, module)] = meta["project"]["entry-points"]["metagen"].items()
    install_plugin(module, code, dist=meta["project"]["name"], version=meta["project"]["version"],
                   entry_name=entry_name)
    registry()
    model, tok = tiny
    assert metagen_plugins.components("logits_processors")["no_digits"]["distribution"] == "metagen-nodigits"
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "no_digits"}]}, tokenizer=tok)
    out = model.generate(**tok("123", return_tensors="pt"), **kwargs, max_new_tokens=40, pad_token_id=2)
    assert not any(ch.isdigit() for ch in tok.decode(out[0, 3:]))


def install_tutorial(doc: str, install_plugin, registry) -> list[str]:
    """Install a tutorial's first python block as the distribution its first toml block
    describes, reload the registry, and return the tutorial's python blocks."""
    python = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    meta = tomllib.loads(re.findall(r"```toml\n(.*?)```", doc, flags=re.S)[0])
    [(entry_name, module)] = meta["project"]["entry-points"]["metagen"].items()
    install_plugin(module, python[0], dist=meta["project"]["name"], version=meta["project"]["version"],
                   entry_name=entry_name)
    registry()
    return python


STRATEGY_DOC = (Path(__file__).resolve().parent.parent / "docs" / "strategy-tutorial.md").read_text()


def test_strategy_tutorial_installs_and_runs_on_the_demo_model(install_plugin, registry):
    """The strategy tutorial's code and pyproject, installed as a distribution, run as written."""
    from metagen_hooks import EVENTS, check_event

    code, run_example = install_tutorial(STRATEGY_DOC, install_plugin, registry)
    info = metagen_plugins.components("strategies")["until_agree"]
    assert info["distribution"] == "metagen-until-agree"
    assert info["parameters"] == ["agree: int = 3", "batch: int = 2", "n: int = 12"]
    namespace: dict = {}
    exec(run_example.replace("print(", "printed = ("), namespace)
    result = namespace["result"]
    assert result.strategy == "until_agree" and 2 <= len(result.candidates) <= 6
    assert result.budget.samples == len(result.candidates)
    votes = result.trace[-1]["votes"]
    assert max(votes.values()) >= 2 or len(result.candidates) == 6  # stopped on agreement, or at n
    assert result.best is not None and "####" in result.best.text
    for event in result.trace:
        check_event(event)
    assert {e["event"] for e in result.trace} <= set(EVENTS)


def test_generate_kwargs_example_runs(tiny_dir):
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "generate_kwargs.py"
    proc = subprocess.run([sys.executable, str(example), str(tiny_dir)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "'logits_processor'" in first and "'stopping_criteria'" in first
    assert "'prompt_lookup_num_tokens'" in first and "'do_sample'" in first


def test_every_page_is_in_the_mkdocs_nav():
    """`mkdocs build --strict` (make docs) fails on a nav entry with no page; this catches the
    converse early: a page nobody can reach from the nav."""
    root = Path(__file__).resolve().parent.parent
    nav = (root / "mkdocs.yml").read_text()
    pages = {p.name for p in (root / "docs").glob("*.md")}
    missing = sorted(p for p in pages if not re.search(rf":\s*{re.escape(p)}\s*$", nav, flags=re.M))
    assert pages and not missing, f"add these pages to the nav in mkdocs.yml: {missing}"


SEARCH_DOC = (Path(__file__).resolve().parent.parent / "docs" / "search-tutorial.md").read_text()


def test_search_tutorial_variant_passes_its_own_test_and_runs_on_the_demo_model(install_plugin, registry):
    """The step-search tutorial's beam-search variant, installed as written: its own test (on
    ScriptedGenerator) passes, metagen checks its parameters, and it runs on the demo model."""
    from metagen_hooks import EVENTS, check_event

    code, test_code, run_example = install_tutorial(SEARCH_DOC, install_plugin, registry)
    assert "metagen_plugins" not in code and "import torch" not in code + test_code
    info = metagen_plugins.components("strategies")["diverse_beam_search"]
    assert info["distribution"] == "metagen-diverse-beam"
    assert "per_parent: int = 1" in info["parameters"]

    namespace: dict = {}
    exec(test_code, namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()

    with pytest.raises(metagen_plugins.ConfigError, match="per_parent must be >= 1"):
        metagen_plugins.run({"strategy": {"name": "diverse_beam_search", "per_parent": 0},
                             "scorer": {"name": "step_checker"}}, "x")

    namespace = {}
    exec(run_example.replace("print(", "printed = ("), namespace)
    result = namespace["result"]
    assert result.strategy == "diverse_beam_search" and "####" in result.best.text
    first = [e["candidate"]["text"] for e in result.trace if e["event"] == "candidate" and e["depth"] == 0]
    assert len(first) == 3 * 2 and all(t.endswith(". ") for t in first)  # beam_width x expansions first steps
    for event in result.trace:
        check_event(event)
    assert {e["event"] for e in result.trace} <= set(EVENTS)
HOST_DOC = (Path(__file__).resolve().parent.parent / "docs" / "host-tutorial.md").read_text()


def test_host_tutorial_installs_and_runs_against_a_llama_server(install_plugin, registry):
    """The host tutorial's code and pyproject, installed as a distribution, run its example as
    written against a stand-in llama-server: every checklist item holds."""
    from metagen_hooks import Budget
    from llamacpp_server import LlamaCppServer

    code, run_example = re.findall(r"```python\n(.*?)```", HOST_DOC, flags=re.S)
    meta = tomllib.loads(re.findall(r"```toml\n(.*?)```", HOST_DOC, flags=re.S)[0])
    [(entry_name, module)] = meta["project"]["entry-points"]["metagen"].items()
    assert "metagen_plugins.hostkit" in code and "metagen_plugins." not in code.replace("metagen_plugins.hostkit", "")
    install_plugin(module, code, dist=meta["project"]["name"], version=meta["project"]["version"],
                   entry_name=entry_name)
    reg = registry()
    host = reg.host("llamacpp")
    assert host.distribution == "metagen-llamacpp" and host.capabilities.stop_strings
    with LlamaCppServer() as server:
        namespace: dict = {}
        exec(run_example.replace("http://127.0.0.1:8080", server.url).replace("print(", "printed = ("), namespace)
        result = namespace["result"]
        assert result.strategy == "self_consistency" and result.budget.samples == 8 == len(server.requests)
        assert "#### 16" in result.best.text  # the stand-in's solver is right more often than not
        assert sorted(r["seed"] for r in server.requests) == list(range(1, 9))  # one stream per request
        assert all(r["stop"] == ["\n\n"] and r["temperature"] == 0.8 and r["n_predict"] == 64 for r in server.requests)
        assert result.budget.tokens_generated == sum(a["tokens_predicted"] for a in server.answers)
        assert result.budget.prompt_tokens_reused == sum(a["timings"]["cache_n"] for a in server.answers) > 0

        greedy = {"host": {"name": "llamacpp", "url": server.url, "retries": 1}}
        server.fail_next = [503]  # sent again
        with metagen_plugins.Runner(greedy, registry=reg) as runner:
            assert runner.concurrency == 4  # requests_per_replica, one replica
            before = len(server.requests)
            [[step]] = runner.host.generator(Budget()).sample(["Q: 12+7-3=? A:"], stop=[". "])
            assert len(server.requests) == before + 2 and not server.fail_next  # the 503, then the answer
            assert (step.text, step.finish_reason) == (" 12+7=19. ", "stop")  # the stop string kept
            assert server.requests[-1]["temperature"] == 0.0
            [[rest]] = runner.host.generator(Budget(max_samples=1)).extend([step], 3)  # fewer than n allowed
            assert rest.text == " 12+7=19. 19-3=16. #### 16"
        with pytest.raises(metagen_plugins.ConfigError, match="'mirostat'.* cannot run on the llamacpp host"):
            metagen_plugins.validate({**greedy, "processors": [{"name": "mirostat"}]}, reg)
        top_k = metagen_plugins.validate({**greedy, "processors": [{"name": "top_k", "top_k": 4}]}, reg)
        with metagen_plugins.Runner(top_k, registry=reg) as runner:  # realised by the host's realisations=
            runner.host.generator(Budget()).sample(["Q: 1+2=? A:"])
            assert server.requests[-1]["top_k"] == 4 and "temperature" not in server.requests[-1]
