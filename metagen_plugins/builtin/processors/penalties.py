"""OpenAI-style frequency and presence penalties over the generated tokens (not the prompt).

transformers has no such processor (its repetition penalty is multiplicative and counts the
prompt), so these are metagen's own; vLLM and TGI realise them natively.
"""

from __future__ import annotations


class CountPenalty:
    """Subtract ``frequency * count + presence * (count > 0)`` from each token's logit, where
    ``count`` is how often the row has generated that token so far."""

    def __init__(self, frequency: float = 0.0, presence: float = 0.0) -> None:
        self.frequency, self.presence = frequency, presence
        self.prompt_length: int | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.prompt_length is None:  # the first call sees the prompt only
            self.prompt_length = input_ids.shape[1]
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def frequency_penalty(penalty: float):
    """Penalise each token in proportion to how often it was already generated."""
    if not -2.0 <= penalty <= 2.0:
        raise ValueError(f"penalty must be in [-2, 2] (OpenAI's range), got {penalty}")
    return CountPenalty(frequency=penalty)


def presence_penalty(penalty: float):
    """Penalise every token that was already generated, once."""
    if not -2.0 <= penalty <= 2.0:
        raise ValueError(f"penalty must be in [-2, 2] (OpenAI's range), got {penalty}")
    return CountPenalty(presence=penalty)


def register_all(register) -> None:
    register("frequency_penalty", frequency_penalty, caller=("penalty",))
    register("presence_penalty", presence_penalty, caller=("penalty",))
