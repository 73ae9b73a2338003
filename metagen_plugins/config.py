"""Configuration: load it (TOML file or dict of the same shape) and validate it against the
registry before any model loads.

    [host]          name = "transformers" | "vllm" | "tgi"; model, draft_model, kv_cache, url, ...
    [run]           concurrency (prompts in flight at once)
    [generation]    max_new_tokens, do_sample, seed
    [budget]        max_tokens, max_flops, max_samples
    [[processors]]  ordered: name = "top_p", top_p = 0.9
    [[stopping]]    ordered: name = "stop_strings", stop = ["\\n"]
    [strategy]      name = "self_consistency", n = 16
    [scorer]        name = ..., parameters
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from metagen_hooks import CONTEXT_PARAMETERS, HOSTS

from .errors import ConfigError, MetagenError, PluginError
from .params import conforms, type_name
from .registry import ComponentInfo, Registry

# Settings each host accepts in [host], with their types.
HOST_SETTINGS: dict[str, dict[str, Any]] = {
    "transformers": {
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
    },
    "vllm": {
        "url": str,
        "urls": list[str],  # several replicas of one model (instead of url)
        "cooldown": float,  # seconds a failed replica is skipped
        "logprobs": bool,  # ask for per-token log-probs (default true)
        "model": str,
        "draft_model": str,
        "kv_cache": str,
        "timeout": float,
        "concurrency": int,
        "retries": int,
        "api_key": str,
        # server settings, for `metagen vllm serve-args` (and the speculation check)
        "speculative_ngram": int,
        "num_speculative_tokens": int,
        "prefix_caching": bool,
        "gpu_memory_utilization": float,
        "max_model_len": int,
        "dtype": str,
        "enforce_eager": bool,
        "block_size": int,
        "data_parallel_size": int,
    },
    "tgi": {
        "url": str,
        "urls": list[str],  # several replicas of one model (instead of url)
        "cooldown": float,  # seconds a failed replica is skipped
        "timeout": float,
        "concurrency": int,
        "retries": int,
        "api_key": str,
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
    },
}
GENERATION_SETTINGS: dict[str, Any] = {"max_new_tokens": int, "do_sample": bool, "seed": int,
                                       "token_healing": bool}
BUDGET_SETTINGS: dict[str, Any] = {"max_tokens": int, "max_flops": float, "max_samples": int}
RUN_SETTINGS: dict[str, Any] = {"concurrency": int}
SECTIONS = {
    "run": "table",
    "host": "table",
    "generation": "table",
    "budget": "table",
    "processors": "list",
    "stopping": "list",
    "strategy": "table",
    "scorer": "table",
}
# Config section -> component kind.
SECTION_KIND = {
    "processors": "logits_processors",
    "stopping": "stopping_criteria",
    "strategy": "strategies",
    "scorer": "scorers",
}


@dataclass
class Config:
    """A validated configuration. Component entries keep their order and parameters."""

    host: dict[str, Any] = field(default_factory=lambda: {"name": "transformers"})
    generation: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    processors: list[dict[str, Any]] = field(default_factory=list)
    stopping: list[dict[str, Any]] = field(default_factory=list)
    strategy: dict[str, Any] | None = None
    scorer: dict[str, Any] | None = None
    source: str = "<dict>"

    @property
    def host_name(self) -> str:
        return self.host.get("name", "transformers")


def load(source: "Config | Mapping[str, Any] | str | os.PathLike") -> dict[str, Any]:
    """Read a configuration: a TOML path, or a dict (copied, never mutated)."""
    if isinstance(source, Config):
        return {k: copy.deepcopy(getattr(source, k)) for k in SECTIONS} | {"_source": source.source}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        data["_source"] = str(path)
        return data
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
        data.setdefault("_source", "<dict>")
        return data
    raise ConfigError(
        f"a configuration is a dict or the path of a TOML file, not {type(source).__name__}"
    )


def validate(source: Any, registry: Registry) -> Config:
    """Check every section, name, parameter and host; return the Config or raise ConfigError."""
    data = load(source)
    origin = data.pop("_source")
    where = f"in {origin}: " if origin != "<dict>" else ""

    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}unknown section(s) {unknown}; {_nearest(unknown[0], SECTIONS)}"
                          f"the sections are {', '.join(SECTIONS)}")
    for section, shape in SECTIONS.items():
        if section not in data or data[section] is None:
            continue
        value = data[section]
        if shape == "table" and not isinstance(value, dict):
            raise ConfigError(f"{where}[{section}] must be a table (dict), got {type(value).__name__}")
        if shape == "list" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise ConfigError(
                f"{where}{section} must be a list of tables ([[{section}]] in TOML), "
                f"got {type(value).__name__}"
            )

    config = Config(source=origin)
    config.host = _host(data.get("host") or {}, where)
    config.generation = _settings(data.get("generation") or {}, GENERATION_SETTINGS, "[generation]", where)
    config.budget = _settings(data.get("budget") or {}, BUDGET_SETTINGS, "[budget]", where)
    config.run = _settings(data.get("run") or {}, RUN_SETTINGS, "[run]", where)
    if config.run.get("concurrency", 1) < 1:
        raise ConfigError(f"{where}[run] concurrency must be >= 1 (1 runs prompts one at a time), "
                          f"got {config.run['concurrency']}")
    for key, value in config.budget.items():
        if value < 0:
            raise ConfigError(f"{where}[budget] {key} must be >= 0, got {value!r}")
    if config.generation.get("max_new_tokens", 1) < 1:
        raise ConfigError(f"{where}[generation] max_new_tokens must be >= 1")

    host = config.host_name
    for section in ("processors", "stopping"):
        entries = data.get(section) or []
        setattr(config, section, [
            _component(section, f"{section}[{i}]", entry, registry, host, where)
            for i, entry in enumerate(entries)
        ])
    for section in ("strategy", "scorer"):
        if data.get(section):
            setattr(config, section, _component(section, f"[{section}]", data[section], registry, host, where))
    return config


def _host(table: dict[str, Any], where: str) -> dict[str, Any]:
    name = table.get("name", "transformers")
    if name not in HOSTS:
        raise ConfigError(f"{where}[host] name {name!r} is not a host; {_nearest(name, HOSTS)}"
                          f"the hosts are {', '.join(HOSTS)}")
    settings = _settings({k: v for k, v in table.items() if k != "name"}, HOST_SETTINGS[name],
                         f"[host] (name = {name!r})", where)
    return {"name": name, **settings}


def _settings(table: dict[str, Any], schema: dict[str, Any], label: str, where: str) -> dict[str, Any]:
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{where}{label} has no setting {key!r}; {_nearest(key, schema)}"
                              f"it accepts {', '.join(sorted(schema))}")
        if not conforms(value, schema[key]):
            raise ConfigError(f"{where}{label} {key} must be {type_name(schema[key])}, "
                              f"got {type(value).__name__} {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{where}{label} {key} is NaN; give a number")
    return dict(table)


def _component(section, label, entry, registry: Registry, host, where) -> dict[str, Any]:
    kind = SECTION_KIND[section]
    if "name" not in entry:
        raise ConfigError(f"{where}{label} has no 'name'; name one of: "
                          + ", ".join(sorted(registry.components[kind])))
    name = entry["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{where}{label} name must be a str, got {type(name).__name__} {name!r}")
    try:
        info = registry.get(kind, name)
    except ConfigError as exc:
        raise ConfigError(f"{where}{label}: {exc}") from None
    params = {k: v for k, v in entry.items() if k != "name"}
    check_params(info, params, f"{where}{label}: ")
    if host not in info.hosts:
        raise ConfigError(
            f"{where}{label}: {info.label()} cannot run on the {host} host; it runs on "
            f"{', '.join(info.hosts) or 'no host'}. Choose one of those hosts or another component."
        )
    if (kind == "strategies" or kind in ("logits_processors", "stopping_criteria") and host == "transformers") \
            and not info.schema.context:
        build(info, params, prefix=f"{where}{label}: ")  # cheap: catches bad values before loading
    return {"name": name, **params}


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
                              f"{_nearest(key, schema.params)}{accepted.lstrip('; ')}")
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


def _nearest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""
