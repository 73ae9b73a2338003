"""metagen-plugins' in-process host, registered as a plugin through ``register_hosts`` like any
outside host (the serving engines are each their own built-in plugin: ``metagen_plugins.engines``).

The engine is imported only inside its host module, and only when a run creates that host:
registering costs nothing. The settings below are what ``[host]`` accepts, checked before
anything loads.
"""

from __future__ import annotations

from typing import Any, Literal

from metagen_hooks import Capabilities, hookimpl

from ..errors import HostError

TRANSFORMERS_SETTINGS: dict[str, Any] = {
    "model": str,
    "gguf_file": str,
    "tokenizer": str,
    "draft_model": str,
    "prompt_lookup_num_tokens": int,
    "kv_cache": str | dict,
    "dtype": str,
    "device": str,
    "prefix_cache_bytes": int,
    "chat_template": bool | Literal["auto"],
    "shared_prefix_attention": bool,
    "batching": bool,  # the batched decode loop (hosts/batching.py); false: one generate() per request
    "max_batch_tokens": int,  # KV tokens the loop holds at once
}
def _transformers(config, registry, model=None, tokenizer=None):
    """In-process: transformers ``generate()`` on a local model (pip install 'metagen-plugins[transformers]')."""
    try:
        from .transformers import TransformersHost
    except ImportError as exc:
        raise _missing("transformers", exc) from None
    return TransformersHost(config, registry, model=model, tokenizer=tokenizer)


def _missing(name: str, exc: ImportError) -> HostError:
    return HostError(f"the {name} host cannot start: {exc}; install what it needs with "
                     f"pip install 'metagen-plugins[{name}]'")


@hookimpl
def register_hosts(register):
    register("transformers", _transformers, settings=TRANSFORMERS_SETTINGS,
             capabilities=Capabilities(in_process=True, stop_strings=True, streaming=True, conversations=True))


def create(config, registry, **objects: Any):
    """The host object for ``config.host_name`` (kept for callers of the old place:
    ``registry.create_host`` is the one place hosts are made)."""
    return registry.create_host(config, **objects)
