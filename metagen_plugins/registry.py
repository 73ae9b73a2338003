"""The registry: calls each plugin's register hooks, records who registered what, resolves names;
and owns the registry's lifecycle (:func:`get_registry`: loaded once, then shared). What it
records of hosts and commands is :mod:`.host_info`'s."""

from __future__ import annotations

import functools

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from metagen_hooks import KINDS, Capabilities

from .errors import ConfigError, MetagenError, PluginError, nearest
from .host_info import METADATA as _METADATA
from .host_info import CommandInfo, HostInfo, KeyReaders, command_info, host_info, key_readers
from .params import Schema, schema_of
from .plugins import PluginManager, _describe

_registry: "Registry | None" = None
_plugins_dir: str | None = None  # the --plugins-dir the shared registry was loaded with

READERS = ("scorers", "strategies")  # the kinds that see samples, and so may read their log-probabilities
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
    realisers: dict[str, Callable[..., dict] | None]  # realiser key -> engine parameters (None: in-process)
    sampling: bool = False
    constraint: bool = False  # a hard constraint (bans tokens): applied before every other processor
    doc: str = ""
    schema: Schema = field(default=None)  # type: ignore[assignment]
    caller: frozenset[str] = frozenset()  # parameters a request to ``metagen serve`` may set
    runs_code: bool = False  # executes programs (in the sandbox): metagen serve requires full isolation
    registry: "Registry | None" = field(default=None, repr=False, compare=False)  # the one it is in
    excluded: frozenset[str] = frozenset()  # realiser keys it was registered with ``<key>=False`` for
    # whether it reads the samples' per-token log-probabilities (``reads_logprobs=``): a bool, a
    # callable over its parameters, or None (declared nothing: taken to read them)
    reads_logprobs: "bool | Callable[..., Any] | None" = None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The installed hosts this component runs on (those with a realiser for it)."""
        hosts = self.registry.hosts.values() if self.registry is not None else ()
        return tuple(h.name for h in hosts if self.realiser_key(h.keys) is not None)

    def realiser_key(self, keys: tuple[str, ...]) -> str | None:
        """The first of ``keys`` (a host's own realiser key, then its fallbacks) this component
        has a realiser for, or None; a key it was registered ``False`` for ends the search."""
        for key in keys:
            if key in self.realisers:
                return key
            if key in self.excluded:
                return None
        return None

    def reads(self, values: dict[str, Any]) -> bool:
        """Whether this component, with parameters ``values``, reads the samples' per-token
        log-probabilities, as it declared (``reads_logprobs=``); True for a scorer or strategy that
        declared nothing (it may: it was written before the declaration existed), False for a
        processor or stopping criterion. A callable declaration gets
        ``values`` (and ``registry=``, if it asks for it); its failure names the component."""
        declared = self.reads_logprobs
        if self.kind not in READERS:
            return False  # a processor or stopping criterion sees logits, never samples
        if declared is None or isinstance(declared, bool):
            return declared is not False
        kwargs = dict(values)
        if "registry" in inspect.signature(declared).parameters:
            kwargs["registry"] = self.registry
        try:
            return bool(declared(**kwargs))
        except MetagenError:
            raise
        except Exception as exc:
            raise PluginError(f"{self.label()}: its reads_logprobs= callable failed on parameters {values!r}: "
                              f"{type(exc).__name__}: {exc}") from exc

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
            "caller_parameters": sorted(self.caller),
            "runs_code": self.runs_code,
            # processors and criteria never see samples; undeclared counts as reading
            "reads_logprobs": (False if self.kind not in READERS else self.reads_logprobs is not False
                               if not callable(self.reads_logprobs) else "depends on its parameters"),
        }


class DuplicateComponent(PluginError):
    pass


class Registry:
    """Every component of every loaded plugin, by kind and name."""

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self.hosts: dict[str, HostInfo] = {}
        self.commands: dict[str, CommandInfo] = {}
        self.components: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[ComponentInfo]] = {}
        for plugin, hook in manager.implementations("register_hosts"):  # first: components name them
            self._collect_hosts(plugin, hook)
        for plugin, hook in manager.implementations("register_commands"):
            self._collect_commands(plugin, hook)
        for kind in KINDS:
            for plugin, hook in manager.implementations(f"register_{kind}"):
                self._collect(kind, plugin, hook)

    def _collect_hosts(self, plugin: str, hook: Callable[..., Any]) -> None:
        record = self.manager.records[plugin]

        def register(name: str, factory: Callable[..., Any], *, settings: dict[str, Any],
                     realiser: str | None = None, fallback: tuple[str, ...] | list[str] = (),
                     capabilities: Capabilities | None = None,
                     realisations: dict[str, dict[str, Callable[..., dict]]] | None = None,
                     in_process: bool = False, deploy: str | None = None, doc: str = "") -> HostInfo:
            return host_info(name, factory, settings, realiser, in_process, deploy, doc, record,
                             capabilities, fallback, realisations)

        for info in self._registered(plugin, "register_hosts", hook, register):
            if info.name in self.hosts:
                self.manager.fail(plugin, f"host {info.name!r} is registered by plugin "
                                          f"{self.hosts[info.name].plugin!r} and plugin {plugin!r}; a host "
                                          f"name must be unique: uninstall one, or block it with "
                                          f"METAGEN_DISABLE_PLUGINS={plugin}")
                continue
            self.hosts[info.name] = info
            record.components.setdefault("hosts", []).append(info.name)

    def _collect_commands(self, plugin: str, hook: Callable[..., Any]) -> None:
        record = self.manager.records[plugin]

        def register(name: str, add_arguments: Callable[[Any], None], main: Callable[[Any, Any], int], *,
                     help: str = "") -> CommandInfo:
            return command_info(name, add_arguments, main, help, record)

        for info in self._registered(plugin, "register_commands", hook, register):
            if info.name in self.commands or any(h.deploy and h.name == info.name for h in self.hosts.values()):
                owner = self.commands[info.name].plugin if info.name in self.commands else self.hosts[info.name].plugin
                self.manager.fail(plugin, f"command {info.name!r} is registered by plugin {owner!r} and plugin "
                                          f"{plugin!r}; a command name must be unique: uninstall one, or block "
                                          f"it with METAGEN_DISABLE_PLUGINS={plugin}")
                continue
            self.commands[info.name] = info
            record.components.setdefault("commands", []).append(info.name)

    def create_host(self, config, **objects: Any):
        """The host object for ``config.host_name`` (a validated configuration), made by the
        factory its plugin registered; ``objects``: ``model=`` / ``tokenizer=`` lent to it."""
        return self.host(config.host_name).factory(config, self, **objects)

    def host(self, name: str) -> HostInfo:
        """The host registered as ``name``; a ConfigError listing the installed ones otherwise."""
        try:
            return self.hosts[name]
        except KeyError:
            close = nearest(name, self.hosts)
            raise ConfigError(f"[host] name {name!r} is not a host; "
                              + (f"did you mean {close!r}? " if close else "")
                              + f"the installed hosts are {', '.join(self.hosts) or '(none)'}") from None

    def realiser_keys(self) -> dict[str, bool]:
        """Each installed host's realiser key -> whether that host calls factories in-process."""
        return {key: caps.in_process for key, caps in self.key_capabilities().items()}

    def key_capabilities(self) -> dict[str, Capabilities]:
        """Each realiser key the installed hosts read (their own and their fallbacks) -> what the
        hosts whose own key it is declare natively (merged: any of them; none for a key that is
        only a fallback)."""
        return {key: Capabilities(in_process=r.in_process, stop_strings=r.stop_strings)
                for key, r in key_readers(self.hosts.values()).items()}

    def realiser_chain(self, key: str) -> tuple[str, ...]:
        """``key`` and the fallback keys of the host(s) whose own realiser key it is, in order: what
        :func:`~metagen_plugins.components.realised` reads for a host that declared ``key``."""
        chain = [key]
        for info in self.hosts.values():
            if info.realiser == key:
                chain += [k for k in info.fallback if k not in chain]
        return tuple(chain)

    def _collect(self, kind: str, plugin: str, hook: Callable[..., Any]) -> None:
        record = self.manager.records[plugin]
        keys = key_readers(self.hosts.values())

        def register(name: str, factory: Callable[..., Any], **metadata: Any) -> ComponentInfo:
            return _info(kind, name, factory, metadata, record, keys)

        for info in self._registered(plugin, f"register_{kind}", hook, register):
            info.registry = self
            self._add(info)
            record.components.setdefault(kind, []).append(info.name)

    def _registered(self, plugin: str, hook_name: str, hook: Callable[..., Any], make: Callable[..., Any]) -> list:
        """What a plugin's registration ``hook`` registers: ``make``'s entry for each call of the
        ``register`` it is given (``make`` checks the call's arguments). Nothing when the hook
        raises: the plugin is then marked failed, naming the hook."""
        added: list = []

        @functools.wraps(make)  # the callback a plugin is given keeps the documented signature
        def register(*args: Any, **kwargs: Any) -> None:
            added.append(make(*args, **kwargs))

        try:
            hook(register=register)
        except Exception as exc:
            self.manager.fail(plugin, f"{hook_name} raised {_describe(exc)}")
            return []
        return added

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

    def reads_logprobs(self, kind: str, entry: dict[str, Any]) -> bool:
        """Whether the component configured by ``entry`` (a ``{"name": ..., params}`` table of
        ``kind``) reads the samples' per-token log-probabilities (:meth:`ComponentInfo.reads`).
        A component declaring ``reads_logprobs=`` as a callable asks this of a nested one."""
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return True  # not a component table: whatever it is, assume the worst
        return self.get(kind, entry["name"]).reads({k: v for k, v in entry.items() if k != "name"})

    def get(self, kind: str, name: str) -> ComponentInfo:
        if (kind, name) in self.conflicts:
            raise DuplicateComponent(_conflict_message(self.conflicts[(kind, name)]))
        try:
            return self.components[kind][name]
        except KeyError:
            raise ConfigError(unknown_name_message(kind, name, self.components[kind])) from None


def _info(kind, name, factory, metadata, record, keys: dict[str, KeyReaders]) -> ComponentInfo:
    """``keys``: the installed hosts' realiser keys -> what the hosts of that key realise natively
    and the realisations they registered for components."""
    where = f"plugin {record.name!r}"
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where} registered a {kind} component with name {name!r}; use a non-empty str")
    if not callable(factory):
        raise PluginError(f"{where} registered {name!r} with a factory that is not callable: {factory!r}")
    unknown = set(metadata) - _METADATA - set(keys)
    if unknown:
        raise PluginError(
            f"{where} registered {name!r} with unknown metadata {sorted(unknown)}; "
            f"known: {sorted(_METADATA | set(keys))} (a host's key is known once its plugin is installed)"
        )
    stops = metadata.get("stop_strings")
    if stops is not None and not callable(stops):
        raise PluginError(f"{where} registered {name!r} with stop_strings= that is not callable; give a "
                          f"callable taking its parameters and returning its stop strings, e.g. "
                          f"stop_strings=lambda stop: stop")
    realisers: dict[str, Any] = {}
    excluded = set()
    for key, caps in keys.items():
        value = metadata.get(key)
        if kind in ("scorers", "strategies"):  # they run client-side, beside any host's Generator
            if value is not False:
                realisers[key] = None
            else:
                excluded.add(key)
        elif value is False:
            excluded.add(key)
        elif value is None:
            if caps.in_process:
                realisers[key] = None  # the host builds the factory itself
            elif (kind, name) in caps.realisations:  # the host's own realisation of this component
                realisers[key] = caps.realisations[(kind, name)]
            elif caps.stop_strings and stops is not None:
                realisers[key] = _as_stop(stops)  # the host's Generator honours stop= natively
        elif value is True and caps.in_process:
            realisers[key] = None
        elif not callable(value):
            raise PluginError(f"{where} registered {name!r} with {key}= that is not callable")
        else:
            realisers[key] = value
    reads = metadata.get("reads_logprobs")
    if reads is not None:
        if kind not in READERS:
            raise PluginError(f"{where} registered {name!r} with reads_logprobs=; only scorers and strategies "
                              f"declare it (a {SINGULAR[kind]} sees logits, never samples): remove it")
        if not isinstance(reads, bool) and not callable(reads):
            raise PluginError(f"{where} registered {name!r} with reads_logprobs={reads!r}; give True, False, or a "
                              f"callable taking its parameters and returning whether it reads the samples' "
                              f"log-probabilities")
    doc = metadata.get("doc") or inspect.getdoc(factory) or ""
    schema = schema_of(factory)
    caller = metadata.get("caller", ())
    if isinstance(caller, str) or not all(isinstance(c, str) for c in caller):
        raise PluginError(f"{where} registered {name!r} with caller={caller!r}; give the names of the "
                          f"parameters a request may set, e.g. caller=(\"n\", \"temperature\")")
    unknown_params = sorted(set(caller) - set(schema.params))
    if unknown_params:
        raise PluginError(f"{where} registered {name!r} with caller= naming {unknown_params}, which its "
                          f"factory does not take; its parameters are {', '.join(schema.params) or '(none)'}")
    return ComponentInfo(
        kind=kind,
        name=name,
        factory=factory,
        plugin=record.name,
        distribution=record.distribution,
        version=record.version,
        realisers=realisers,
        sampling=bool(metadata.get("sampling", False)),
        constraint=bool(metadata.get("constraint", False)),
        doc=doc,
        schema=schema,
        caller=frozenset(caller),
        runs_code=bool(metadata.get("runs_code", False)),
        excluded=frozenset(excluded),
        reads_logprobs=reads,
    )


