"""A fixture plugin that registers a built-in component's name, ``top_p`` (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_logits_processors(register):
    register("top_p", lambda top_p: None)
