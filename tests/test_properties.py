"""Bad input, property-based: every invalid configuration fails at validation with a
ConfigError naming the field, and none reaches a model; parameters of every registered component
are fuzzed; prompts that cannot run (empty, beyond the context, bytes, lone surrogates) get a
clear error; non-finite logits are caught before sampling.

``EXAMPLES`` counts the examples each property ran (``bench/reliability.py`` reports them).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import string
from collections import Counter
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metagen_plugins
from metagen_plugins import ConfigError, MetagenError, validate
from metagen_plugins.config import BUDGET_SETTINGS, GENERATION_SETTINGS, SECTIONS
from metagen_plugins.params import conforms

EXAMPLES: Counter = Counter()
SCALE = float(os.environ.get("METAGEN_FUZZ_SCALE", "1"))  # bench/reliability.py runs more examples


def examples(n: int) -> settings:
    return settings(max_examples=max(5, int(n * SCALE)), deadline=None, suppress_health_check=list(HealthCheck))


FUZZ = examples(150)
names = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                   st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(names, st.integers(), max_size=2))


@functools.lru_cache(maxsize=1)
def registry():
    return metagen_plugins.get_registry()


@contextlib.contextmanager
def no_model():
    """Fail if anything tries to create a host or load a model."""
    from metagen_plugins import hosts
    from metagen_plugins.engines.transformers import host

    def refuse(*args, **kwargs):
        raise AssertionError("an invalid configuration reached the host / a model load")

    with mock.patch.object(hosts, "create", refuse), mock.patch.object(host, "load_model", refuse):
        yield


# Invalid configurations: (configuration, a fragment the error must contain to name the field).
NAMED_INT = ("n", "batch", "max_samples", "beam_width", "expansions", "max_steps", "step_tokens", "iterations",
             "max_new_tokens")


@st.composite
def invalid_configs(draw):
    reg = registry()
    case = draw(st.sampled_from(["section", "host_key", "host_name", "setting_type", "budget_negative",
                                 "budget_nan", "max_new_tokens", "processor_name", "processor_param",
                                 "processor_type", "strategy_param", "strategy_value", "strategy_type",
                                 "scorer_name", "shape"]))
    if case == "section":
        name = draw(names.filter(lambda s: s not in SECTIONS))
        return {name: {}}, repr(name)
    if case == "host_key":
        key = draw(names.filter(lambda s: s not in registry().host("transformers").settings and s != "name"))
        return {"host": {key: 1}}, repr(key)
    if case == "host_name":
        name = draw(names.filter(lambda s: s not in registry().hosts))
        return {"host": {"name": name}}, repr(name)
    if case == "setting_type":
        section, schema = draw(st.sampled_from([("generation", GENERATION_SETTINGS), ("budget", BUDGET_SETTINGS)]))
        key = draw(st.sampled_from(sorted(schema)))
        value = draw(values.filter(lambda v: not conforms(v, schema[key])))
        return {section: {key: value}}, f"[{section}] {key}"
    if case == "budget_negative":
        key = draw(st.sampled_from(sorted(BUDGET_SETTINGS)))
        negative_int = st.integers(max_value=-1)
        # an int setting gets a negative int (int(-1e-9) would be 0, a valid budget)
        value = draw(negative_int if BUDGET_SETTINGS[key] is int
                     else negative_int | st.floats(max_value=-1e-9, allow_infinity=True))
        return {"budget": {key: value}}, f"[budget] {key}"
    if case == "budget_nan":
        return {"budget": {"max_flops": math.nan}}, "[budget] max_flops"
    if case == "max_new_tokens":
        return {"generation": {"max_new_tokens": draw(st.integers(max_value=0))}}, "max_new_tokens"
    if case == "processor_name":
        name = draw(names.filter(lambda s: s not in reg.components["logits_processors"]))
        index = draw(st.integers(0, 2))
        return {"processors": [{"name": "top_k", "top_k": 5}] * index + [{"name": name}]}, f"processors[{index}]"
    if case == "processor_param":
        key = draw(names.filter(lambda s: s not in ("top_p", "min_tokens_to_keep")))
        return {"processors": [{"name": "top_p", "top_p": 0.9, key: 1}]}, repr(key)
    if case == "processor_type":
        entry, key = draw(st.sampled_from([({"name": "top_p"}, "top_p"), ({"name": "top_k"}, "top_k"),
                                           ({"name": "temperature"}, "temperature"), ({"name": "min_p"}, "min_p")]))
        bad = draw(st.one_of(st.text(max_size=5), st.floats(allow_nan=True), st.integers(-100, 100),
                             st.booleans(), st.none()))
        if key == "top_k":
            bad = bad if not conforms(bad, int) or bad < 0 else -abs(bad) - 1
        elif not conforms(bad, float) or math.isnan(bad):
            pass
        elif key == "top_p" or key == "min_p":
            bad = draw(st.sampled_from([-0.5, 1.5, math.inf, -math.inf]))
        else:
            bad = draw(st.sampled_from([0.0, -1.0, -math.inf]))
        return {"processors": [{**entry, key: bad}]}, key
    strategies = sorted(reg.components["strategies"])
    if case in ("strategy_param", "strategy_value", "strategy_type"):
        name = draw(st.sampled_from(strategies))
        params = reg.components["strategies"][name].schema.params
        ints = [p for p in params if p in NAMED_INT]
        if case == "strategy_value" and ints:
            key = draw(st.sampled_from(ints))
            return {"strategy": {"name": name, key: draw(st.integers(max_value=0))}}, key
        if case == "strategy_type" and params:
            key = draw(st.sampled_from(sorted(params)))
            value = draw(values.filter(lambda v: not conforms(v, params[key].annotation)))
            return {"strategy": {"name": name, key: value}}, repr(key)
        key = draw(names.filter(lambda s: s not in params))
        return {"strategy": {"name": name, key: 1}}, repr(key)
    if case == "scorer_name":
        name = draw(names.filter(lambda s: s not in reg.components["scorers"]))
        return {"scorer": {"name": name}}, "[scorer]"
    section = draw(st.sampled_from(sorted(SECTIONS)))
    if SECTIONS[section] == "table":
        return {section: draw(st.sampled_from([[1], "text", 3]))}, f"[{section}]"
    return {section: draw(st.sampled_from([{"name": "x"}, "text", 3, [1]]))}, section


@FUZZ
@given(invalid_configs())
def test_every_invalid_configuration_fails_at_validation_naming_the_field(case):
    config, field = case
    EXAMPLES["invalid configurations"] += 1
    with pytest.raises(ConfigError) as caught:
        validate(config, registry())
    assert field in str(caught.value), (config, str(caught.value))
    with no_model(), pytest.raises(ConfigError):  # and run() stops there: no host, no model
        metagen_plugins.run(config, ["a prompt"])


@st.composite
def component_parameters(draw):
    reg = registry()
    kind = draw(st.sampled_from(["logits_processors", "stopping_criteria", "strategies", "scorers"]))
    name = draw(st.sampled_from(sorted(reg.components[kind])))
    info = reg.components[kind][name]
    keys = sorted(info.schema.params) + [draw(names)]
    entry = {key: draw(values) for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))}
    section = {"logits_processors": "processors", "stopping_criteria": "stopping"}.get(kind)
    if section:
        return {section: [{"name": name, **entry}]}, name
    return {{"strategies": "strategy", "scorers": "scorer"}[kind]: {"name": name, **entry}}, name


@FUZZ
@given(component_parameters())
def test_any_parameters_of_any_component_validate_or_fail_naming_it(case):
    """Random values for every registered component's parameters: validation accepts them or
    raises a metagen error naming the component; never another exception, never a model."""
    config, name = case
    EXAMPLES["component parameters"] += 1
    try:
        with no_model():
            validate(config, registry())
    except MetagenError as exc:
        assert repr(name) in str(exc), str(exc)


# -- prompts -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def small_model():
    from metagen_plugins.testing import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return tiny_model(len(tokenizer), max_positions=48), tokenizer


def run_small(prompts, **config):
    model, tokenizer = small_model()
    return metagen_plugins.run({"generation": {"max_new_tokens": 2}, **config}, prompts, model=model,
                               tokenizer=tokenizer)


@examples(40)
@given(st.text(max_size=80))
def test_any_text_prompt_runs_or_fails_clearly(prompt):
    EXAMPLES["text prompts"] += 1
    model, _ = small_model()
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ConfigError, match="lone surrogate"):
            run_small(prompt)
        return
    [result] = run_small(["ok", prompt])[1:] or [None]
    if metagen_plugins.failed(result):  # only the empty prompt and the one beyond the context may fail
        assert any(s in result.failures[-1]["error"] for s in ("empty after tokenization", "context is 48 tokens"))
    else:
        assert result.best is not None and len(result.best.token_ids) <= 2


def test_a_prompt_beyond_the_context_fails_before_generating():
    model, _ = small_model()
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(metagen_plugins.HostError, match="is 60 tokens; the model's context is 48 tokens"):
            run_small("x" * 60)
    finally:
        hook.remove()
    assert calls == []  # not one forward pass
    results = run_small(["fits", "x" * 60, "y" * 47])
    assert results[0].best is not None and metagen_plugins.failed(results[1])
    assert len(results[2].best.token_ids) <= 1  # generation stops at the context's end


@pytest.mark.parametrize("prompts, message", [
    (b"caf\xc3\xa9", "the prompt is bytes"),
    (["fine", b"\xff\xfe"], "prompt 1 is bytes"),
    (["ok", "abc\udcff"], r"prompt 1 is not valid Unicode text: '\\udcff' at character 3"),
    (["ok", 7], "prompt 1 is int"),
    ([], "no prompts given"),
])
def test_prompts_that_are_not_text_fail_before_any_model(prompts, message):
    with no_model(), pytest.raises(ConfigError, match=message):
        metagen_plugins.run({}, prompts)


def test_an_empty_prompt_fails_alone():
    results = run_small(["", "ab"])
    assert metagen_plugins.failed(results[0]) and "empty after tokenization" in results[0].failures[-1]["error"]
    assert results[1].best is not None


# -- non-finite logits -------------------------------------------------------------------------

@examples(300)
@given(st.integers(1, 4), st.integers(2, 16), st.integers(1, 3), st.booleans(), st.data())
def test_non_finite_scores_are_caught_and_finite_ones_pass(rows, vocab, step, in_place, data):
    """The fused check (one reduction per step) catches exactly what a check after every
    processor would, and names the processor, at any step, whether it writes in place or not."""
    from metagen_plugins.engines.transformers.finite import _FiniteCheck, _Raw

    EXAMPLES["logit tensors"] += 1
    scores = torch.tensor(data.draw(st.lists(st.lists(st.floats(-50, 50), min_size=vocab, max_size=vocab),
                                             min_size=rows, max_size=rows)))
    masked = data.draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, vocab - 1)), max_size=vocab))
    for r, c in masked:  # -inf is a banned token: fine unless a whole row is banned
        scores[r, c] = -math.inf
    fault = data.draw(st.sampled_from([None, "nan", "inf", "row"]))
    if fault is not None:
        r, c = data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, vocab - 1))
        if fault == "row":
            scores[r, :] = -math.inf
        else:
            scores[r, c] = math.nan if fault == "nan" else math.inf
    whole_row_banned = bool(torch.isneginf(scores).all(-1).any())

    def processor(ids, logits):  # returns ``scores`` at the step under test, the logits before
        if calls.append(None) or len(calls) < step:
            return logits
        if in_place:
            logits.copy_(scores)
            return logits
        return scores.clone()

    calls: list = []
    raw = _Raw()
    check = _FiniteCheck(raw, [(processor, "processors[0]: logits processor 'x'", None)])
    for _ in range(step - 1):
        check(None, processor(None, raw(None, torch.zeros(rows, vocab))))
    logits = torch.zeros(rows, vocab)
    if fault is None and not whole_row_banned:
        assert torch.equal(check(None, processor(None, raw(None, logits))), scores)
    else:
        # a processor writing NaN into the logits in place is named beside the model
        named = r"the model's logits .* unless one wrote" if in_place else r"processors\[0\]: logits processor 'x'"
        with pytest.raises(metagen_plugins.HostError, match=rf"{named}.* produced .* at generation step {step}"):
            check(None, processor(None, raw(None, logits)))


@examples(50)
@given(st.sampled_from(["nan", "inf", "row"]))
def test_non_finite_model_logits_are_blamed_on_the_model(fault):
    from metagen_plugins.engines.transformers.finite import _FiniteCheck, _Raw

    logits = torch.zeros(2, 5)
    if fault == "row":
        logits[1] = -math.inf
    else:
        logits[0, 3] = math.nan if fault == "nan" else math.inf
    raw = _Raw()
    check = _FiniteCheck(raw, [(lambda ids, s: s / 0.7, "processors[0]: logits processor 'x'", None)])
    with pytest.raises(metagen_plugins.HostError, match=r"the model's logits \(before any processor.*\) produced"):
        check(None, raw(None, logits) / 0.7)
