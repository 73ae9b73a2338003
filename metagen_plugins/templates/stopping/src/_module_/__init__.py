"""@dist@: a metagen plugin registering the ``@name@`` stopping criterion."""

from __future__ import annotations

from metagen_hooks import hookimpl


class StopOnToken:
    """Stop a sequence once it generates ``token_id`` (e.g. a newline's id: stop after one line).
    Called like a transformers ``StoppingCriteria``: ``(input_ids [batch, seq], scores) ->
    bool [batch]``, True for each row that is done; the other rows go on."""

    def __init__(self, token_id: int) -> None:
        if token_id < 0:
            raise ValueError(f"token_id must be a token id (>= 0), got {token_id}")
        self.token_id = token_id

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token_id


def vllm_request(token_id: int) -> dict:
    """The same criterion on a vLLM server: its ``stop_token_ids`` request parameter."""
    return {"stop_token_ids": [token_id]}


@hookimpl
def register_stopping_criteria(register):
    # The factory's signature is the parameter schema metagen checks configurations against.
    # vllm= realises it on the vLLM host; without it, it runs on the transformers host only.
    register("@name@", StopOnToken, vllm=vllm_request)
