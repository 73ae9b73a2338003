"""A fixture plugin declaring ``reads_logprobs=`` where it cannot be (tests/test_reads_logprobs.py):
on a logits processor, which sees logits and never samples."""

from metagen_hooks import hookimpl


@hookimpl
def register_logits_processors(register):
    register("noop", lambda: (lambda ids, scores: scores), reads_logprobs=False)
