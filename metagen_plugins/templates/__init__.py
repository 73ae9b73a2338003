"""``metagen new-plugin NAME [--kind KIND]``: write a ready-to-install plugin distribution.

One template per kind of plugin (``templates/<kind>/``: a module registering one component of
that kind through ``metagen_hooks.hookimpl``, a README and a pytest test that passes as
written), and the ``pyproject.toml`` they share (``templates/common/``, with the ``metagen``
entry point). Placeholders: ``@name@`` (the plugin and component name), ``@module@`` (the import
name, ``metagen_NAME``), ``@dist@`` (the distribution, ``metagen-NAME``) and ``@kind@`` (what it
registers, in words); paths holding ``_module_`` are renamed.
"""

from __future__ import annotations

import keyword
import re
import sys
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

KINDS = {
    "scorer": "scorer",
    "processor": "logits processor",
    "stopping": "stopping criterion",
    "strategy": "strategy",
    "host": "host",
}
"""``--kind`` -> what the skeleton registers. The default, ``scorer``, is what ``new-plugin``
wrote before it had kinds."""


def new_plugin(name: str, directory: str = ".", kind: str = "scorer") -> int:
    root = write(name, directory, kind)
    print(f"wrote {root}/ (a {KINDS[kind]} plugin)\n\nnext:\n  cd {root}\n  pip install -e \".[test]\"\n"
          f"  python -m pytest\n  metagen plugins list")
    return 0


def write(name: str, directory: str | Path = ".", kind: str = "scorer") -> Path:
    """Create ``DIRECTORY/metagen-NAME``, a ``kind`` plugin, from the templates; returns its path."""
    if kind not in KINDS:
        raise ConfigError(f"new-plugin --kind {kind!r}: choose one of {', '.join(KINDS)}")
    slug = name.strip().lower().replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", slug) or keyword.iskeyword(slug):
        raise ConfigError(f"new-plugin {name!r}: the name must start with a letter and hold only letters, "
                          f"digits, '_' or '-' (e.g. shout, keyword-check)")
    values = {"@name@": slug, "@module@": f"metagen_{slug}", "@dist@": f"metagen-{slug.replace('_', '-')}",
              "@kind@": KINDS[kind]}
    root = Path(directory) / values["@dist@"]
    if root.exists():
        raise ConfigError(f"new-plugin: {root} already exists; choose another --dir or NAME, or remove it")
    templates = resources.files(__name__)
    for part in ("common", kind):
        for source, relative in _files(templates / part, Path()):
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
