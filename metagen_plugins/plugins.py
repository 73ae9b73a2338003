"""The plugin manager: loads plugins one by one, so a broken plugin is reported, not fatal.

Sources, in order: metagen's built-in plugins (its components, its in-process host, and each
serving engine's package under ``engines/``; imported by module name like any plugin: the core
never imports them), the ``metagen`` entry-point group, and ``*.py``
files of a plugins directory (``--plugins-dir``). ``METAGEN_DISABLE_PLUGINS=a,b`` blocks plugins
by name; ``METAGEN_STRICT_PLUGINS=1`` turns any load failure into an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

import metagen_hooks
from metagen_hooks import hookspecs

from .errors import PluginError

BUILTIN = "metagen_plugins.builtin"
ENGINES = "metagen_plugins.engines"


def _engines() -> tuple[str, ...]:
    """The engine packages under ``engines/``, by name: each is a built-in plugin of its own, so
    adding or removing an engine touches that folder alone."""
    import pkgutil

    spec = importlib.util.find_spec(ENGINES)
    places = spec.submodule_search_locations if spec is not None else None
    return tuple(f"{ENGINES}.{m.name}" for m in sorted(pkgutil.iter_modules(places or []), key=lambda m: m.name)
                 if m.ispkg)


BUILTINS = (BUILTIN, *_engines())
"""metagen-plugins' own plugins, loaded first and never disabled: its components and its engines
(``engines/<engine>/``: the in-process transformers engine and the serving engines)."""


@dataclass
class PluginRecord:
    """What ``metagen plugins list`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # "loaded", "FAILED" or "disabled"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    source: str = "entry point"


def disabled_names() -> set[str]:
    raw = os.environ.get("METAGEN_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def strict() -> bool:
    return os.environ.get("METAGEN_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


class PluginManager:
    """A pluggy manager plus the record of every plugin it tried to load."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(metagen_hooks.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}

    def load(self, plugins_dir: str | os.PathLike | None = None) -> "PluginManager":
        for name in BUILTINS:
            self._add(name, lambda name=name: importlib.import_module(name), "metagen-plugins",
                      _version("metagen-plugins"), "built-in")
        for ep in sorted(
            importlib.metadata.entry_points(group=metagen_hooks.ENTRY_POINT_GROUP),
            key=lambda e: e.name,
        ):
            dist = getattr(ep, "dist", None)
            self._add(
                ep.name,
                ep.load,
                dist.name if dist else None,
                dist.version if dist else None,
                "entry point",
            )
        if plugins_dir is not None:
            directory = Path(plugins_dir)
            if not directory.is_dir():
                raise PluginError(f"--plugins-dir {str(directory)!r} is not a directory")
            for path in sorted(directory.glob("*.py")):
                self._add(path.stem, lambda p=path: _load_file(p), None, None, f"file {path}")
        return self

    def _add(self, name, load, distribution, version, source) -> None:
        if name in self.records:
            self._fail(
                PluginRecord(name, distribution, version, "FAILED", source=source),
                f"a plugin named {name!r} is already loaded (from "
                f"{self.records[name].distribution or self.records[name].source}); rename one",
            )
            return
        record = PluginRecord(name, distribution, version, "loaded", source=source)
        self.records[name] = record
        if name in disabled_names() and name not in BUILTINS:
            record.status = "disabled"
            return
        try:
            module = load()
            self.pm.register(module, name=name)
        except Exception as exc:  # any failure of a plugin's own code is the plugin's
            self._fail(record, _describe(exc))
            return
        unknown = [
            caller.name for caller in self.pm.get_hookcallers(module) or [] if not caller.has_spec()
        ]
        if unknown:
            self.pm.unregister(module)
            self._fail(
                record,
                f"implements unknown hook(s) {', '.join(sorted(unknown))}; the hooks are "
                + ", ".join(f"{k}" for k in _hook_names()),
            )
            return
        record.hooks = sorted(c.name for c in self.pm.get_hookcallers(module) or [])

    def _fail(self, record: PluginRecord, error: str) -> None:
        record.status = "FAILED"
        record.error = error
        self.records[record.name] = record
        where = f" ({record.distribution} {record.version})" if record.distribution else ""
        message = f"metagen plugin {record.name!r}{where} failed to load: {error}"
        if strict():
            raise PluginError(message + "\n(METAGEN_STRICT_PLUGINS=1 makes this an error)")
        print(f"warning: {message}", file=sys.stderr)

    def fail(self, name: str, error: str) -> None:
        """Mark an already loaded plugin as failed (e.g. it raised inside a hook)."""
        self._fail(self.records[name], error)

    def implementations(self, hook_name: str):
        """(plugin name, hook function) for every plugin that implements ``hook_name``."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # in registration order: built-in first
            yield impl.plugin_name, impl.function


def _hook_names() -> list[str]:
    return list(metagen_hooks.HOOKS)


def _load_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"metagen_local_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
