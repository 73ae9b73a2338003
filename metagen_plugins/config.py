"""Configuration: load it (TOML file or dict of the same shape) and validate it against the
registry before any model loads.

    [host]          name = an installed host (default: DEFAULT_HOST); its settings
    [run]           concurrency (prompts in flight at once)
    [generation]    max_new_tokens, do_sample, seed
    [budget]        max_tokens, max_flops, max_samples
    [[processors]]  ordered: name = "top_p", top_p = 0.9
    [[stopping]]    ordered: name = "stop_strings", stop = ["\\n"]
    [strategy]      name = "self_consistency", n = 16
    [scorer]        name = ..., parameters
    [serve]         what a request to ``metagen serve`` may change (components, parameters);
                    ignored by ``metagen run``
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from .components import build, check_params, component_of, params  # noqa: F401 (re-exported)
from .errors import ConfigError, did_you_mean
from .params import conforms, type_name
from .registry import Registry

GENERATION_SETTINGS: dict[str, Any] = {"max_new_tokens": int, "do_sample": bool, "seed": int,
                                       "token_healing": bool}
BUDGET_SETTINGS: dict[str, Any] = {"max_tokens": int, "max_flops": float, "max_samples": int}
RUN_SETTINGS: dict[str, Any] = {"concurrency": int}
SERVE_SETTINGS: dict[str, Any] = {"components": list[str], "parameters": list[str]}
DEFAULT_HOST = "transformers"
"""The host a configuration without ``[host] name`` runs on (docs/configuration.md)."""
SECTIONS = {
    "run": "table",
    "host": "table",
    "generation": "table",
    "budget": "table",
    "processors": "list",
    "stopping": "list",
    "strategy": "table",
    "scorer": "table",
    "serve": "table",
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

    host: dict[str, Any] = field(default_factory=lambda: {"name": DEFAULT_HOST})
    generation: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    processors: list[dict[str, Any]] = field(default_factory=list)
    stopping: list[dict[str, Any]] = field(default_factory=list)
    strategy: dict[str, Any] | None = None
    scorer: dict[str, Any] | None = None
    serve: dict[str, Any] = field(default_factory=dict)  # metagen serve's allow-list (serve.policy)
    source: str = "<dict>"

    @property
    def host_name(self) -> str:
        return self.host.get("name", DEFAULT_HOST)


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
        raise ConfigError(f"{where}unknown section(s) {unknown}; {did_you_mean(unknown[0], SECTIONS)}"
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
    config.host = _host(data.get("host") or {}, registry, where)
    config.generation = _settings(data.get("generation") or {}, GENERATION_SETTINGS, "[generation]", where)
    config.budget = _settings(data.get("budget") or {}, BUDGET_SETTINGS, "[budget]", where)
    config.run = _settings(data.get("run") or {}, RUN_SETTINGS, "[run]", where)
    config.serve = _settings(data.get("serve") or {}, SERVE_SETTINGS, "[serve]", where)
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
    config.processors = constraints_first(config.processors, registry)
    for section in ("strategy", "scorer"):
        if data.get(section):
            setattr(config, section, _component(section, f"[{section}]", data[section], registry, host, where))
    return config


def constraints_first(processors: list[dict[str, Any]], registry: Registry) -> list[dict[str, Any]]:
    """The order processors apply in: hard constraints (registered ``constraint=True``: grammar,
    bad_words, ...) first, in their listed order, then the others in theirs. transformers and vLLM
    apply constraints before truncation too; otherwise min_p before a grammar can keep only tokens
    the grammar bans, and sampling fails."""
    hard = [e for e in processors if registry.get("logits_processors", e["name"]).constraint]
    return hard + [e for e in processors if e not in hard]


def _host(table: dict[str, Any], registry: Registry, where: str) -> dict[str, Any]:
    """[host]: an installed host's name and the settings its registration accepts."""
    name = table.get("name", DEFAULT_HOST)
    if not isinstance(name, str):
        raise ConfigError(f"{where}[host] name must be a str, got {type(name).__name__} {name!r}")
    try:
        host = registry.host(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    settings = _settings(params(table), host.settings, f"[host] (name = {name!r})", where)
    return {"name": name, **settings}


def _settings(table: dict[str, Any], schema: dict[str, Any], label: str, where: str) -> dict[str, Any]:
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"{where}{label} has no setting {key!r}; {did_you_mean(key, schema)}"
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
    values = params(entry)
    check_params(info, values, f"{where}{label}: ")
    if host not in info.hosts:
        raise ConfigError(
            f"{where}{label}: {info.label()} cannot run on the {host} host; it runs on "
            f"{', '.join(info.hosts) or 'no host'}. Choose one of those hosts or another component."
        )
    # cheap: catches bad values before loading; a processor or stopping criterion is built only
    # where it runs as itself (an in-process host), elsewhere it is request parameters
    in_process = registry.host(host).capabilities.in_process
    if (kind == "strategies" or kind in ("logits_processors", "stopping_criteria") and in_process) \
            and not info.schema.context:
        build(info, values, prefix=f"{where}{label}: ")
    return {"name": name, **values}
