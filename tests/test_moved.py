"""Modules that moved keep importing at their old paths (metagen_plugins.moved.MOVED): outside
plugins and scripts written against them go on working, with the same objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from metagen_plugins.moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]  # the module keeps its own identity


def test_names_import_from_the_old_paths_in_a_fresh_interpreter():
    code = ("from metagen_plugins.hosts.transformers import TransformersHost, generate_kwargs, cache_kwargs\n"
            "from metagen_plugins.hosts.batching import Engine, Request, request_generator\n"
            "from metagen_plugins.hosts.shared_prefix import SharedPrefixLayer, decoding, shared_cache, supported\n"
            "from metagen_plugins.hosts.prefix_cache import PrefixCache\n"
            "from metagen_plugins.hosts import transformers\n"
            "import metagen_plugins.engines.transformers.host as new\n"
            "assert transformers is new and TransformersHost is new.TransformersHost\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
