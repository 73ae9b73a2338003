"""Where modules of metagen-plugins used to be, so that imports written against the old paths
keep working (outside plugins import them): one table, old module path -> new, and the import
hook that serves an old path as the new module itself (the same object, so ``isinstance`` and
the classes' identity hold under either name). Nothing is imported until an old path is.

``metagen_plugins/__init__.py`` installs the hook, so it is in place before any submodule of
metagen_plugins can be imported. A package that held old modules reads them as attributes too
(``metagen_plugins.builtin.search`` with only ``metagen_plugins.builtin`` imported) through
:func:`attribute`, its ``__getattr__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    # the host kit (docs/host-kit.md): out of hosts/ and the core into one public package
    "metagen_plugins.hosts.remote": "metagen_plugins.hostkit.remote",
    "metagen_plugins.hosts.replicas": "metagen_plugins.hostkit.replicas",
    "metagen_plugins.hosts.completions": "metagen_plugins.hostkit.completions",
    "metagen_plugins.hosts.chat": "metagen_plugins.hostkit.chat",
    "metagen_plugins.hosts.remote_watch": "metagen_plugins.hostkit.remote_watch",
    "metagen_plugins.retrying": "metagen_plugins.hostkit.retrying",
    "metagen_plugins.event_loop": "metagen_plugins.hostkit.event_loop",
    # the in-process engine: one package, one module per job
    "metagen_plugins.hosts.transformers": "metagen_plugins.engines.transformers.host",
    "metagen_plugins.hosts.batching": "metagen_plugins.engines.transformers.engine",
    "metagen_plugins.hosts.shared_prefix": "metagen_plugins.engines.transformers.attention",
    "metagen_plugins.hosts.prefix_cache": "metagen_plugins.engines.transformers.prefix_cache",
    "metagen_plugins.hosts.watching": "metagen_plugins.engines.transformers.watching",
    "metagen_plugins.hosts.detokenize": "metagen_plugins.engines.transformers.detokenize",
    # each serving engine one package (engines/<engine>/: host, deployment tooling, realisations)
    "metagen_plugins.hosts.vllm": "metagen_plugins.engines.vllm.host",
    "metagen_plugins.hosts.tgi": "metagen_plugins.engines.tgi.host",
    "metagen_plugins.deploy": None,  # the package is gone; its modules below still import
    "metagen_plugins.deploy.vllm": "metagen_plugins.engines.vllm.deploy",
    "metagen_plugins.deploy.tgi": "metagen_plugins.engines.tgi.deploy",
    # the built-in plugin: its kit for strategy authors into the contract, the sandbox out of the
    # components, the components into one package per kind
    "metagen_plugins.builtin.answers": "metagen_hooks.answers",
    "metagen_plugins.builtin.run_state": "metagen_hooks.run",
    "metagen_plugins.builtin.selection": "metagen_hooks.selection",
    "metagen_plugins.builtin.sandbox": "metagen_plugins.sandbox",
    "metagen_plugins.builtin.penalties": "metagen_plugins.builtin.processors.penalties",
    "metagen_plugins.builtin.mirostat": "metagen_plugins.builtin.processors.mirostat",
    "metagen_plugins.builtin.multimodel": "metagen_plugins.builtin.processors.multimodel",
    "metagen_plugins.builtin.grammar": "metagen_plugins.builtin.processors.grammar",
    "metagen_plugins.builtin.model_scorers": "metagen_plugins.builtin.scorers.model_scorers",
    "metagen_plugins.builtin.calculator": "metagen_plugins.builtin.scorers.calculator",
    "metagen_plugins.builtin.gather": "metagen_plugins.builtin.scorers.gather",
    "metagen_plugins.builtin.parallel": "metagen_plugins.builtin.strategies.parallel",
    "metagen_plugins.builtin.search": "metagen_plugins.builtin.strategies.search",
    "metagen_plugins.builtin.refine": "metagen_plugins.builtin.strategies.refine",
    "metagen_plugins.builtin.compose": "metagen_plugins.builtin.strategies.compose",
    "metagen_plugins.builtin.program_aided": "metagen_plugins.builtin.strategies.program_aided",
    "metagen_plugins.builtin.calculator_vote": "metagen_plugins.builtin.strategies.calculator_vote",
}
"""Old module path -> where the module is now; None: a package that is gone, kept (empty) so
that its old modules' paths import."""


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` (before any other finder) and loads each as its new
    module."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}  # new module name -> its own spec, put back after loading

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=MOVED[fullname] is None)

    def create_module(self, spec):
        if MOVED[spec.name] is None:
            return None  # an empty package: the import system makes it (exec_module fills it in)
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system has set the old name's spec on the module: it keeps its own
        if module.__name__ in self._specs:
            module.__spec__ = self._specs[module.__name__]
        elif MOVED.get(module.__name__, "") is None:  # a package that is gone: its old modules as attributes
            module.__getattr__ = lambda name: attribute(module.__name__, name)


def attribute(package: str, name: str):
    """``package.name`` when that is an old path of :data:`MOVED`: the module where it is now,
    imported on first use. A package that held moved modules defines
    ``__getattr__ = lambda name: moved.attribute(__name__, name)``, so that attribute access finds
    them as ``from package import name`` does; any other name is an AttributeError, as before."""
    old = f"{package}.{name}"
    if old not in MOVED:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return importlib.import_module(old)


def install() -> None:
    """Put the old paths' finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())
