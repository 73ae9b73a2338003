"""What a caller may change: the operator's allow-list of a profile, checked on every request.

The operator (configuration file, command line, installed plugins) is trusted; a caller, with
or without the API key, is not (docs/security.md). A request refines its profile only within
what the profile allows:

- **components**: those the profile itself uses, and those its ``[serve] components`` lists;
- **parameters**: those each component declares safe for a caller (``register(...,
  caller=(...))``), and those the profile's ``[serve] parameters`` adds (``"component.param"``).
  A parameter that runs code, names a file, a model or a URL, changes a sandbox or is a
  ``str.format`` template can never be a caller's: ``[serve] parameters`` naming one fails at
  startup;
- **sizes**: a caller's string (and all the strings of one list together) is at most
  :data:`MAX_STRING` characters, a list at most :data:`MAX_ITEMS` items, nested at most
  :data:`MAX_DEPTH` deep.

    [serve]
    components = ["best_of_n", "min_p"]          # a request may choose these too
    parameters = ["code_tests.timeout"]          # and set this undeclared parameter

A refused field is a 400 naming the field and the setting that would allow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import SECTION_KIND, Config
from ..errors import ConfigError, nearest
from .errors import APIError

MAX_STRING = 4096
MAX_ITEMS = 64
MAX_DEPTH = 4
# Words in a parameter's name that mark it as never a caller's, whatever [serve] says: code to
# run, sandbox isolation and limits, files, models, URLs, credentials, format templates.
NEVER = ("setup", "harness", "tests", "isolation", "cpu_seconds", "memory", "output_kb", "processes",
         "url", "api_key", "path", "file", "dir", "model", "judge", "amateur", "expert", "template", "format")
COMPONENT_SECTIONS = tuple(SECTION_KIND)  # processors, stopping, strategy, scorer


def entries(config: Config, section: str) -> list[dict[str, Any]]:
    """A validated configuration's component entries of ``section``, as a list (a table
    section's one entry, or none)."""
    value = getattr(config, section)
    return value if isinstance(value, list) else [value] if value else []


def never(info, param: str) -> str | None:
    """Why ``param`` of component ``info`` can never be set by a caller, or None. A name with a
    word of :data:`NEVER` is refused even when its component declares it for callers."""
    word = next((w for w in NEVER if w in param.lower()), None)
    if word is not None:
        return (f"a parameter named like {word!r} (code, a sandbox setting, a file, a model, a URL or a "
                f"template) is the operator's alone")
    if info.runs_code and param not in info.caller:
        return f"{info.label()} runs code, and only the parameters it declares for callers may come from a request"
    return None


