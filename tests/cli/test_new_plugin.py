"""`metagen new-plugin NAME` writes a distribution that installs, passes its own tests and shows
up in `metagen plugins list`.

It is installed into a throwaway virtual environment layered over this one (a .pth that adds
this environment's site-packages), so the shared environment never sees it.
"""

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from metagen_plugins.errors import ConfigError
from metagen_plugins.templates import write

BIN = Path(sys.executable).parent / "metagen"


def run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METAGEN_DISABLE_PLUGINS")}
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_cli_writes_the_distribution(tmp_path):
    out = run(BIN, "new-plugin", "keyword-check", "--dir", tmp_path).stdout
    root = tmp_path / "metagen-keyword-check"
    assert f"wrote {root}" in out and "pip install -e" in out
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "metagen-keyword-check"
    assert meta["project"]["entry-points"]["metagen"] == {"keyword_check": "metagen_keyword_check"}
    assert meta["project"]["dependencies"] == ["metagen-hooks>=0.1,<0.2"]
    code = (root / "src" / "metagen_keyword_check" / "__init__.py").read_text()
    assert "@hookimpl" in code and 'register("keyword_check", KeywordScorer)' in code
    assert (root / "tests" / "test_metagen_keyword_check.py").exists() and (root / "README.md").exists()
    assert not list(root.rglob("*@*")) and "@name@" not in code


def test_bad_names_and_existing_directories(tmp_path):
    for bad in ("1abc", "a b", "class", ""):
        with pytest.raises(ConfigError, match="must start with a letter"):
            write(bad, tmp_path)
    write("once", tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        write("once", tmp_path)


def test_installs_passes_its_own_tests_and_is_listed(tmp_path):
    root = write("shout", tmp_path)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = sysconfig.get_paths()["purelib"]
    (site / "_metagen_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")

    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", root)
    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=root).stdout
    assert "3 passed" in tests
    listed = json.loads(run(python, "-m", "metagen_plugins.cli", "plugins", "list", "--json").stdout)
    record = next(r for r in listed if r["name"] == "shout")
    assert record["status"] == "loaded" and record["distribution"] == "metagen-shout"
    assert record["components"] == {"scorers": ["shout"]}
    # ... and the shared environment does not see it.
    assert "shout" not in run(BIN, "plugins", "list").stdout.split()
