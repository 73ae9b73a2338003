"""metagen: meta-generation strategies as plugins, on transformers and serving engines.

The Python API::

    components(kind)                                  # what is installed
    generate_kwargs(config, model=m, tokenizer=t)     # -> model.generate(**inputs, **kwargs)
    run(config, prompt_or_prompts, concurrency=None)  # -> Result (or a list of them)
    Runner(config)                                    # a loaded host; .submit(prompt), .map(prompts)
"""

from __future__ import annotations

from typing import Any

from metagen_hooks import KINDS, Result

from . import moved
from .config import Config, build, validate
from .errors import ConfigError, HostError, MetagenError, PluginError
from .registry import Registry, get_registry
from .runner import Runner, failed, run

__version__ = "0.1.0"

moved.install()  # old module paths (moved.MOVED) keep importing


def components(kind: str) -> dict[str, dict[str, Any]]:
    """Installed components of one kind: name -> plugin, distribution, version, hosts, docstring."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    registry = get_registry()
    return {name: info.as_dict() for name, info in sorted(registry.components[kind].items())}


def generate_kwargs(config: Any, model=None, tokenizer=None) -> dict[str, Any]:
    """Keyword arguments for ``model.generate()``: logits_processor, stopping_criteria and the
    sampling flags. The configuration's host must build its components in-process (declared
    ``Capabilities(in_process=True)``, as the default host does).

    Hard constraints (grammar, bad_words) apply before the other processors whatever the listed
    order, and one check after the processors stops generation with an error naming the one that
    left NaN, +inf or no allowed token (found by replaying the step only when the check fails)."""
    registry = get_registry()
    cfg = validate(config, registry)
    if not registry.host(cfg.host_name).capabilities.in_process:
        raise ConfigError(f"generate_kwargs builds the components for model.generate(), in this process; "
                          f"this configuration's [host] name is {cfg.host_name!r}, which runs them on its "
                          f"engine: leave [host] out (the default host builds them in-process)")
    from .engines.transformers.finite import checked
    from .engines.transformers.kwargs import generate_kwargs as build_kwargs

    from .engines.transformers.kv_quant import kv_quant

    if kv_quant(cfg.host.get("kv_cache")) is not None:
        raise ConfigError(f"[host] kv_cache = {cfg.host['kv_cache']!r} quantizes the KV inside metagen's batched "
                          f"engine (metagen run, Runner); model.generate() called directly takes generate()'s "
                          f"own caches: kv_cache = \"quantized\" (or a table with implementation = ...)")
    kwargs = build_kwargs(cfg, registry, model=model, tokenizer=tokenizer)
    if kwargs.get("logits_processor"):  # stop with the culprit's name, not inside torch.multinomial
        kwargs["logits_processor"] = checked(kwargs["logits_processor"], cfg, registry)
    return kwargs


__all__ = [
    "Config",
    "ConfigError",
    "HostError",
    "MetagenError",
    "PluginError",
    "Result",
    "components",
    "failed",
    "Runner",
    "generate_kwargs",
    "get_registry",
    "run",
    "validate",
]
