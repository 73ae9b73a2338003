"""The hook specification's contract: light to import, every hook documented and tested."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import metagen_hooks
from metagen_hooks import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def test_hook_names_are_the_public_contract():
    assert sorted(HOOKS) == sorted(metagen_hooks.HOOKS)
    assert set(f"register_{k}" for k in metagen_hooks.KINDS) | {"register_hosts"} == set(HOOKS)
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
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    untested = [h for h in HOOKS if f"def {h}(register)" not in tests]
    assert not untested, f"hooks no test implements: {untested}"
