"""The hook specification's contract: light to import, every hook documented and tested."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import metagen_hooks
from metagen_hooks import hookspecs
from fixture_plugins import plugins_dir

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def test_hook_names_are_the_public_contract():
    assert sorted(HOOKS) == sorted(metagen_hooks.HOOKS)
    assert set(f"register_{k}" for k in metagen_hooks.KINDS) | {"register_hosts", "register_commands"} == set(HOOKS)
    assert metagen_hooks.PROJECT_NAME == metagen_hooks.ENTRY_POINT_GROUP == "metagen"
    for name in HOOKS:
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == ["register"]


def test_importing_metagen_hooks_does_not_import_torch():
    code = "import sys, metagen_hooks, metagen_hooks.hookspecs; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_every_hook_is_documented_in_docs():
    """datasette's pattern: each hookspec has its own section in docs/hooks.md."""
    docs = (ROOT / "docs" / "hooks.md").read_text()
    headings = set(re.findall(r"^## (\w+)\(register\)", docs, flags=re.M))
    assert set(HOOKS) <= headings, f"undocumented hooks: {set(HOOKS) - headings}"


def test_every_hook_is_exercised_by_a_test():
    # the tests and their fixture plugins (tests/plugins/)
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name)
    untested = [h for h in HOOKS if f"def {h}(register)" not in tests]
    assert not untested, f"hooks no test implements: {untested}"


def _documented_signature(docs: str, callback: str) -> list[str]:
    """The parameter names of the ``register(...)`` signature documented in a python block."""
    for block in re.findall(r"```python\n(.*?)```", docs, flags=re.S):
        match = re.match(rf"\s*{callback}\((.*?)\)\s*->\s*None", block, flags=re.S)
        if match:
            import ast

            args = ast.parse(f"def f({match.group(1)}): pass").body[0].args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs] + ([args.kwarg] if args.kwarg else [])
            return [a.arg for a in every]
    raise AssertionError(f"docs/hooks.md documents no {callback}(...) -> None signature")


def test_documented_register_parameters_match_the_signatures(tmp_path):
    """Each hook's documented ``register`` parameters are the protocol's, and the protocol's are
    those of the callback metagen really passes (captured from a plugin's hook)."""
    import metagen_plugins

    docs = (ROOT / "docs" / "hooks.md").read_text()
    sections = re.split(r"^## ", docs, flags=re.M)
    host_section = next(s for s in sections if s.startswith("register_hosts(register)"))
    command_section = next(s for s in sections if s.startswith("register_commands(register)"))
    register_section = next(s for s in sections if s.startswith("The `register` callback"))
    documented = {"register_hosts": _documented_signature(host_section, "register"),
                  "register_commands": _documented_signature(command_section, "register"),
                  "components": _documented_signature(register_section, "register")}
    declared = {"register_hosts": list(inspect.signature(hookspecs.RegisterHost.__call__).parameters)[1:],
                "register_commands": list(inspect.signature(hookspecs.RegisterCommand.__call__).parameters)[1:],
                "components": list(inspect.signature(hookspecs.Register.__call__).parameters)[1:]}
    assert documented == declared
    registry = metagen_plugins.get_registry(plugins_dir=plugins_dir(tmp_path, "spy"))
    spy = registry.manager.pm.get_plugin("spy")
    actual = {k: list(inspect.signature(v).parameters) for k, v in spy.seen.items()}
    assert actual == declared
    for name in HOOKS:  # and every hook takes the one documented argument
        assert f"## {name}(register)" in docs
