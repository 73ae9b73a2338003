"""A fixture plugin: a logits processor with no realisation on any server (tests/engines/test_tgi_host.py)."""

from metagen_hooks import hookimpl


class Halve:
    def __call__(self, input_ids, scores):
        return scores / 2


@hookimpl
def register_logits_processors(register):
    register("halve", Halve)
