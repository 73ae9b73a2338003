"""No engine is named outside its own package: what depends on a host asks its declared
capabilities, and an engine's host, realisations, tooling and command live in
``metagen_plugins/engines/<engine>/``, so adding or removing an engine touches that folder alone.

An engine is named by a string that is its name (``"vllm"``), a module path through it
(``hosts.vllm``, ``metagen_plugins.deploy.tgi``), a keyword argument (``register(..., vllm=...)``),
an identifier or an attribute, or an import of it. Prose mentioning vLLM in a message is not an
identifier. What must remain is allowed below, each with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "metagen_plugins"
ENGINES = ("vllm", "tgi", "transformers")
MODULE_PATH = re.compile(r"\b(?:hosts|deploy|engines)\.(vllm|tgi|transformers)\b")

# (file or folder under metagen_plugins/, engine) -> why it may name that engine
ALLOWED = {
    ("config.py", "transformers"): "DEFAULT_HOST: the host a configuration without [host] name runs on",
    ("__init__.py", "transformers"): "generate_kwargs builds model.generate() kwargs: the transformers "
                                     "engine's own API, imported from its module",
    ("moved.py", "vllm"): "the table of old module paths (hosts.vllm, deploy.vllm)",
    ("moved.py", "tgi"): "the table of old module paths (hosts.tgi, deploy.tgi)",
    ("moved.py", "transformers"): "the table of old module paths (hosts.transformers, hosts.batching, ...)",
}
LIBRARY = "transformers"  # `import transformers` (absolute): the library, which components and
# model loading use, not the engine: allowed everywhere


def mentions(path: Path) -> set[tuple[str, int, str]]:
    """(engine, line, how) for every place ``path`` names an engine."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in ENGINES:
                found.add((node.value, line, f"the string {node.value!r}"))
            for match in MODULE_PATH.finditer(node.value):
                found.add((match.group(1), line, f"the module path {match.group(0)!r}"))
        elif isinstance(node, ast.keyword) and node.arg in ENGINES:
            found.add((node.arg, line, f"the keyword {node.arg}="))
        elif isinstance(node, ast.Name) and node.id in ENGINES:
            found.add((node.id, line, f"the name {node.id}"))
        elif isinstance(node, ast.Attribute) and node.attr in ENGINES:
            found.add((node.attr, line, f"the attribute .{node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else ["." * node.level + (node.module or "") + "." + a.name for a in node.names])
            for module in modules:
                parts = module.lstrip(".").split(".")
                absolute = isinstance(node, ast.Import) or node.level == 0
                if absolute and parts[0] == LIBRARY:
                    continue  # the transformers library
                for engine in ENGINES:
                    if engine in parts:
                        found.add((engine, line, f"the import of {module}"))
    return found


def naming(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("templates/") and path.parent != root / "templates":
            continue  # the new-plugin template's files are text with placeholders
        for engine, line, how in sorted(mentions(path)):
            if relative.startswith(f"engines/{engine}/"):
                continue  # its own package
            if any(relative.startswith(place) and engine == allowed for place, allowed in ALLOWED):
                continue
            out.append(f"metagen_plugins/{relative}:{line}: {how}")
    return out


def test_no_engine_is_named_outside_its_package():
    found = naming()
    assert not found, ("an engine named outside its package (ask the host's declared Capabilities, or "
                       "move the code into engines/<engine>/; else allow it in ALLOWED with the reason):\n"
                       + "\n".join(found))


def test_every_allowance_is_still_needed():
    """An allowance nothing uses any more is removed, so the list stays what must remain."""
    for place, engine in ALLOWED:
        paths = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix().startswith(place)]
        assert any(e == engine for p in paths for e, _, _ in mentions(p)), \
            f"ALLOWED[({place!r}, {engine!r})] is no longer needed: remove it"


def test_the_check_sees_each_way_of_naming_an_engine(tmp_path):
    (tmp_path / "other.py").write_text(
        'import transformers\n'
        'from .engines.vllm.host import VLLMHost\n'
        'HOST = "tgi"\n'
        'register("x", f, vllm=lambda: {})\n'
        'DOC = "see metagen_plugins.deploy.tgi"\n'
        'if info.transformers: pass\n')
    found = naming(tmp_path)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "the import of .engines.vllm.host.VLLMHost", "the string 'tgi'", "the keyword vllm=",
        "the module path 'deploy.tgi'", "the attribute .transformers"])
