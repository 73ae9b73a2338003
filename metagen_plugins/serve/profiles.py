"""Profiles: the named configurations a server offers as its models, and how a request refines
one.

A configuration file exactly as ``metagen run`` takes it is one profile, named after the file's
stem (``default`` for the packaged default). A file whose only top-level key is ``profiles``
defines several: each ``[profiles.NAME]`` table is a complete run configuration.

A request refines its profile with OpenAI's own fields (``max_tokens``, ``seed``, ``stop``,
``temperature``, ``top_p``) and the ``metagen`` extension object, whose keys are configuration
sections (``strategy``, ``scorer``, ``processors``, ``stopping``, ``generation``, ``budget``)
plus ``candidates`` (return every candidate) and ``progress`` (a streamed search sends what it
has spent so far as SSE comments, which standard clients ignore).

What a request may change is the profile's allow-list (:mod:`.policy`): the components it uses
or offers in ``[serve]``, and their parameters declared safe for callers. A component entry of a
request refines the profile's entry of the same name (a strategy or scorer of another name
replaces it); processors and stopping criteria the profile has stay. The refined configuration
goes through the same ``validate`` as a config file. The profile's ``[budget]`` limits and
``[generation] max_new_tokens`` are caps: a request may lower them, never raise them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, validate
from ..errors import ConfigError
from .errors import bad_request
from .policy import Policy, entries

log = logging.getLogger("metagen.serve")

# Sections a request may refine (the host and [run] are the operator's).
REFINABLE = ("strategy", "scorer", "processors", "stopping", "generation", "budget")
CAPS = {"budget.max_samples": "samples", "budget.max_tokens": "tokens", "budget.max_flops": "FLOPs",
        "generation.max_new_tokens": "tokens per sample"}
# What a served profile may spend at most when its configuration sets no limit of its own.
DEFAULT_CAPS = {"max_samples": 64, "max_tokens": 65536}


@dataclass
class Profile:
    """One model name of the server: its configuration (raw and validated) and its caps."""

    name: str
    data: dict[str, Any]
    config: Config
    policy: Policy | None = None  # what a request may change (None: built from config on first use)
    lane_key: str = ""  # which runner serves it (set by serve.runners)

    @property
    def host_key(self) -> str:
        return json.dumps(self.config.host, sort_keys=True)


def load_profiles(source: str | os.PathLike | None, registry, caps: dict[str, int] | None = None,
                  unisolated_code: bool = False) -> dict[str, Profile]:
    """The profiles of a configuration file (``None``: the packaged default of ``metagen run``).
    Each is validated now, so a bad file fails at startup, naming the profile. A component that
    runs code must run it with full isolation unless ``unisolated_code`` (the operator's
    ``--allow-unisolated-code``)."""
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
        policy = Policy.of(name, config, registry)
        _check_isolation(name, config, policy, registry, unisolated_code)
        profiles[name] = Profile(name, table, config, policy)
    return profiles


def _check_isolation(name: str, config: Config, policy: Policy, registry, unisolated_code: bool) -> None:
    """A served component that runs code (``runs_code=True``) runs it with full isolation, or the
    server does not start, unless the operator opted out (then it is logged)."""
    from ..config import SECTION_KIND

    for section, kind in SECTION_KIND.items():
        configured = {e["name"]: e for e in entries(config, section)}
        for component in policy.names[section]:
            info = registry.get(kind, component)
            if not info.runs_code:
                continue
            isolation = configured.get(component, {}).get("isolation")
            param = info.schema.params.get("isolation")
            if isolation is None and param is not None and not param.required:
                isolation = param.default
            if isolation == "full":
                continue
            what = (f"profile {name!r}: {info.label()} runs code with isolation = {isolation!r}" if isolation
                    else f"profile {name!r}: {info.label()} runs code and has no full isolation setting")
            if not unisolated_code:
                raise ConfigError(f"{what}; metagen serve runs code only with full isolation (isolation = \"full\", "
                                  f"which needs root on Linux), so that no request can reach the host through it. "
                                  f"Set full isolation, or start the server with --allow-unisolated-code to accept "
                                  f"the risk")
            log.warning("%s: served without full isolation (--allow-unisolated-code)", what)


def refine(profile: Profile, request, registry) -> tuple[Config, dict[str, Any]]:
    """The configuration one request runs with, and its options (``candidates``, ``progress``); a 400 naming
    the field for anything invalid, before any generation."""
    extension = dict(request.metagen or {})
    options = {"candidates": extension.pop("candidates", False), "progress": extension.pop("progress", False)}
    for option, value in options.items():
        if not isinstance(value, bool):
            raise bad_request(f"metagen.{option} must be true or false", param=f"metagen.{option}")
    options["timeout"] = _timeout(extension.pop("timeout", None))
    for key in extension:
        if key not in REFINABLE:
            hint = (" (the host and [run] are the server's; choose another profile with \"model\")"
                    if key in ("host", "run") else "")
            raise bad_request(f"metagen.{key}: a request refines only {', '.join(REFINABLE)}{hint}",
                              param=f"metagen.{key}")
    if not extension and not _sets_openai_fields(request):
        return profile.config, options  # nothing to refine: the profile as it is
    policy = profile.policy or Policy.of(profile.name, profile.config, registry)
    policy.check(extension, profile.data, registry)
    data = copy.deepcopy(profile.data)
    for section, value in extension.items():
        if section in ("strategy", "scorer") and isinstance(value, dict):
            base = data.get(section) or {}
            if "name" not in value and not base:
                raise bad_request(f"metagen.{section} has no \"name\" and the profile has no [{section}] to "
                                  f"refine; name one", param=f"metagen.{section}")
            same = value.get("name", base.get("name")) == base.get("name")
            data[section] = {**base, **value} if same else value
        elif section in ("generation", "budget") and isinstance(value, dict):
            data[section] = {**(data.get(section) or {}), **value}
        elif section in ("processors", "stopping") and isinstance(value, list) and isinstance(data.get(section), list):
            data[section] = _merged(data[section], value)
        else:
            data[section] = value
    _openai_fields(data, request)
    try:
        config = validate(dict(data, _source="<dict>"), registry)
    except ConfigError as exc:
        raise bad_request(str(exc), param="metagen" if extension else None, code="invalid_config") from None
    _check_caps(profile.config, config)
    return config, options


def _timeout(value: Any) -> float | None:
    """A caller's own deadline in seconds (``metagen.timeout``), which can only shorten the
    server's ``--request-timeout``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise bad_request(f"metagen.timeout must be a number of seconds > 0, got {str(value)[:40]!r}",
                          param="metagen.timeout")
    return float(value)


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


def _merged(entries: list, refinements: list) -> list:
    """The profile's component list with a request's entries: one of the same name refines that
    entry's parameters, a new one is added after them; the profile's own entries all stay."""
    out = [dict(e) for e in entries]
    for entry in refinements:
        match = next((e for e in out if isinstance(entry, dict) and e.get("name") == entry.get("name")), None)
        if match is None:
            out.append(entry)
        else:
            match.update(entry)
    return out


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
