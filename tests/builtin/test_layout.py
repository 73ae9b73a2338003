"""The built-in plugin's plan: one package (or module) per kind of component, and the import
paths of the modules that moved (docs/architecture.md) still work for outside code."""

import importlib

import pytest

import metagen_plugins
from metagen_plugins import builtin

ROOMS = {"logits_processors": "metagen_plugins.builtin.processors.",
         "stopping_criteria": "metagen_plugins.builtin.stopping",
         "scorers": "metagen_plugins.builtin.scorers.",
         "strategies": "metagen_plugins.builtin.strategies."}
# Defined in the core because a host shares it (the transformers host's ``stop=``), registered by
# builtin/stopping.py.
SHARED = {"stop_strings": "metagen_plugins.text_stop"}


def test_every_builtin_component_lives_in_the_room_of_its_kind():
    registry = metagen_plugins.get_registry()
    misplaced, seen = [], 0
    for kind, components in registry.components.items():
        for info in components.values():
            if info.plugin != "metagen_plugins.builtin":
                continue
            seen += 1
            module = info.factory.__module__
            if not module.startswith(ROOMS[kind]) and SHARED.get(info.name) != module:
                misplaced.append(f"{kind} {info.name!r} is defined in {module}, not under {ROOMS[kind]}")
    assert seen > 40 and not misplaced, "\n".join(misplaced)


@pytest.mark.parametrize("old, new", sorted(builtin.MOVED.items()))
def test_a_moved_module_is_still_importable_by_its_old_path(old, new):
    by_path = importlib.import_module(f"metagen_plugins.builtin.{old}")
    assert by_path is importlib.import_module(new)
    assert getattr(builtin, old) is by_path  # ``from metagen_plugins.builtin import <old>`` too


def test_old_paths_give_the_same_objects():
    from metagen_plugins.builtin.answers import extract
    from metagen_plugins.builtin.run_state import Run
    from metagen_plugins.builtin.sandbox import check_program, run_python
    from metagen_plugins.builtin.selection import majority
    from metagen_hooks import answers, run, selection
    from metagen_plugins import sandbox

    assert (extract, Run, majority) == (answers.extract, run.Run, selection.majority)
    assert (check_program, run_python) == (sandbox.check_program, sandbox.run_python)
