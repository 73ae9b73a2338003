"""Where modules of metagen-plugins used to be, so that imports written against the old paths
keep working (outside plugins import them): one table, old module path -> new, and the import
hook that serves an old path as the new module itself (the same object, so ``isinstance`` and
the classes' identity hold under either name). Nothing is imported until an old path is.

``metagen_plugins/__init__.py`` installs the hook, so it is in place before any submodule of
metagen_plugins can be imported. (The built-in plugin's own moves are ``builtin.MOVED``.)
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
            return None  # an empty package: the import system makes it
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system has set the old name's spec on the module: it keeps its own
        if module.__name__ in self._specs:
            module.__spec__ = self._specs[module.__name__]


def install() -> None:
    """Put the old paths' finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())
