"""Quantized KV inside the batched engine ([host] kv_cache = "int8" / "int4"): the formats, the
integer kernel against float attention, the engine against unquantized decoding (greedy tokens,
log-probs, N rows sharing a prefix, rows leaving, extend, seeded runs whatever the batch), the
bytes it holds, and the setting's errors."""

from __future__ import annotations

import threading

import pytest
import torch

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.engines.transformers.kv_quant import (KVQuant, QuantPrefix, Segment, held_bytes, kv_quant,
                                                           pack, quantize_keys, unpack)
from metagen_plugins.engines.transformers.quant_attention import QuantLayout, prefix_part
from metagen_plugins.errors import ConfigError
from metagen_plugins.testing import tiny_model, tiny_tokenizer
from tests.engines.transformers.threads import sample_concurrently

PROMPTS = ["the quick brown fox jumps over the lazy dog " * 6, "a",
           "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 4, "hello hello hello"]
SMALL = {"bits": 8, "group": 4, "residual": 3}  # short prompts are quantized too


def host(model, tok, kv=None, **settings) -> TransformersHost:
    registry = metagen_plugins.get_registry()
    if kv is not None:
        settings["kv_cache"] = kv
    return TransformersHost(metagen_plugins.validate({"host": settings}, registry), registry, model=model,
                            tokenizer=tok)


@pytest.fixture(scope="module")
def tiny2():
    return tiny_model(vocab_size=63, heads=4, kv_heads=2, seed=5, hidden=64), tiny_tokenizer()


def greedy(model, tok, kv, prompts=PROMPTS, n=3, max_new_tokens=24, **settings):
    return sample_concurrently(host(model, tok, kv, **settings), prompts, n, max_new_tokens)


# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_keys_round_trip_within_half_a_step_of_each_position(bits):
    torch.manual_seed(0)
    k = torch.randn(3, 40, 16) * torch.linspace(0.1, 8, 16)  # outlier channels
    u, scale, step, offset = quantize_keys(k, bits)
    codes = unpack(u, -1) if bits == 4 else u
    back = (codes.float() * step + offset) * scale
    assert ((back - k).abs() <= (step * scale) / 2 + 1e-5).all()
    assert u.dtype == (torch.uint8 if bits == 4 else torch.int8) and u.shape[-1] == (8 if bits == 4 else 16)


def test_int4_packs_two_codes_per_byte_and_unpacks_them():
    codes = torch.randint(0, 16, (2, 5, 8), dtype=torch.int8)
    packed = pack(codes, -1)
    assert packed.shape == (2, 5, 4) and torch.equal(unpack(packed, -1), codes)


def test_a_prefix_head_and_extension_agree_with_its_full_precision_values():
    torch.manual_seed(1)
    spec = KVQuant(bits=8, group=4, residual=3)
    keys, values = [torch.randn(1, 2, 21, 8)], [torch.randn(1, 2, 21, 8)]
    whole = QuantPrefix.quantized(spec, keys, values)
    assert whole.length == 21 and whole.tail_keys[0].shape[-2] == 3  # the last 3 in full precision
    assert torch.equal(whole.tail_keys[0], keys[0][:, :, -3:])
    (k, v), = whole.dequantize()
    assert torch.allclose(k, keys[0], atol=0.05) and torch.allclose(v, values[0], atol=0.05)
    (k9, v9), = whole.head(9).dequantize()
    assert torch.equal(k9, k[:, :, :9]) and torch.equal(v9, v[:, :, :9])  # views of the same codes
    grown = whole.head(9).extended([keys[0][:, :, 9:]], [values[0][:, :, 9:]])
    assert grown.length == 21
    assert grown.segments[0][0].keys.data_ptr() == whole.segments[0][0].keys.data_ptr()  # shared, not copied
    (kg, _), = grown.dequantize()
    assert torch.allclose(kg, keys[0], atol=0.05)


@pytest.mark.parametrize("bits,tolerance", [(8, 0.02), (4, 0.25)])
def test_the_integer_kernel_matches_float_attention_over_the_same_quantized_kv(bits, tolerance):
    """What prefix_part adds to the KV's own quantization error (the query and the weights in
    int8) stays small: its output against softmax attention over the dequantized prefix."""
    torch.manual_seed(2)
    spec = KVQuant(bits=bits, group=8, residual=4)
    prefixes = [QuantPrefix.quantized(spec, [torch.randn(1, 2, length, 16) * 2], [torch.randn(1, 2, length, 16)])
                for length in (300, 37, 0)]
    layout = QuantLayout(prefixes, 1)
    query = torch.randn(3, 2, 5, 16)
    peak, total, out = prefix_part(layout, 0, query, 0.25)
    got = out / total
    for g, prefix in enumerate(prefixes[:2]):
        (k, v), = prefix.dequantize()
        want = torch.softmax(query[g] @ k[0].transpose(-1, -2) * 0.25, -1) @ v[0]
        assert (got[g] - want).abs().max() < tolerance * want.abs().max()
    assert torch.equal(total[2], torch.zeros_like(total[2]))  # the empty prefix contributes nothing


# -- the engine -------------------------------------------------------------------------------


def test_int8_greedy_agrees_with_unquantized_decoding(tiny2):
    """Top-1 agreement 100% over 4 prompts x 3 rows x 24 tokens on the tiny model (one of them
    a single token: no prefix), default settings and everything quantized; log-probs within 0.01."""
    model, tok = tiny2
    base = greedy(model, tok, None)
    for kv in ("int8", SMALL):
        quantized = greedy(model, tok, kv)
        for rows_a, rows_b in zip(base, quantized):
            for a, b in zip(rows_a, rows_b):
                assert a.token_ids == b.token_ids
                assert a.logprobs == pytest.approx(b.logprobs, abs=0.01)


def test_int4_stays_close_to_unquantized_logits(tiny2):
    """int4 (everything quantized): teacher-forced by unquantized greedy tokens, the log-probs of
    those tokens stay within 0.1 of unquantized ones wherever the two decodings agree."""
    model, tok = tiny2
    base = greedy(model, tok, None, n=1)
    quantized = greedy(model, tok, {"bits": 4, "group": 4, "residual": 3}, n=1)
    agreed = 0
    for (a,), (b,) in zip(base, quantized):
        same = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), len(a.token_ids))
        agreed += same
        assert a.logprobs[:same] == pytest.approx(b.logprobs[:same], abs=0.1)
    assert agreed >= 24  # it decodes the same text for a while


