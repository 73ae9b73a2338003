"""The built-in plugin's plan: one package (or module) per kind of component
(docs/architecture.md). The old paths of its modules that moved are tested with the others'
(tests/test_moved.py)."""

import metagen_plugins

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
