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
    if isinstance(prompt_or_prompts, (bytes, bytearray)):
        raise ConfigError("the prompt is bytes, not str: decode it first (e.g. data.decode('utf-8'))")
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    if not prompts:
        raise ConfigError("no prompts given")
    for index, prompt in enumerate(prompts):
        _check_prompt(index, prompt)
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
    try:
        if scorer_info is not None and scorer is None:
            scorer = build(scorer_info, _params(cfg.scorer), context=host.context(), prefix="[scorer]: ")
        results = []
        for prompt in prompts:
            budget = Budget(**cfg.budget)
            generator = host.generator(budget)
            budget.start()
            try:
                result = strategy.run(prompt, generator, scorer, budget)
            except Exception as exc:  # this prompt failed; the others (done and to come) go on
                failure = _describe_failure(exc, cfg)
                if single:  # nothing else to keep: raise, saying whose code failed
                    if failure["kind"] == "component":
                        exc.add_note(failure["message"])
                    raise
                result = Result(prompt=prompt, best=None, budget=budget, trace=[{"event": "failed", **failure}],
                                failures=[failure])  # the generator's own failures follow
            finally:
                budget.stop()
            result.strategy = result.strategy or strategy_entry["name"]
            result.failures.extend(getattr(generator, "failures", []))
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if hasattr(host, "close"):  # a remote host's HTTP clients and event-loop thread
            host.close()
    return results[0] if single else results


def _params(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "name"}


def _check_prompt(index: int, prompt: Any) -> None:
    """A prompt is text that encodes as UTF-8 (no lone surrogates from undecodable bytes)."""
    if not isinstance(prompt, str):
        hint = " (decode bytes first, e.g. data.decode('utf-8'))" if isinstance(prompt, (bytes, bytearray)) else ""
        raise ConfigError(f"prompt {index} is {type(prompt).__name__}, not str{hint}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"prompt {index} is not valid Unicode text: {prompt[exc.start]!r} at character "
                          f"{exc.start} is a lone surrogate (bytes that were not UTF-8?); decode the "
                          f"input as UTF-8 with errors='replace', or fix its encoding") from None


def failed(result: Result) -> bool:
    """Whether a prompt's run failed as a whole (``run`` kept going with the other prompts)."""
    return any(f.get("kind") in ("component", "host") for f in result.failures) and result.best is None


def _describe_failure(exc: BaseException, cfg: Config) -> dict[str, Any]:
    """A ``Result.failures`` entry for an exception that ended a prompt's run: which component
    (and plugin, distribution) raised it, or the host; what and where."""
    import traceback
    from pathlib import Path

    from .config import component_of

    frames = list(traceback.walk_tb(exc.__traceback__))
    where = ""
    if frames:
        code = frames[-1][0].f_code
        where = f"{Path(code.co_filename).name}:{frames[-1][1]}"
    error = f"{type(exc).__name__}: {exc}"
    info = getattr(exc, "component", None)
    raised_in_host = bool(frames) and frames[-1][0].f_globals.get("__name__", "").startswith(
        f"{__name__}.hosts")
    if info is None and not raised_in_host:
        for frame, _ in reversed(frames):  # the innermost frame running a component's code
            info = component_of(frame)
            if info is not None:
                break
    if info is None:
        return {"kind": "host", "component": f"{cfg.host_name} host", "error": error, "where": where,
                "message": f"the {cfg.host_name} host failed: {error}" + (f" (at {where})" if where else "")}
    return {"kind": "component", "component": info.label(), "component_kind": info.kind, "name": info.name,
            "plugin": info.plugin, "distribution": info.distribution, "version": info.version,
            "error": error, "where": where,
            "message": f"{info.label()} raised {error}" + (f" at {where}" if where else "")}


__all__ = [
    "Config",
    "ConfigError",
    "HostError",
    "MetagenError",
    "PluginError",
    "Result",
    "components",
    "failed",
    "generate_kwargs",
    "get_registry",
    "run",
    "validate",
]
