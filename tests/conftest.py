"""Fixtures shared by every test folder. The tests are a package (``tests``, the repository root
on sys.path through pytest's ``pythonpath``): a test imports the stand-ins for outside services
from ``tests.fakes``, the fixture plugins' helper from ``tests.plugins``, another test module's
settings by its package path."""

import importlib
import textwrap

import pytest

import metagen_plugins
import metagen_plugins.registry


@pytest.fixture(autouse=True)
def clean_plugin_env(monkeypatch):
    monkeypatch.delenv("METAGEN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("METAGEN_STRICT_PLUGINS", raising=False)
    yield
    metagen_plugins.registry._registry = None  # the shared registry: the next test loads its own


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a real plugin distribution (module + dist-info with an entry point) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(module: str, code: str, dist: str | None = None, version: str = "1.0",
                entry_name: str | None = None):
        dist = dist or f"metagen-{module.replace('_', '-')}"
        (site / f"{module}.py").write_text(textwrap.dedent(code))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[metagen]\n{entry_name or module} = {module}\n")
        importlib.invalidate_caches()
        return dist

    return install


@pytest.fixture
def registry():
    return lambda **kw: metagen_plugins.get_registry(reload=True, **kw)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from metagen_plugins.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)
