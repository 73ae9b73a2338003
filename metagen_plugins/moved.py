"""Where modules of metagen_plugins used to be, so imports written against the old paths keep
working (the hook contract is public, and plugins import these): one table, and an import hook
that answers an old name with the module now at the new one, loaded only when asked for.

(The built-in plugin's own moves are in ``builtin.MOVED``.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "metagen_plugins.hosts.transformers": "metagen_plugins.engines.transformers.host",
    "metagen_plugins.hosts.batching": "metagen_plugins.engines.transformers.engine",
    "metagen_plugins.hosts.shared_prefix": "metagen_plugins.engines.transformers.attention",
    "metagen_plugins.hosts.prefix_cache": "metagen_plugins.engines.transformers.prefix_cache",
    "metagen_plugins.hosts.watching": "metagen_plugins.engines.transformers.watching",
    "metagen_plugins.hosts.detokenize": "metagen_plugins.engines.transformers.detokenize",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name in ``MOVED``; loading it imports the new module and returns it
    (the import system then gives it the old name's spec: it gets its own back)."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state  # the new module's own


def install() -> None:
    if not any(isinstance(finder, _Moved) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Moved())
