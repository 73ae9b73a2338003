"""Components: build one from its registration and a configuration entry, and attribute an
exception raised later in its code back to it.

Every place that turns configured entries into objects (the hosts, ``generate_kwargs``, the
runner, the metagen-vllm plugin) goes through :func:`build` or :func:`realised`, so a failure
always names the component, its plugin and the cause.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from metagen_hooks import CONTEXT_PARAMETERS

from .errors import ConfigError, MetagenError, PluginError, did_you_mean
from .params import conforms, type_name
from .registry import ComponentInfo, Registry

# Configuration section -> component kind, for the sections that list components in order.
ORDERED = (("processors", "logits_processors"), ("stopping", "stopping_criteria"))


def params(entry: dict[str, Any]) -> dict[str, Any]:
    """A configuration entry's parameters: everything but its ``name``."""
    return {k: v for k, v in entry.items() if k != "name"}


def sampling(config, registry: Registry) -> bool:
    """Whether generation samples: ``[generation] do_sample`` when set, else whether a configured
    logits processor is a sampling one (registered with ``sampling=True``). Every host follows
    this one rule."""
    if "do_sample" in config.generation:
        return bool(config.generation["do_sample"])
    return any(registry.get("logits_processors", e["name"]).sampling for e in config.processors)


def reads_logprobs(config, registry: Registry) -> bool:
    """Whether a component of the run reads the samples' per-token log-probabilities: its
    strategy (``generate`` when none is configured) or its scorer, as each declared
    (``reads_logprobs=``; one that declared nothing is taken to read them). Processors and
    stopping criteria see logits, never samples. A remote host asks its server for
    log-probabilities only when this holds, unless ``[host] logprobs`` says otherwise; every
    host follows this one rule."""
    entries = [("strategies", config.strategy or {"name": "generate"})]
    if config.scorer:
        entries.append(("scorers", config.scorer))
    return any(registry.reads_logprobs(kind, entry) for kind, entry in entries)


def built(config, registry: Registry, context: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """Each configured processor and stopping criterion built, in order, for an in-process engine:
    ``{"processors": [...], "stopping": [...]}``; ``context`` lends what factories ask for
    (``model``, ``tokenizer``). A failure names the entry (``processors[1]: ...``)."""
    out: dict[str, list[Any]] = {}
    for section, kind in ORDERED:
        out[section] = [build(registry.get(kind, entry["name"]), params(entry), context, prefix=f"{section}[{i}]: ")
                        for i, entry in enumerate(getattr(config, section))]
    return out


def realised(config, registry: Registry, key: str) -> Iterator[tuple[ComponentInfo, dict[str, Any]]]:
    """Each configured processor and stopping criterion, in order, with its engine request
    parameters: what its realiser for the host whose realiser key is ``key`` returns for its
    parameters: its ``key=`` realiser, else one for the host's fallback keys, else (a host
    declaring ``Capabilities(stop_strings=True)``) ``{"stop": [...]}`` from its
    ``stop_strings=`` (validation has checked that one exists)."""
    chain = registry.realiser_chain(key)
    for section, kind in ORDERED:
        for entry in getattr(config, section):
            info = registry.get(kind, entry["name"])
            found = info.realiser_key(chain)
            if found is None or info.realisers[found] is None:
                raise ConfigError(f"{section}: {info.label()} has no realiser for the host reading {key!r}; "
                                  f"it runs on {', '.join(info.hosts) or 'no host'}")
            yield info, info.realisers[found](**params(entry))


def check_params(info: ComponentInfo, params: dict[str, Any], prefix: str = "") -> None:
    schema = info.schema
    accepted = "; it accepts " + (", ".join(p.describe() for p in schema.params.values()) or "no parameters")
    for key, value in params.items():
        if key in CONTEXT_PARAMETERS:
            raise ConfigError(f"{prefix}{info.label()}: parameter {key!r} is supplied by the host; "
                              f"remove it from the configuration")
        if key not in schema.params:
            if schema.accepts_any:
                continue
            raise ConfigError(f"{prefix}{info.label()} has no parameter {key!r}. "
                              f"{did_you_mean(key, schema.params)}{accepted.lstrip('; ')}")
        param = schema.params[key]
        if not conforms(value, param.annotation):
            raise ConfigError(f"{prefix}{info.label()}: parameter {key!r} must be "
                              f"{type_name(param.annotation)}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{prefix}{info.label()}: parameter {key!r} is NaN; give a number")
        if key == "max_new_tokens" and isinstance(value, int) and value < 1:  # the Generator's own rule
            raise ConfigError(f"{prefix}{info.label()}: parameter 'max_new_tokens' must be >= 1, got {value}")
    missing = [p.name for p in schema.params.values() if p.required and p.name not in params]
    if missing:
        raise ConfigError(f"{prefix}{info.label()} is missing required parameter(s) "
                          f"{', '.join(map(repr, missing))}{accepted}")


def build(info: ComponentInfo, params: dict[str, Any], context: dict[str, Any] | None = None,
          prefix: str = "") -> Any:
    """Call a component's factory; any failure names the component, its plugin and the cause."""
    context = context or {}
    kwargs = dict(params)
    for key in info.schema.context:
        if context.get(key) is None:
            raise ConfigError(f"{prefix}{info.label()} needs the host's {key!r}, which this call "
                              f"did not provide (pass {key}= to generate_kwargs)")
        kwargs[key] = context[key]
    if info.schema.registry:
        kwargs["registry"] = info.registry
    try:
        built = info.factory(**kwargs)
    except MetagenError:
        raise
    except (ValueError, TypeError) as exc:
        error = ConfigError(f"{prefix}{info.label()} rejected its parameters {params!r}: {exc}")
        error.component = info
        raise error from None
    except Exception as exc:
        error = PluginError(f"{prefix}{info.label()} failed to build: {type(exc).__name__}: {exc}")
        error.component = info
        raise error from exc
    _tag(built, info)
    return built


_CODE_OWNERS: dict[Any, ComponentInfo] = {}  # code of components that are plain functions


def _tag(built: Any, info: ComponentInfo) -> None:
    """Remember which component an object is, so an exception raised in its code can be
    attributed to it (``component_of``)."""
    try:
        setattr(built, "_metagen_component", info)
    except Exception:  # slots, builtins: fall back to the code object, when there is one
        pass
    code = getattr(built, "__code__", None)
    if code is not None:
        _CODE_OWNERS[code] = info


def component_of(frame) -> ComponentInfo | None:
    """The component whose code ``frame`` runs (its ``self`` or its function), if any."""
    owner = frame.f_locals.get("self")
    if owner is not None:
        try:
            info = getattr(owner, "_metagen_component", None)
        except Exception:
            info = None
        if isinstance(info, ComponentInfo):
            return info
    return _CODE_OWNERS.get(frame.f_code)
