"""TGI's own OpenAPI document is the contract: every request body the TGI host sends, and every
response the loopback server answers with, validates against it (tests/data/tgi/, a copy of
../shared/reference/tgi/)."""

import filecmp
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.config import validate
from metagen_plugins.engines.tgi.host import TGIHost
from tgi_server import DATA, TGIServer, snapshot, spec_validator

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "tgi"
PROMPT = "Q: 12+7=? A:"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}

CONFIGURATIONS = {
    "plain": {},
    "every component": {"processors": [
        {"name": "temperature", "temperature": 0.5}, {"name": "top_k", "top_k": 10}, {"name": "top_p", "top_p": 0.9},
        {"name": "typical", "mass": 0.9}, {"name": "repetition_penalty", "penalty": 1.2},
        {"name": "frequency_penalty", "penalty": 0.5}, {"name": "watermark"}, {"name": "grammar", "regex": r" \d+"}],
        "stopping": [{"name": "stop_strings", "stop": ["\n"]}, {"name": "token_budget", "max_tokens": 20}]},
    "json grammar": {"processors": [{"name": "grammar", "json_schema": SCHEMA}]},
    "best_of": {"host": {"best_of": 2}, "generation": {"do_sample": True}},
    "top tokens and prompt logprobs": {"host": {"top_n_tokens": 2, "prompt_logprobs": True}},
    "streamed stops": {"stopping": [{"name": "stop_strings", "stop": ["a", "b", "c", "d", "e", "=1"]}],
                       "host": {"top_n_tokens": 1}},
}


@pytest.fixture(scope="module")
def check():
    return spec_validator()


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_every_request_body_validates_against_tgis_openapi(check, name):
    extra = CONFIGURATIONS[name]
    with TGIServer() as server:
        data = {"host": {"name": "tgi", "url": server.url, **extra.get("host", {})},
                "generation": {"max_new_tokens": 30, "seed": 1, **extra.get("generation", {})},
                **{k: v for k, v in extra.items() if k not in ("host", "generation")}}
        if name == "best_of":
            data["generation"].pop("seed")
        registry = metagen_plugins.get_registry()
        gen = TGIHost(validate(data, registry), registry).generator(Budget())
        [[first, _]] = gen.sample([PROMPT], n=2, stop=[". "])
        gen.extend([first], n=1, max_new_tokens=8)
        assert len(server.requests) == 3
        for path, body in server.requests:
            schema = "CompatGenerateRequest" if path == "/" else "GenerateRequest"
            assert check(schema, body) == [], body
        assert server.contract_errors == []  # and every answer it gave


def test_the_validator_is_not_vacuous(check):
    assert check("CompatGenerateRequest", {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": {}}}}) == []
    assert check("CompatGenerateRequest", {"parameters": {}})  # inputs is required
    assert check("CompatGenerateRequest", {"inputs": "x", "parameters": {"grammar": {"type": "lark", "value": "a"}}})
    assert check("CompatGenerateRequest", {"inputs": "x", "parameters": {"stop": "not a list"}})
    assert check("GenerateResponse", {"details": {"tokens": []}, "generated_text": "x"})  # details incomplete


@pytest.mark.parametrize("path", sorted(p.stem for p in (DATA / "snapshots").glob("*.json")
                                         if "completion" not in p.stem))
def test_tgis_recorded_answers_validate_once_client_nulls_are_dropped(check, path):
    assert check("GenerateResponse", snapshot(path)) == []
    raw = json.loads((DATA / "snapshots" / f"{path}.json").read_text())
    assert all("top_tokens" in error for error in check("GenerateResponse", raw))  # the only difference


def test_recorded_openai_stream_chunks_validate():
    """The /v1/completions chunks TGI recorded: the OpenAI route, which this host does not use
    (it takes no logprobs, n, top_k or grammar), checked so the copy stays a faithful record."""
    check = spec_validator()
    chunks = json.loads((DATA / "snapshots" / "test_flash_llama_completion_many_prompts_stream.json").read_text())
    assert chunks and all(check("Chunk", c) == [] for c in chunks)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (it sits beside a checkout in CI); "
                                                "the project's copy in tests/data/tgi is used instead")
def test_the_projects_copy_equals_the_shared_reference():
    names = ["openapi.json"] + [f"snapshots/{p.name}" for p in (SHARED / "snapshots").glob("*.json")]
    match, mismatch, errors = filecmp.cmpfiles(SHARED, DATA, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)


@pytest.fixture(scope="module")
def shared_server():
    with TGIServer() as running:
        yield running


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_valid_configuration_sends_bodies_that_validate(shared_server, check, data):
    """Random parameter values, stop lists of any length and content, seeds, grammars, top tokens
    and prompt log-probs: whatever the host sends is a valid TGI request."""
    draw = data.draw
    processors = [entry for entry, on in [
        ({"name": "temperature", "temperature": draw(st.floats(0.05, 2.0))}, draw(st.booleans())),
        ({"name": "top_k", "top_k": draw(st.integers(1, 200))}, draw(st.booleans())),
        ({"name": "top_p", "top_p": draw(st.floats(0.05, 1.0))}, draw(st.booleans())),
        ({"name": "typical", "mass": draw(st.floats(0.05, 0.99))}, draw(st.booleans())),
        ({"name": "repetition_penalty", "penalty": draw(st.floats(0.5, 2.0))}, draw(st.booleans())),
        ({"name": "frequency_penalty", "penalty": draw(st.floats(-1.9, 2.0))}, draw(st.booleans())),
        ({"name": "watermark"}, draw(st.booleans())),
        (draw(st.sampled_from([{"name": "grammar", "regex": r"\d+"}, {"name": "grammar", "json_schema": SCHEMA}])),
         draw(st.booleans())),
    ] if on]
    words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=4)
    stop = draw(st.lists(words, max_size=7))
    host = {"name": "tgi", "url": shared_server.url, "top_n_tokens": draw(st.integers(0, 5)),
            "prompt_logprobs": draw(st.booleans())}
    generation = {"max_new_tokens": draw(st.integers(1, 40))}
    seed = draw(st.one_of(st.none(), st.integers(0, 2**31)))
    if seed is not None:
        generation["seed"] = seed
    data_ = {"host": host, "generation": generation, "processors": processors}
    if stop:
        data_["stopping"] = [{"name": "stop_strings", "stop": stop}]
    registry = metagen_plugins.get_registry()
    made = TGIHost(validate(data_, registry), registry)
    try:
        before = len(shared_server.requests)
        made.generator(Budget()).sample([PROMPT], n=draw(st.integers(1, 3)), stop=draw(st.lists(words, max_size=2)))
    finally:
        made.loop.close()
    for path, body in shared_server.requests[before:]:
        assert check("CompatGenerateRequest", body) == [], body
    assert shared_server.contract_errors == []
