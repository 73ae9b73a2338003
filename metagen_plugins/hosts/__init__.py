"""Host adapters. Each engine is imported only inside its own host module."""

from __future__ import annotations

from typing import Any

from ..errors import HostError


def create(config, registry, **objects: Any):
    """The host object for ``config.host_name`` (which builds Generators for strategies)."""
    if config.host_name == "transformers":
        from .transformers import TransformersHost

        return TransformersHost(config, registry, **objects)
    raise HostError(
        f"the {config.host_name} host is declared in the configuration schema, but this version of "
        f"metagen-plugins has no adapter for it yet; use [host] name = \"transformers\""
    )
