"""Host adapters. Each engine is imported only inside its own host module."""

from __future__ import annotations

from typing import Any

from ..errors import HostError


_HOSTS = {"transformers": ("transformers", "TransformersHost"), "vllm": ("vllm", "VLLMHost"),
          "tgi": ("tgi", "TGIHost")}


def create(config, registry, **objects: Any):
    """The host object for ``config.host_name`` (which builds Generators for strategies)."""
    import importlib

    module, cls = _HOSTS[config.host_name]
    try:
        host_class = getattr(importlib.import_module(f".{module}", __name__), cls)
    except (ImportError, AttributeError) as exc:
        raise HostError(f"the {config.host_name} host cannot start: {exc}; install what it needs "
                        f"with pip install 'metagen-plugins[{config.host_name}]'") from None
    return host_class(config, registry, **objects)