def test_rows_leaving_early_compaction_and_extend_match_unquantized(tiny2):
    """Requests of different lengths in one batch (rows finish, the batch compacts with quantized
    own KV), then extend() from the prefix cache's quantized prefixes: the same tokens as
    unquantized."""
    model, tok = tiny2

    def run(kv):
        h = host(model, tok, kv)
        out: dict = {}

        def one(i):
            gen = h.generator(Budget())
            first = gen.sample([PROMPTS[i % 2]], n=4, max_new_tokens=4 + 10 * i)[0]
            out[i] = first, gen.extend(first[:2], n=2, max_new_tokens=12)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        h.close()
        return [(([c.token_ids for c in a]), [[c.token_ids for c in g] for g in b]) for a, b in
                (out[i] for i in range(4))]

    assert run(SMALL) == run(None)


def test_seeded_runs_do_not_depend_on_the_batch(tiny):
    """Seeded sampling with quantized KV: the same candidates whether prompts run one at a time or
    all at once, in any order (a position's codes depend only on its row)."""
    model, tok = tiny
    config = {"processors": [{"name": "temperature", "temperature": 1.1}],
              "generation": {"seed": 3, "max_new_tokens": 16}, "host": {"kv_cache": SMALL},
              "strategy": {"name": "self_consistency", "n": 4}}

    def texts(results):
        return {r.prompt: [c.text for c in r.candidates] for r in results}

    alone = texts(metagen_plugins.run(config, PROMPTS, model=model, tokenizer=tok, concurrency=1))
    together = texts(metagen_plugins.run(config, PROMPTS[::-1], model=model, tokenizer=tok, concurrency=4))
    assert alone == together
    assert len({t for ts in alone.values() for t in ts}) > len(PROMPTS)  # it really sampled


