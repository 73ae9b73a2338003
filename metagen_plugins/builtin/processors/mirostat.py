"""Mirostat 2.0 (Basu et al., 2021, "Mirostat: A Neural Text Decoding Algorithm that Directly
Controls Perplexity"): a feedback loop that keeps the surprise of sampled tokens near a target.

Each step keeps only tokens whose surprise ``-log2 p`` is at most ``mu``; after the token is
sampled, ``mu`` moves by ``learning_rate x (target - observed surprise)``. A logits processor sees
the sampled token on its next call (the last column of ``input_ids``), so the update for step t
happens at the start of step t+1.
"""

from __future__ import annotations

import math


class Mirostat:
    """Mirostat 2.0: keep tokens with surprise <= mu (bits); adapt mu toward ``target``.

    ``surprises`` records the mean observed surprise of each step (renormalised distribution),
    ``mu`` the per-row thresholds.
    """

    def __init__(self, target: float = 3.0, learning_rate: float = 0.1) -> None:
        if target <= 0:
            raise ValueError(f"target surprise must be > 0 bits, got {target}")
        if not 0 < learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
        self.target, self.learning_rate = target, learning_rate
        self.mu = None
        self.previous = None  # log2 of the renormalised distribution we returned last step
        self.surprises: list[float] = []

    def __call__(self, input_ids, scores):
        import torch

        batch = scores.shape[0]
        if self.mu is None or self.mu.shape[0] != batch:
            self.mu = torch.full((batch,), 2.0 * self.target, dtype=torch.float32, device=scores.device)
        elif self.previous is not None:
            sampled = input_ids[:, -1:]
            observed = -self.previous.gather(1, sampled).squeeze(1)
            self.surprises.append(observed.mean().item())
            self.mu -= self.learning_rate * (observed - self.target)
        log2p = scores.float().log_softmax(-1) / math.log(2)
        keep = -log2p <= self.mu[:, None]
        keep.scatter_(1, log2p.argmax(-1, keepdim=True), True)  # always keep the top token
        filtered = scores.masked_fill(~keep, float("-inf"))
        self.previous = filtered.float().log_softmax(-1) / math.log(2)
        return filtered


def register_all(register) -> None:
    register("mirostat", Mirostat, caller=("target", "learning_rate"), sampling=True)