def _as_stop(stops: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """A component's ``stop_strings=`` as a realiser: ``{"stop": [...]}``, the Generator's own
    argument, which a host declaring ``Capabilities(stop_strings=True)`` adds to every call's."""

    def realise(**params: Any) -> dict[str, Any]:
        value = stops(**params)
        strings = [value] if isinstance(value, str) else list(value)
        return {"stop": strings}

    realise.stop_strings = True  # type: ignore[attr-defined]
    return realise


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
    label = SINGULAR[kind]
    message = f"unknown {label} {name!r}."
    close = nearest(name, known)
    if close:
        message += f" Did you mean {close!r}?"
    valid = ", ".join(sorted(known)) or "(none installed)"
    return f"{message} Valid {kind.replace('_', ' ')}: {valid}"


def get_registry(plugins_dir: str | os.PathLike | None = None, reload: bool = False) -> Registry:
    """The registry of every installed plugin's components and hosts, loaded once and then shared;
    ``plugins_dir`` also loads the ``*.py`` plugins of that directory (loaded again when it is
    another directory than last time, or with ``reload``)."""
    global _registry, _plugins_dir
    wanted = None if plugins_dir is None else os.fspath(plugins_dir)
    if _registry is None or reload or (wanted is not None and wanted != _plugins_dir):
        _registry = Registry(PluginManager().load(plugins_dir))
        _plugins_dir = wanted
    return _registry
