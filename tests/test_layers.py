"""The layers of metagen_plugins (docs/architecture.md): imports run one way, downward, and no
module group forms a circle. Every import counts, also one inside a function: a lazy import is
still a dependency. The first-party plugins in contrib/ import only the contract and the public
kits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "metagen_plugins"
HOOKS = ROOT / "hooks" / "metagen_hooks"

# Lowest first. A module may import its own layer's modules and lower layers' only; the first
# matching prefix decides (a prefix ending in "." is a package and what is in it).
def _parse(text: str):
    """ast.parse, tried again on CPython 3.11's SystemError "AST constructor recursion depth
    mismatch", which it raises when another thread (a server a test left draining) parses at
    the same moment (python/cpython#106905, fixed in 3.12)."""
    for attempt in range(3):
        try:
            return ast.parse(text)
        except SystemError:
            if attempt == 2:
                raise


LAYERS = [
    ("contract", ["metagen_hooks", "metagen_hooks."]),
    ("core", ["metagen_plugins.errors", "metagen_plugins.params", "metagen_plugins.plugins", "metagen_plugins.host_info",
              "metagen_plugins.registry", "metagen_plugins.components", "metagen_plugins.config",
              "metagen_plugins.models", "metagen_plugins.text_stop", "metagen_plugins.sandbox", "metagen_plugins.sandbox.",
              "metagen_plugins.moved"]),
    ("hostkit", ["metagen_plugins.hostkit", "metagen_plugins.hostkit."]),
    ("plugins", ["metagen_plugins.builtin", "metagen_plugins.builtin.", "metagen_plugins.demo",
                 "metagen_plugins.demo.", "metagen_plugins.hosts", "metagen_plugins.hosts.",
                 "metagen_plugins.engines", "metagen_plugins.engines."]),
    ("runner", ["metagen_plugins.runner", "metagen_plugins.allocate"]),
    ("applications", ["metagen_plugins", "metagen_plugins.cli", "metagen_plugins.cli_run",
                      "metagen_plugins.trace",
                      "metagen_plugins.evaluate", "metagen_plugins.plot", "metagen_plugins.templates",
                      "metagen_plugins.templates.", "metagen_plugins.testing", "metagen_plugins.serve",
                      "metagen_plugins.serve."]),
]
# Rooms of one layer that must not see each other: the built-in plugin, the in-process host and
# the engines each import only the host kit, the core and the contract.
APART = [("metagen_plugins.builtin", "metagen_plugins.hosts"), ("metagen_plugins.demo", "metagen_plugins.hosts"),
         ("metagen_plugins.builtin", "metagen_plugins.engines"), ("metagen_plugins.demo", "metagen_plugins.engines"),
         ("metagen_plugins.hosts", "metagen_plugins.engines")]


def module_files() -> dict[str, Path]:
    files = {}
    for base, top in ((PACKAGE, "metagen_plugins"), (HOOKS, "metagen_hooks")):
        for path in base.rglob("*.py"):
            if "templates" in path.relative_to(base).parts[:1] and path.parent != base / "templates":
                continue  # the new-plugin template's files are text with placeholders, not modules
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The metagen modules ``name`` imports anywhere in its code."""
    tree = _parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            match = module.startswith(prefix) if prefix.endswith(".") else module == prefix
            if match and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise AssertionError(f"{module} is on no layer: add it to LAYERS in tests/test_layers.py "
                             f"(and to docs/architecture.md)")
    return level


def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports(name, path, known) for name, path in files.items()}


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_is_on_a_layer():
    for module in graph():
        layer_of(module)


def test_no_import_runs_upward():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_builtin_plugin_and_hosts_do_not_import_each_other():
    crossing = [f"{a} imports {b}" for a, targets in graph().items() for b in sorted(targets)
                for x, y in APART if {room(a), room(b)} == {x, y}]
    assert not crossing, "\n".join(crossing)


def engine(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["metagen_plugins", "engines"] and len(parts) > 2 else None


def engine_crossings(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} imports {b}" for a, targets in edges.items() for b in sorted(targets)
            if engine(a) and engine(b) and engine(a) != engine(b)]


def test_engines_do_not_import_each_other():
    """Each engine is one package: adding or removing one touches that folder alone."""
    crossing = engine_crossings(graph())
    assert not crossing, "\n".join(crossing)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("edges, circle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
])
def test_the_circle_finder_finds_circles(edges, circle):
    assert bool(cycles(edges)) is circle


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """A core module that imported a host would be reported (the check is not vacuous)."""
    known = set(module_files())
    fake = tmp_path / "config.py"
    fake.write_text("def f():\n    from .engines.vllm.host import VLLMHost\n")
    found = imports("metagen_plugins.config", fake, known)
    assert "metagen_plugins.engines.vllm.host" in found
    assert layer_of("metagen_plugins.engines.vllm.host") > layer_of("metagen_plugins.config")


def test_the_engine_check_sees_one_engine_importing_another(tmp_path):
    known = set(module_files())
    fake = tmp_path / "host.py"
    fake.write_text("from ..vllm.host import VLLMHost\nfrom .realisations import REALISATIONS\n")
    edges = {"metagen_plugins.engines.tgi.host": imports("metagen_plugins.engines.tgi.host", fake, known)}
    assert engine_crossings(edges) == ["metagen_plugins.engines.tgi.host imports metagen_plugins.engines.vllm.host"]


CONTRIB = ROOT / "contrib"
# What each contrib distribution may import of metagen_plugins, and why: a plugin uses the contract
# (metagen_hooks, always allowed) and the public kits only.
CONTRIB_MAY_IMPORT = {
    "metagen-openai": {"metagen_plugins.hostkit"},  # a host: the host kit
    # runs metagen's own components inside a vLLM server: validates and builds them there as an
    # in-process host does (metagen_plugins.validate / get_registry, components.built)
    "metagen-vllm": {"metagen_plugins", "metagen_plugins.components"},
    "metagen-embeddings": set(),
    "metagen-sacrebleu": set(),
}


def contrib_imports(distribution: Path) -> set[str]:
    """The metagen_plugins modules (or packages) the distribution's code imports, tests aside."""
    found = set()
    for path in distribution.rglob("*.py"):
        if "tests" in path.relative_to(distribution).parts:
            continue
        for node in ast.walk(_parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found |= {n for n in names if n == "metagen_plugins" or n.startswith("metagen_plugins.")}
    return found


@pytest.mark.parametrize("distribution", sorted(p.name for p in CONTRIB.iterdir() if (p / "pyproject.toml").exists()))
def test_contrib_plugins_import_only_the_contract_and_the_kits(distribution):
    assert distribution in CONTRIB_MAY_IMPORT, f"place contrib/{distribution} in CONTRIB_MAY_IMPORT"
    allowed = CONTRIB_MAY_IMPORT[distribution]
    outside = sorted(m for m in contrib_imports(CONTRIB / distribution)
                     if not any(m == a or m.startswith(a + ".") for a in allowed))
    assert not outside, f"contrib/{distribution} imports {outside}; a plugin imports metagen_hooks and the kits"


def test_the_contrib_check_sees_an_internal_import(tmp_path):
    (tmp_path / "plugin.py").write_text("from metagen_plugins.hosts.remote import RemoteHost\n")
    assert contrib_imports(tmp_path) == {"metagen_plugins.hosts.remote"}
