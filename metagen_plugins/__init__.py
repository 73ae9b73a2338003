"""metagen: meta-generation strategies as plugins, on transformers and serving engines.

The Python API::

    components(kind)                                  # what is installed
    generate_kwargs(config, model=m, tokenizer=t)     # -> model.generate(**inputs, **kwargs)
    run(config, prompt_or_prompts)                    # -> Result (or a list of them)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from metagen_hooks import KINDS, Budget, Result

from .config import Config, build, validate
from .errors import ConfigError, HostError, MetagenError, PluginError
from .plugins import PluginManager
from .registry import Registry

__version__ = "0.1.0"

_registry: Registry | None = None


def get_registry(plugins_dir: str | os.PathLike | None = None, reload: bool = False) -> Registry:
    """The registry of every installed plugin's components (loaded once, then cached)."""
    global _registry
    if _registry is None or reload or plugins_dir is not None:
        _registry = Registry(PluginManager().load(plugins_dir))
    return _registry


def components(kind: str) -> dict[str, dict[str, Any]]:
    """Installed components of one kind: name -> plugin, distribution, version, hosts, docstring."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    registry = get_registry()
    return {name: info.as_dict() for name, info in sorted(registry.components[kind].items())}


def generate_kwargs(config: Any, model=None, tokenizer=None) -> dict[str, Any]:
    """Keyword arguments for ``model.generate()``: logits_processor, stopping_criteria and the
    sampling flags. The configuration's host must be transformers (the default)."""
    registry = get_registry()
    cfg = validate(config, registry)
    if cfg.host_name != "transformers":
        raise ConfigError(f"generate_kwargs is for the transformers host; this configuration's "
                          f"[host] name is {cfg.host_name!r}")
    from .hosts.transformers import generate_kwargs as build_kwargs

    return build_kwargs(cfg, registry, model=model, tokenizer=tokenizer)


def run(config: Any, prompt_or_prompts: str | Sequence[str], *, model=None, tokenizer=None,
        on_result: Callable[[Result], None] | None = None):
    """Run the configured strategy (default ``generate``) on one prompt or a list of prompts.

    Returns a :class:`metagen_hooks.Result` for a str, a list of them for a list. ``model`` and
    ``tokenizer`` reuse objects already loaded instead of ``[host] model``; ``on_result`` is
    called with each prompt's result as it is done (e.g. to advance a progress bar).
    """
    registry = get_registry()
    cfg = validate(config, registry)
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    if not prompts:
        raise ConfigError("no prompts given")
    strategy_entry = cfg.strategy or {"name": "generate"}
    strategy_info = registry.get("strategies", strategy_entry["name"])
    strategy = build(strategy_info, _params(strategy_entry), prefix="[strategy]: ")
    scorer = scorer_info = None
    if cfg.scorer:  # built before the model loads unless it needs the host's model
        scorer_info = registry.get("scorers", cfg.scorer["name"])
        if not scorer_info.schema.context:
            scorer = build(scorer_info, _params(cfg.scorer), prefix="[scorer]: ")

    from . import hosts

    host = hosts.create(cfg, registry, model=model, tokenizer=tokenizer)
    if scorer_info is not None and scorer is None:
        scorer = build(scorer_info, _params(cfg.scorer), context=host.context(), prefix="[scorer]: ")
    results = []
    for prompt in prompts:
        budget = Budget(**cfg.budget)
        generator = host.generator(budget)
        budget.start()
        try:
            result = strategy.run(prompt, generator, scorer, budget)
        finally:
            budget.stop()
        result.strategy = result.strategy or strategy_entry["name"]
        result.failures.extend(getattr(generator, "failures", []))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results[0] if single else results


def _params(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "name"}


__all__ = [
    "Config",
    "ConfigError",
    "HostError",
    "MetagenError",
    "PluginError",
    "Result",
    "components",
    "generate_kwargs",
    "get_registry",
    "run",
    "validate",
]