@pytest.mark.parametrize("kv", ["int8", "int4", SMALL])
def test_bytes_held_are_what_the_formats_say(tiny2, kv):
    """The engine's KV at its peak (the prefix once, the rows' own positions) is, to the byte, the
    format: per quantized position codes of bits/8 bytes a value and a step and offset (float32)
    for its keys and for its values; per prefix segment a channel scale; the last ``residual``
    positions in float32; per row a channel scale for its own keys. Unquantized: float32."""
    model, tok = tiny2
    prompt = "the quick brown fox jumps over the lazy dog " * 30
    rows, heads, dim, layers = 4, 2, 16, 2
    held = {}
    for name, setting in (("float", None), ("quantized", kv)):
        h = host(model, tok, setting, prefix_cache_bytes=0)
        h.engine.measure = True
        h.generator(Budget()).sample([prompt], n=rows, max_new_tokens=40)
        held[name] = h.engine.peak_kv_bytes
        h.close()
    spec = kv_quant(kv)
    prefix = len(tok(prompt).input_ids) - 1
    full = 2 * heads * dim * 4  # a position's keys and values in float32
    quantized = 2 * heads * dim * spec.bits // 8 + 2 * heads * 2 * 4
    body = prefix - spec.residual
    expected_prefix = layers * (body * quantized + heads * dim * 4 + spec.residual * full)

    def own(steps: int) -> int:
        old = max(0, steps - spec.residual)
        return layers * rows * (heads * dim * 4 + old * quantized + (steps - old) * full)

    steps = [s for s in range(1, 41) if held["float"] == layers * prefix * full + layers * rows * s * full]
    assert steps, "the unquantized engine holds float32 KV of its prefix and rows"
    assert any(held["quantized"] == expected_prefix + own(s) for s in range(1, 41)), held["quantized"]
    assert held["quantized"] < (0.5 if spec.bits == 8 else 0.35) * held["float"]


def test_held_bytes_count_each_storage_once():
    t = torch.zeros(10, 4)
    assert held_bytes([t, t[:2], t[5:]]) == 160


# -- the setting ------------------------------------------------------------------------------


def test_kv_cache_values_that_select_the_engine_or_generate():
    assert kv_quant("int8") == KVQuant(bits=8) and kv_quant("int4") == KVQuant(bits=4)
    assert kv_quant({"bits": 4, "group": 16, "residual": 8}) == KVQuant(4, 16, 8)
    assert kv_quant("quantized") is None and kv_quant(None) is None
    assert kv_quant({"implementation": "quantized", "backend": "quanto", "nbits": 2}) is None


@pytest.mark.parametrize("setting,words", [
    ({"bits": 3}, "bits = 3; use 8"),
    ({"bits": 8, "group": 0}, "group = 0"),
    ({"bits": 8, "residual": -1}, "residual = -1"),
    ({"bits": 8, "nbits": 4}, "unknown key(s) ['nbits']"),
])
def test_bad_kv_cache_tables_fail_naming_the_setting(setting, words):
    with pytest.raises(ConfigError, match="kv_cache") as info:
        kv_quant(setting)
    assert words in str(info.value)


@pytest.mark.parametrize("settings,words", [
    ({"batching": False}, "batching = false"),
    ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens"),
    ({"shared_prefix_attention": False}, "shared-prefix attention"),
])
def test_quantized_kv_with_a_path_outside_the_engine_is_a_config_error(tiny, settings, words):
    model, tok = tiny
    with pytest.raises(ConfigError, match="kv_cache") as info:
        host(model, tok, "int8", **settings)
    assert words in str(info.value) and "quantized" in str(info.value)


def test_generate_kwargs_refuses_the_engines_kv_cache_and_keeps_generates_own():
    with pytest.raises(ConfigError, match="batched"):
        metagen_plugins.generate_kwargs({"host": {"kv_cache": "int4"}})
    kwargs = metagen_plugins.generate_kwargs({"host": {"kv_cache": {"implementation": "quantized", "backend": "fp8"}}})
    assert kwargs["cache_implementation"] == "quantized" and kwargs["cache_config"] == {"backend": "fp8"}
