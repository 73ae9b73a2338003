"""Profiles: the named configurations a server offers as its models, and how a request refines
one.

A configuration file exactly as ``metagen run`` takes it is one profile, named after the file's
stem (``default`` for the packaged default). A file whose only top-level key is ``profiles``
defines several: each ``[profiles.NAME]`` table is a complete run configuration.

A request refines its profile with OpenAI's own fields (``max_tokens``, ``seed``, ``stop``,
``temperature``, ``top_p``) and the ``metagen`` extension object, whose keys are configuration
sections (``strategy``, ``scorer``, ``processors``, ``stopping``, ``generation``, ``budget``)
plus ``candidates`` (return every candidate) and ``progress`` (a streamed search sends what it
has spent so far as SSE comments, which standard clients ignore). The refined configuration goes through the same
``validate`` as a config file. The profile's ``[budget]`` limits and ``[generation]
max_new_tokens`` are caps: a request may lower them, never raise them. A request never names a
path or a model the operator did not configure.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, validate
from ..errors import ConfigError
from .errors import APIError, bad_request

# Sections a request may refine (the host and [run] are the operator's).
REFINABLE = ("strategy", "scorer", "processors", "stopping", "generation", "budget")
CAPS = {"budget.max_samples": "samples", "budget.max_tokens": "tokens", "budget.max_flops": "FLOPs",
        "generation.max_new_tokens": "tokens per sample"}
# What a served profile may spend at most when its configuration sets no limit of its own.
DEFAULT_CAPS = {"max_samples": 64, "max_tokens": 65536}
# Parameter names that load something (a model, a file): their values must come from the profile.
LOADING_WORDS = ("model", "path", "file", "dir", "judge", "amateur", "expert")


@dataclass
class Profile:
    """One model name of the server: its configuration (raw and validated) and its caps."""

    name: str
    data: dict[str, Any]
    config: Config
    allowed_values: set[str] = field(default_factory=set)
    lane_key: str = ""  # which runner serves it (set by serve.runners)

    @property
    def host_key(self) -> str:
        return json.dumps(self.config.host, sort_keys=True)


def load_profiles(source: str | os.PathLike | None, registry, caps: dict[str, int] | None = None) -> dict[str, Profile]:
    """The profiles of a configuration file (``None``: the packaged default of ``metagen run``).
    Each is validated now, so a bad file fails at startup, naming the profile."""
    caps = DEFAULT_CAPS if caps is None else caps
    if source is None:
        from ..evaluate import default_config

        tables = {"default": default_config()}
    else:
        path = Path(source)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 TOML: {exc}") from None
        if "profiles" in data:
            others = sorted(set(data) - {"profiles"})
            if others:
                raise ConfigError(f"in {path}: a file with [profiles.NAME] tables holds nothing else; move "
                                  f"{others} into each profile (each is a complete run configuration)")
            if not isinstance(data["profiles"], dict) or not data["profiles"] or \
                    not all(isinstance(v, dict) for v in data["profiles"].values()):
                raise ConfigError(f"in {path}: [profiles] must hold one or more [profiles.NAME] tables")
            tables = data["profiles"]
        else:
            tables = {path.stem: data}
    profiles = {}
    for name, table in tables.items():
        table = copy.deepcopy(table)
        budget = table.setdefault("budget", {})
        if isinstance(budget, dict):
            for key, value in caps.items():
                budget.setdefault(key, value)
        config = validate(dict(table, _source=f"profile {name!r}"), registry)  # names the profile
        profiles[name] = Profile(name, table, config, _strings(table))
    return profiles


def refine(profile: Profile, request, registry) -> tuple[Config, dict[str, Any]]:
    """The configuration one request runs with, and its options (``candidates``, ``progress``); a 400 naming
    the field for anything invalid, before any generation."""
    extension = dict(request.metagen or {})
    options = {"candidates": extension.pop("candidates", False), "progress": extension.pop("progress", False)}
    for option, value in options.items():
        if not isinstance(value, bool):
            raise bad_request(f"metagen.{option} must be true or false", param=f"metagen.{option}")
    for key in extension:
        if key not in REFINABLE:
            hint = (" (the host and [run] are the server's; choose another profile with \"model\")"
                    if key in ("host", "run") else "")
            raise bad_request(f"metagen.{key}: a request refines only {', '.join(REFINABLE)}{hint}",
                              param=f"metagen.{key}")
    if not extension and not _sets_openai_fields(request):
        return profile.config, options  # nothing to refine: the profile as it is
    data = copy.deepcopy(profile.data)
    for section, value in extension.items():
        _check_loading(profile, value, f"metagen.{section}")
        if section in ("strategy", "scorer") and isinstance(value, dict) and "name" not in value:
            base = data.get(section) or {}
            if not base:
                raise bad_request(f"metagen.{section} has no \"name\" and the profile has no [{section}] to "
                                  f"refine; name one", param=f"metagen.{section}")
            data[section] = {**base, **value}
        elif section in ("generation", "budget") and isinstance(value, dict):
            data[section] = {**(data.get(section) or {}), **value}
        else:
            data[section] = value
    _openai_fields(data, request)
    try:
        config = validate(dict(data, _source="<dict>"), registry)
    except ConfigError as exc:
        raise bad_request(str(exc), param="metagen" if extension else None, code="invalid_config") from None
    _check_caps(profile.config, config)
    return config, options


def _sets_openai_fields(request) -> bool:
    """Whether the request sets any of the OpenAI sampling fields a profile takes."""
    return any(getattr(request, name, None) is not None
               for name in ("max_completion_tokens", "max_tokens", "seed", "temperature", "top_p")) or bool(request.stop)


def _openai_fields(data: dict[str, Any], request) -> None:
    """OpenAI's sampling fields as configuration: max_tokens, seed, stop, temperature, top_p.
    A section the ``metagen`` extension gave the wrong type is left as it is, for ``validate``
    to name."""
    generation = data.setdefault("generation", {})
    if not isinstance(generation, dict):
        return
    limit = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if limit is not None:
        generation["max_new_tokens"] = limit
    if request.seed is not None:
        generation["seed"] = request.seed
    stopping, processors = data.get("stopping") or [], data.get("processors") or []
    if not isinstance(stopping, list) or not isinstance(processors, list):
        return
    if request.stop:
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop)
        data["stopping"] = [*stopping, {"name": "stop_strings", "stop": stops}]
    if request.temperature == 0:
        generation["do_sample"] = False
    elif request.temperature is not None:
        processors = _set(processors, "temperature", request.temperature, first=True)
    if request.top_p is not None:
        processors = _set(processors, "top_p", request.top_p, first=False)
    if processors:
        data["processors"] = processors


def _set(processors: list, name: str, value: float, first: bool) -> list:
    """The processors with ``name``'s value set (added, first or last, when absent)."""
    out = [dict(p, **{name: value}) if isinstance(p, dict) and p.get("name") == name else p for p in processors]
    if not any(isinstance(p, dict) and p.get("name") == name for p in processors):
        entry = {"name": name, name: value}
        out = [entry, *out] if first else [*out, entry]
    return out


