"""A fixture plugin: a logits processor that raises at every step (tests/cli/test_cli_run.py)."""

from metagen_hooks import hookimpl


class Boom:
    def __call__(self, input_ids, scores):
        raise RuntimeError('boom at step %d' % input_ids.shape[1])


@hookimpl
def register_logits_processors(register):
    register('boom', Boom)
