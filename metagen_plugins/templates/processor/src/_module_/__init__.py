"""@dist@: a metagen plugin registering the ``@name@`` logits processor."""

from __future__ import annotations

from metagen_hooks import hookimpl


class TokenPenalty:
    """Subtract ``penalty`` from the logits of ``token_ids`` at every step: a soft ban (a large
    penalty is a hard one). Called like a transformers ``LogitsProcessor``:
    ``(input_ids [batch, seq], scores [batch, vocab]) -> scores``."""

    def __init__(self, token_ids: list[int], penalty: float = 5.0) -> None:
        if not token_ids or any(t < 0 for t in token_ids):
            raise ValueError(f"token_ids must list one or more token ids (>= 0), got {token_ids!r}")
        if penalty < 0:
            raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")
        self.token_ids, self.penalty = list(token_ids), float(penalty)

    def __call__(self, input_ids, scores):
        vocab = scores.shape[-1]
        if max(self.token_ids) >= vocab:
            raise ValueError(f"@name@: token id {max(self.token_ids)} is outside this model's vocabulary "
                             f"({vocab} tokens)")
        scores = scores.clone()  # a new tensor: the caller's scores stay as they were
        scores[:, self.token_ids] -= self.penalty
        return scores


def vllm_request(token_ids: list[int], penalty: float = 5.0) -> dict:
    """The same processor on a vLLM server: its ``logit_bias`` request parameter (vLLM clamps a
    bias to +-100)."""
    return {"logit_bias": {str(t): -float(penalty) for t in token_ids}}


@hookimpl
def register_logits_processors(register):
    # The factory's signature is the parameter schema metagen checks configurations against.
    # vllm= realises it on the vLLM host (and on OpenAI-compatible servers reading vLLM's keys);
    # without it, the processor runs on the transformers host only.
    register("@name@", TokenPenalty, vllm=vllm_request)
