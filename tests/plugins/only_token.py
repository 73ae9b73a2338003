"""A fixture plugin: a grammar in miniature, registered as a hard constraint and (to show the
other order) not."""

from metagen_hooks import hookimpl


class OnlyToken:
    """A grammar in miniature: every token but one is banned."""

    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        keep = scores[:, self.token_id].clone()
        scores[:] = float("-inf")
        scores[:, self.token_id] = keep
        return scores


@hookimpl
def register_logits_processors(register):
    register("only_token", OnlyToken, constraint=True)
    register("only_token_unmarked", OnlyToken)
