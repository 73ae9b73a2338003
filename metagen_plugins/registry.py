"""Resolves component names: calls each plugin's register hooks and records who registered what."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from metagen_hooks import HOSTS, KINDS

from .errors import ConfigError, PluginError
from .params import Schema, schema_of
from .plugins import PluginManager, _describe

_METADATA = set(HOSTS) | {"sampling", "doc"}
SINGULAR = {"logits_processors": "logits processor", "stopping_criteria": "stopping criterion",
            "scorers": "scorer", "strategies": "strategy"}


@dataclass
class ComponentInfo:
    """A registered component: where it came from and where it can run."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None
    version: str | None
    realisers: dict[str, Callable[..., dict] | None]  # host -> engine parameters (None: in-process)
    sampling: bool = False
    doc: str = ""
    schema: Schema = field(default=None)  # type: ignore[assignment]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for h in HOSTS if h in self.realisers)

    def label(self) -> str:
        origin = f"{self.distribution} {self.version}" if self.distribution else self.plugin
        return f"{SINGULAR[self.kind]} {self.name!r} (plugin {self.plugin!r}, {origin})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "hosts": list(self.hosts),
            "docstring": self.doc,
            "parameters": [p.describe() for p in self.schema.params.values()],
        }


class DuplicateComponent(PluginError):
    pass


class Registry:
    """Every component of every loaded plugin, by kind and name."""

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self.components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[ComponentInfo]] = {}
        for kind in KINDS:
            for plugin, hook in manager.implementations(f"register_{kind}"):
                self._collect(kind, plugin, hook)

    def _collect(self, kind: str, plugin: str, hook: Callable[..., Any]) -> None:
        record = self.manager.records[plugin]
        added: list[ComponentInfo] = []

        def register(name: str, factory: Callable[..., Any], **metadata: Any) -> None:
            added.append(_info(kind, name, factory, metadata, record))

        try:
            hook(register=register)
        except Exception as exc:
            self.manager.fail(plugin, f"register_{kind} raised {_describe(exc)}")
            return
        for info in added:
            self._add(info)
            record.components.setdefault(kind, []).append(info.name)

    def _add(self, info: ComponentInfo) -> None:
        key = (info.kind, info.name)
        if key in self.conflicts:
            self.conflicts[key].append(info)
            return
        existing = self.components[info.kind].pop(info.name, None)
        if existing is None:
            self.components[info.kind][info.name] = info
            return
        self.conflicts[key] = [existing, info]
        message = _conflict_message(self.conflicts[key])
        self.manager.fail(info.plugin, message)

    def get(self, kind: str, name: str) -> ComponentInfo:
        if (kind, name) in self.conflicts:
            raise DuplicateComponent(_conflict_message(self.conflicts[(kind, name)]))
        try:
            return self.components[kind][name]
        except KeyError:
            raise ConfigError(unknown_name_message(kind, name, self.components[kind])) from None


def _info(kind, name, factory, metadata, record) -> ComponentInfo:
    where = f"plugin {record.name!r}"
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where} registered a {kind} component with name {name!r}; use a non-empty str")
    if not callable(factory):
        raise PluginError(f"{where} registered {name!r} with a factory that is not callable: {factory!r}")
    unknown = set(metadata) - _METADATA
    if unknown:
        raise PluginError(
            f"{where} registered {name!r} with unknown metadata {sorted(unknown)}; "
            f"known: {sorted(_METADATA)}"
        )
    realisers: dict[str, Any] = {}
    if kind in ("scorers", "strategies"):  # they run client-side, beside any host's Generator
        realisers = {host: None for host in HOSTS if metadata.get(host, True) is not False}
    elif metadata.get("transformers", True) is not False:
        realisers["transformers"] = None
    for host in ("vllm", "tgi"):
        if host in metadata and metadata[host] is not False:
            if not callable(metadata[host]):
                raise PluginError(f"{where} registered {name!r} with {host}= that is not callable")
            realisers[host] = metadata[host]
    doc = metadata.get("doc") or inspect.getdoc(factory) or ""
    return ComponentInfo(
        kind=kind,
        name=name,
        factory=factory,
        plugin=record.name,
        distribution=record.distribution,
        version=record.version,
        realisers=realisers,
        sampling=bool(metadata.get("sampling", False)),
        doc=doc,
        schema=schema_of(factory),
    )


def _conflict_message(infos: list[ComponentInfo]) -> str:
    kind, name = infos[0].kind, infos[0].name
    owners = " and ".join(
        f"plugin {i.plugin!r} ({i.distribution or 'no distribution'})" for i in infos
    )
    return (
        f"{SINGULAR[kind]} {name!r} is registered by {owners}; a component name "
        f"must be unique. Uninstall one, or block it with METAGEN_DISABLE_PLUGINS="
        f"{infos[-1].plugin}"
    )


def unknown_name_message(kind: str, name: str, known: dict[str, Any]) -> str:
    import difflib

    label = SINGULAR[kind]
    message = f"unknown {label} {name!r}."
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.5)
    if close:
        message += f" Did you mean {close[0]!r}?"
    valid = ", ".join(sorted(known)) or "(none installed)"
    return f"{message} Valid {kind.replace('_', ' ')}: {valid}"
