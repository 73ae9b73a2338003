"""``metagen new-plugin NAME``: write a ready-to-install plugin distribution.

The template (``templates/plugin/``) is a pyproject with the ``metagen`` entry point, a module
registering one scorer through ``metagen_hooks.hookimpl``, a README and a pytest test that
passes as written. Placeholders: ``@name@`` (the plugin and component name), ``@module@`` (the
import name, ``metagen_NAME``) and ``@dist@`` (the distribution, ``metagen-NAME``); paths
holding ``_module_`` are renamed.
"""

from __future__ import annotations

import keyword
import re
import sys
from importlib import resources
from pathlib import Path

from ..errors import ConfigError


def new_plugin(name: str, directory: str = ".") -> int:
    root = write(name, directory)
    print(f"wrote {root}/\n\nnext:\n  cd {root}\n  pip install -e \".[test]\"\n  python -m pytest\n"
          f"  metagen plugins list")
    return 0


def write(name: str, directory: str | Path = ".") -> Path:
    """Create ``DIRECTORY/metagen-NAME`` from the template; returns its path."""
    slug = name.strip().lower().replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", slug) or keyword.iskeyword(slug):
        raise ConfigError(f"new-plugin {name!r}: the name must start with a letter and hold only letters, "
                          f"digits, '_' or '-' (e.g. shout, keyword-check)")
    values = {"@name@": slug, "@module@": f"metagen_{slug}", "@dist@": f"metagen-{slug.replace('_', '-')}"}
    root = Path(directory) / values["@dist@"]
    if root.exists():
        raise ConfigError(f"new-plugin: {root} already exists; choose another --dir or NAME, or remove it")
    template = resources.files(__name__) / "plugin"
    for source, relative in _files(template, Path()):
        target = root / str(relative).replace("_module_", values["@module@"])
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        target.write_text(text, encoding="utf-8")
    return root


def _files(node, relative: Path):
    for child in node.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _files(child, relative / child.name)
        else:
            yield child, relative / child.name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(new_plugin(*sys.argv[1:]))
