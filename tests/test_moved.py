"""Modules that moved stay importable under their old paths (metagen_plugins.moved.MOVED), as
the very module where they are now; the errors a host raises are the contract's classes under
their old names too."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from metagen_plugins.moved import MOVED


@pytest.mark.parametrize("old, new", sorted((o, n) for o, n in MOVED.items() if n is not None))
def test_an_old_path_imports_the_module_where_it_is_now(old, new):
    module = importlib.import_module(old)
    assert module is importlib.import_module(new) and sys.modules[old] is module
    assert module.__name__ == new and module.__spec__.name == new  # its own identity, not the old name's
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is module  # `from parent import leaf` works


FRESH = {
    "hostkit": ("import metagen_plugins.hosts.remote\n"
                "from metagen_plugins.hosts.completions import CompletionsGenerator\n"
                "from metagen_plugins import retrying\n"
                "from metagen_plugins.hostkit import CompletionsGenerator as kit, RemoteHost\n"
                "assert CompletionsGenerator is kit and metagen_plugins.hosts.remote.RemoteHost is RemoteHost\n"
                "assert retrying.__name__ == 'metagen_plugins.hostkit.retrying'\n"
                "import sys; assert 'httpx2' not in sys.modules, 'the kit imported its HTTP client'\n"),
    "engine": ("from metagen_plugins.hosts.transformers import TransformersHost, generate_kwargs, cache_kwargs\n"
               "from metagen_plugins.hosts.batching import Engine, Request, request_generator\n"
               "from metagen_plugins.hosts.shared_prefix import SharedPrefixLayer, decoding, shared_cache\n"
               "from metagen_plugins.hosts.prefix_cache import PrefixCache\n"
               "from metagen_plugins.hosts import transformers\n"
               "import metagen_plugins.engines.transformers.host as new\n"
               "assert transformers is new and TransformersHost is new.TransformersHost\n"),
    "serving engines": ("from metagen_plugins.deploy import vllm\n"
                        "from metagen_plugins.deploy.tgi import launcher_args\n"
                        "from metagen_plugins.hosts.vllm import VLLMHost, server_side\n"
                        "import metagen_plugins.engines.vllm.deploy as deploy, metagen_plugins.engines.tgi.deploy as tgi\n"
                        "assert vllm is deploy and launcher_args is tgi.launcher_args\n"),
}


@pytest.mark.parametrize("moved", sorted(FRESH))
def test_old_paths_work_in_a_fresh_process_in_every_import_form(moved):
    """Before anything imported the new modules: ``import a.b.c``, ``from a.b.c import X`` and
    ``from a.b import c`` all give the new module's objects."""
    done = subprocess.run([sys.executable, "-c", FRESH[moved]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_unknown_old_path_still_fails_as_before():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("metagen_plugins.hosts.no_such_module")


def test_the_errors_are_the_contracts_classes_under_their_old_names():
    import metagen_hooks
    import metagen_plugins
    from metagen_plugins import errors

    for name in ("MetagenError", "ConfigError", "PluginError", "HostError"):
        assert getattr(errors, name) is getattr(metagen_hooks, name) is getattr(metagen_hooks.errors, name)
    assert metagen_plugins.HostError is metagen_hooks.HostError
    assert issubclass(metagen_hooks.ConfigError, ValueError)
