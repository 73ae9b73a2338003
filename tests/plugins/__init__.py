"""The tests' fixture plugins: real files in this folder, read with ``source(name)`` to install as a
distribution (the ``install_plugin`` fixture) or copied with ``plugins_dir`` into a directory
for ``--plugins-dir`` / ``get_registry(plugins_dir=...)`` (the file name is the plugin's name
there). They are never imported from here: a plugin is loaded the way metagen loads one, and
this folder is no plugins directory itself (its ``__init__.py`` would be a plugin)."""

from __future__ import annotations

import shutil
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent


def source(name: str) -> str:
    """The code of the fixture plugin ``tests/plugins/<name>.py``."""
    return (PLUGINS / f"{name}.py").read_text(encoding="utf-8")


def plugins_dir(directory: Path, *names: str, **renamed: str) -> Path:
    """``directory`` (created if missing) holding the named fixture plugins; ``renamed`` maps a
    fixture plugin to the plugin name it gets there (``faulty="faulty_local"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, target in [*((n, n) for n in names), *renamed.items()]:
        shutil.copyfile(PLUGINS / f"{name}.py", directory / f"{target}.py")
    return directory
