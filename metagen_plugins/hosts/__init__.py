"""Where metagen-plugins' hosts used to be registered. Each engine is now its own package and
built-in plugin (``metagen_plugins.engines``: transformers, vllm, tgi); the old module paths
below ``hosts`` import the modules where they are now (``metagen_plugins.moved``)."""

from __future__ import annotations

from typing import Any


def create(config, registry, **objects: Any):
    """The host object for ``config.host_name`` (kept for callers of the old place:
    ``registry.create_host`` is the one place hosts are made)."""
    return registry.create_host(config, **objects)
