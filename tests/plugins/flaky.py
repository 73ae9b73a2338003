"""A fixture plugin: a logits processor that raises for a batch of three rows
(tests/engines/transformers/test_batching.py)."""

from metagen_hooks import hookimpl


class Flaky:
    def __call__(self, input_ids, scores):
        if input_ids.shape[0] == 3:
            raise RuntimeError('flaky processor gave up')
        return scores


@hookimpl
def register_logits_processors(register):
    register('flaky', Flaky)
