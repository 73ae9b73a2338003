"""What the registry knows of hosts and commands: a ``register_hosts`` registration checked and
recorded (:class:`HostInfo`), what the installed hosts read under each realiser key
(:class:`KeyReaders`: their capabilities and the realisations they register for components),
and a ``register_commands`` registration (:class:`CommandInfo`)."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from metagen_hooks import Capabilities

from .errors import PluginError

# component metadata that is not a realiser key; ``stop_strings``: what the component amounts to
# as stop strings, for the hosts that declare Capabilities(stop_strings=True)
METADATA = {"sampling", "constraint", "doc", "caller", "runs_code", "stop_strings", "reads_logprobs"}
# the configuration sections a host's ``realisations`` name components by, and their kinds
SECTIONS = {"processors": "logits_processors", "stopping": "stopping_criteria"}


@dataclass
class HostInfo:
    """A registered host (``register_hosts``): its settings schema, factory, realiser key (and
    the keys it falls back to), declared capabilities and the realisations it registers."""

    name: str
    factory: Callable[..., Any]
    settings: dict[str, Any]
    realiser: str
    plugin: str
    distribution: str | None
    version: str | None
    capabilities: Capabilities = field(default_factory=Capabilities)
    deploy: str | None = None
    doc: str = ""
    fallback: tuple[str, ...] = ()  # realiser keys read when a component has none for ``realiser``
    # (component kind, name) -> its realiser on this host, from ``register(..., realisations=)``
    realisations: dict[tuple[str, str], Callable[..., dict]] = field(default_factory=dict)

    @property
    def in_process(self) -> bool:
        """Whether the host calls component factories itself (``capabilities.in_process``)."""
        return self.capabilities.in_process

    @property
    def keys(self) -> tuple[str, ...]:
        """The realiser keys this host reads, in order: its own, then its fallbacks."""
        return (self.realiser, *self.fallback)

    def label(self) -> str:
        origin = f"{self.distribution} {self.version}" if self.distribution else self.plugin
        return f"host {self.name!r} (plugin {self.plugin!r}, {origin})"

    def as_dict(self) -> dict[str, Any]:
        from .params import type_name

        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version,
                "realiser": self.realiser, "fallback": list(self.fallback), "in_process": self.in_process,
                "capabilities": asdict(self.capabilities), "docstring": self.doc,
                "settings": {k: type_name(v) for k, v in sorted(self.settings.items())}}


@dataclass
class KeyReaders:
    """What the hosts reading one realiser key as their own realise natively (merged over them:
    any of them), and the realisations they registered for components under it."""

    in_process: bool = False
    stop_strings: bool = False
    realisations: dict[tuple[str, str], Callable[..., dict]] = field(default_factory=dict)


def key_readers(hosts) -> dict[str, KeyReaders]:
    """Each realiser key the installed ``hosts`` read (their own and their fallbacks) -> its
    :class:`KeyReaders` (empty for a key that is only a fallback)."""
    keys: dict[str, KeyReaders] = {}
    for info in hosts:
        readers = keys.setdefault(info.realiser, KeyReaders())
        readers.in_process |= info.capabilities.in_process
        readers.stop_strings |= info.capabilities.stop_strings
        for component, realise in info.realisations.items():
            readers.realisations.setdefault(component, realise)
        for key in info.fallback:
            keys.setdefault(key, KeyReaders())
    return keys


def host_info(name, factory, settings, realiser, in_process, deploy, doc, record, capabilities=None,
              fallback=(), realisations=None) -> HostInfo:
    """A ``register_hosts`` registration, checked: a PluginError naming the plugin and the fix."""
    where = f"plugin {record.name!r}"
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"{where} registered a host with name {name!r}; use an identifier such as 'echo'")
    if not callable(factory):
        raise PluginError(f"{where} registered host {name!r} with a factory that is not callable: {factory!r}")
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise PluginError(f"{where} registered host {name!r} with settings={settings!r}; give a dict of "
                          f"setting name -> type, e.g. {{'url': str, 'timeout': float}}")
    if "name" in settings:
        raise PluginError(f"{where} registered host {name!r} with a setting called 'name', which [host] uses "
                          f"to select the host; rename it")
    realiser = realiser or name
    if not isinstance(realiser, str) or not realiser.isidentifier() or realiser in METADATA:
        raise PluginError(f"{where} registered host {name!r} with realiser={realiser!r}; use an identifier "
                          f"other than {', '.join(sorted(METADATA))}")
    if capabilities is None:
        capabilities = Capabilities(in_process=bool(in_process))
    elif not isinstance(capabilities, Capabilities):
        raise PluginError(f"{where} registered host {name!r} with capabilities={capabilities!r}; give a "
                          f"metagen_hooks.Capabilities(...), e.g. Capabilities(stop_strings=True)")
    elif in_process and not capabilities.in_process:
        raise PluginError(f"{where} registered host {name!r} with in_process=True but capabilities saying "
                          f"in_process=False; declare it once, in Capabilities(in_process=True)")
    if isinstance(fallback, str) or not all(isinstance(k, str) and k.isidentifier() and k not in METADATA
                                            for k in fallback):
        raise PluginError(f"{where} registered host {name!r} with fallback={fallback!r}; give a tuple of "
                          f"realiser keys read after its own, e.g. fallback=(\"openai\",)")
    fallback = tuple(k for k in dict.fromkeys(fallback) if k != realiser)
    return HostInfo(name=name, factory=factory, settings=dict(settings), realiser=realiser, plugin=record.name,
                    distribution=record.distribution, version=record.version, capabilities=capabilities,
                    deploy=deploy, doc=doc or inspect.getdoc(factory) or "", fallback=fallback,
                    realisations=_realisations(realisations, f"{where} registered host {name!r} with"))


def _realisations(table, where: str) -> dict[tuple[str, str], Callable[..., dict]]:
    """``{"processors": {name: realiser}, "stopping": {...}}`` as (kind, name) -> realiser."""
    if table is None:
        return {}
    example = 'realisations={"processors": {"top_k": lambda top_k, min_tokens_to_keep=1: {"top_k": top_k}}}'
    if not isinstance(table, dict) or set(table) - set(SECTIONS):
        raise PluginError(f"{where} realisations={table!r}; give a dict of section ({' or '.join(SECTIONS)}) "
                          f"-> {{component name: realiser}}, e.g. {example}")
    out = {}
    for section, realisers in table.items():
        if not isinstance(realisers, dict):
            raise PluginError(f"{where} realisations[{section!r}] = {realisers!r}; give a dict of component "
                              f"name -> realiser, e.g. {example}")
        for component, realise in realisers.items():
            if not isinstance(component, str) or not callable(realise):
                raise PluginError(f"{where} realisations[{section!r}][{component!r}] = {realise!r}, which is "
                                  f"not a callable returning request parameters; e.g. {example}")
            out[(SECTIONS[section], component)] = realise
    return out


# metagen's own commands; a plugin's command may not take their names
OWN_COMMANDS = ("plugins", "run", "reselect", "plot", "new-plugin", "serve")


@dataclass
class CommandInfo:
    """A command a plugin registered (``register_commands``): ``metagen <name> ...``."""

    name: str
    add_arguments: Callable[[Any], None]
    main: Callable[[Any, Any], int]
    help: str
    plugin: str


def command_info(name, add_arguments, main, help, record) -> CommandInfo:
    """A ``register_commands`` registration, checked: a PluginError naming the plugin and the fix."""
    where = f"plugin {record.name!r}"
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise PluginError(f"{where} registered a command named {name!r}; use a word such as 'echo'")
    if name in OWN_COMMANDS:
        raise PluginError(f"{where} registered the command {name!r}, which is metagen's own; rename it")
    for what, value in (("add_arguments", add_arguments), ("main", main)):
        if not callable(value):
            raise PluginError(f"{where} registered command {name!r} with {what}={value!r}, which is not callable; "
                              f"give add_arguments(parser) and main(args, registry) -> int")
    doc = help or (inspect.getdoc(main) or "").split("\n")[0]
    return CommandInfo(name=name, add_arguments=add_arguments, main=main, help=doc, plugin=record.name)