def _check_caps(base: Config, config: Config) -> None:
    for dotted, what in CAPS.items():
        section, key = dotted.split(".")
        cap = getattr(base, section).get(key)
        asked = getattr(config, section).get(key)
        if cap is not None and (asked is None or asked > cap):
            raise bad_request(f"{dotted} = {asked} is over this profile's cap of {cap} {what}; a request "
                              f"may lower the cap, not raise it", param=f"metagen.{dotted}", code="over_cap")


def _check_loading(profile: Profile, value: Any, where: str, key: str = "") -> None:
    """Reject a string that would make the server load something (a model, a file) unless the
    operator's profile already names it."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_loading(profile, v, f"{where}.{k}", str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_loading(profile, v, f"{where}[{i}]", key)
    elif isinstance(value, str) and value not in profile.allowed_values:
        loads = any(word in key.lower() for word in LOADING_WORDS)
        if loads or _looks_like_path(value):
            raise APIError(400, f"{where} = {value[:80]!r} names a model or file this profile does not "
                                f"configure; a request may only use the models and files the server's "
                                f"operator configured ({', '.join(sorted(profile.allowed_values & _paths(profile))) or 'none'})",
                           param=where, code="not_allowed")


def _looks_like_path(value: str) -> bool:
    from ..models import BUILTIN_MODELS, PACKAGED_MODELS

    if value in BUILTIN_MODELS or value in PACKAGED_MODELS:
        return True
    if value.startswith(("/", "~", "./", "../", "file:")) or "\\" in value[:3]:
        return True
    try:
        return len(value) < 4096 and "\n" not in value and os.path.exists(value)
    except (OSError, ValueError):
        return False


def _strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) else set()


def _paths(profile: Profile) -> set[str]:
    return {s for s in profile.allowed_values if _looks_like_path(s)}