@dataclass(frozen=True)
class Policy:
    """One profile's allow-list: component names per section, and extra ``component.param``."""

    profile: str
    names: dict[str, frozenset[str]]
    parameters: frozenset[str]

    @classmethod
    def of(cls, profile: str, config: Config, registry) -> "Policy":
        """The allow-list of a validated profile; a ConfigError naming the profile for a
        ``[serve]`` entry that is unknown or can never be a caller's."""
        serve = config.serve
        where = f"profile {profile!r}: [serve]"
        extra = list(serve.get("components", []))
        names: dict[str, set[str]] = {section: set() for section in COMPONENT_SECTIONS}
        for section in COMPONENT_SECTIONS:
            names[section].update(entry["name"] for entry in entries(config, section))
        if config.strategy is None:
            names["strategy"].add("generate")
        for name in extra:
            kinds = [s for s, kind in SECTION_KIND.items() if name in registry.components[kind]]
            if not kinds:
                known = {n for kind in SECTION_KIND.values() for n in registry.components[kind]}
                close = nearest(name, known)
                raise ConfigError(f"{where} components names {name!r}, which no installed plugin registers"
                                  + (f"; did you mean {close!r}?" if close else ""))
            for section in kinds:
                names[section].add(name)
        parameters = set()
        for dotted in serve.get("parameters", []):
            component, _, param = dotted.partition(".")
            infos = [registry.components[kind][component] for kind in SECTION_KIND.values()
                     if component in registry.components[kind]]
            if not param or not infos:
                raise ConfigError(f"{where} parameters: {dotted!r} must be \"component.parameter\" of an installed "
                                  f"component (e.g. \"self_consistency.n\")")
            for info in infos:
                if param not in info.schema.params:
                    raise ConfigError(f"{where} parameters: {info.label()} has no parameter {param!r}")
                reason = never(info, param)
                if reason is not None:
                    raise ConfigError(f"{where} parameters: {dotted!r} can never be set by a request: {reason}")
            parameters.add(dotted)
        return cls(profile, {k: frozenset(v) for k, v in names.items()}, frozenset(parameters))

    # -- a request ---------------------------------------------------------------------------

    def check(self, extension: dict[str, Any], base: dict[str, Any], registry) -> None:
        """Refuse (400) any component or parameter of the ``metagen`` extension this profile
        does not allow a caller; ``base`` is the profile's own configuration data."""
        bounded(extension, "metagen")
        for section, value in extension.items():
            if section not in COMPONENT_SECTIONS:
                continue  # generation and budget: every setting is a caller's, within the caps
            entries = value if isinstance(value, list) else [value]
            for index, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    continue  # a wrong shape: validation names it
                where = f"metagen.{section}" + (f"[{index}]" if isinstance(value, list) else "")
                own = base.get(section) if section in ("strategy", "scorer") else None
                name = entry.get("name", (own or {}).get("name") if isinstance(own, dict) else None)
                if name is None:
                    continue  # nothing to refine: validation says so
                self._component(section, name, entry, where, registry)

    def _component(self, section: str, name: Any, entry: dict[str, Any], where: str, registry) -> None:
        allowed = self.names[section]
        if not isinstance(name, str) or name not in allowed:
            close = nearest(name, allowed) if isinstance(name, str) else None
            raise APIError(400, f"{where}.name = {str(name)[:80]!r} is not offered by model {self.profile!r}; "
                                f"a request may use {_listed(allowed)}"
                                + (f" (did you mean {close!r}?)" if close else "")
                                + f"; the operator offers more with [serve] components in the profile",
                           param=f"{where}.name", code="not_allowed")
        info = registry.get(SECTION_KIND[section], name)
        for param in entry:
            reason = never(info, param) if param != "name" else None
            if param == "name" or reason is None and (param in info.caller or f"{name}.{param}" in self.parameters):
                continue
            settable = sorted(info.caller | {p.partition(".")[2] for p in self.parameters
                                             if p.partition(".")[0] == name})
            message = (f"{where}.{param}: {info.label()} takes {param!r} from the server's operator only; a request "
                       f"may set {_listed(settable)}")
            message += (f" ({reason})" if reason else
                        f"; the operator allows more with [serve] parameters = [\"{name}.{param}\"] in the profile")
            raise APIError(400, message, param=f"{where}.{param}", code="not_allowed")


def bounded(value: Any, where: str, depth: int = 0) -> None:
    """Refuse (400) a caller's value that is too deep, a string too long or a list too long."""
    if depth > MAX_DEPTH:
        raise APIError(400, f"{where} is nested more than {MAX_DEPTH} levels deep", param=where, code="too_large")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise APIError(400, f"{where} is {len(value)} characters long; a request's value is at most {MAX_STRING}",
                       param=where, code="too_large")
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise APIError(400, f"{where} has {len(value)} items; a request's list has at most {MAX_ITEMS}",
                           param=where, code="too_large")
        text = sum(len(item) for item in value if isinstance(item, str))
        if text > MAX_STRING:  # stop strings: building their matcher costs vocabulary x length
            raise APIError(400, f"{where} holds {text} characters of text; a request's list holds at most "
                                f"{MAX_STRING}", param=where, code="too_large")
        for index, item in enumerate(value):
            bounded(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise APIError(400, f"{where} has {len(value)} keys; a request's table has at most {MAX_ITEMS}",
                           param=where, code="too_large")
        for key, item in value.items():
            bounded(item, f"{where}.{key}", depth + 1)


def _listed(names) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "nothing"
