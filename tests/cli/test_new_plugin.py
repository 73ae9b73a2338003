"""`metagen new-plugin NAME [--kind KIND]` writes a distribution that installs (`pip install -e`),
passes its own tests and shows up in `metagen plugins list`, for every kind.

The skeletons are installed into a throwaway virtual environment layered over this one (a .pth
that puts the metagen under test first, then adds this environment's site-packages), so the
shared environment never sees them.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import metagen_hooks
import metagen_plugins
from metagen_plugins.errors import ConfigError
from metagen_plugins.templates import KINDS, write

# The code under test (this checkout), put first in every subprocess.
SOURCES = [str(Path(metagen_plugins.__file__).resolve().parents[1]),
           str(Path(metagen_hooks.__file__).resolve().parents[1])]

# Each kind: the hook group metagen lists its component under, and how many tests its skeleton has
# (all of them must pass: none skipped, the metagen ones included).
EXPECTED = {"scorer": ("scorers", 3), "processor": ("logits_processors", 4),
            "stopping": ("stopping_criteria", 4), "strategy": ("strategies", 5), "host": ("hosts", 6)}


def run(*args, cwd=None, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METAGEN_DISABLE_PLUGINS")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_every_kind_has_a_template_and_an_expectation():
    assert set(KINDS) == set(EXPECTED) and "scorer" in KINDS


def test_cli_writes_the_distribution(tmp_path):
    out = run(sys.executable, "-m", "metagen_plugins.cli", "new-plugin", "keyword-check", "--dir", tmp_path,
              pythonpath=SOURCES).stdout
    root = tmp_path / "metagen-keyword-check"
    assert f"wrote {root}" in out and "pip install -e" in out
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "metagen-keyword-check"
    assert meta["project"]["entry-points"]["metagen"] == {"keyword_check": "metagen_keyword_check"}
    assert meta["project"]["dependencies"] == ["metagen-hooks>=0.1,<0.2"]
    assert meta["project"]["description"] == "A metagen plugin: the keyword_check scorer"
    code = (root / "src" / "metagen_keyword_check" / "__init__.py").read_text()
    assert "@hookimpl" in code and 'register("keyword_check", KeywordScorer, reads_logprobs=False)' in code
    assert (root / "tests" / "test_metagen_keyword_check.py").exists() and (root / "README.md").exists()
    assert not list(root.rglob("*@*")) and "@name@" not in code


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_registers_its_component_through_its_hook(tmp_path, kind):
    root = write("sample", tmp_path, kind)
    group, _ = EXPECTED[kind]
    hook = "register_hosts" if kind == "host" else f"register_{group}"
    code = (root / "src" / "metagen_sample" / "__init__.py").read_text()
    assert f"def {hook}(register):" in code and 'register("sample", ' in code
    assert "import metagen_plugins" not in code and "from metagen_plugins" not in code  # the contract only
    text = "".join(p.read_text() for p in root.rglob("*") if p.is_file())
    assert not re.search(r"@(name|module|dist|kind)@", text) and "_module_" not in text
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["description"].endswith(KINDS[kind])


def test_bad_names_kinds_and_existing_directories(tmp_path):
    for bad in ("1abc", "a b", "class", ""):
        with pytest.raises(ConfigError, match="must start with a letter"):
            write(bad, tmp_path)
    with pytest.raises(ConfigError, match="--kind 'sampler': choose one of scorer, processor"):
        write("ok", tmp_path, "sampler")
    write("once", tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        write("once", tmp_path)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A throwaway environment: the metagen under test, then this environment's packages."""
    venv = tmp_path_factory.mktemp("plugins") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = sysconfig.get_paths()["purelib"]
    (site / "_metagen_parent.pth").write_text("\n".join(SOURCES) + f"\nimport site; site.addsitedir({ours!r})\n")
    return python


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_installs_passes_its_own_tests_and_is_listed(tmp_path, venv, kind):
    name = f"my_{kind}"
    root = write(name, tmp_path, kind)
    run(sys.executable, "-m", "pip", "--python", venv, "install", "-q", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-e", root)
    tests = run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", cwd=root).stdout
    group, count = EXPECTED[kind]
    summary = tests.strip().splitlines()[-1]
    assert re.match(rf"{count} passed in ", summary), tests  # every test ran: none skipped, none failed
    listed = json.loads(run(venv, "-m", "metagen_plugins.cli", "plugins", "list", "--json").stdout)
    record = next(r for r in listed if r["name"] == name)
    assert record["status"] == "loaded" and record["distribution"] == f"metagen-{name.replace('_', '-')}"
    assert record["components"] == {group: [name]}
    # ... and this environment does not see it.
    assert name not in run(sys.executable, "-m", "metagen_plugins.cli", "plugins", "list",
                           pythonpath=SOURCES).stdout.split()
