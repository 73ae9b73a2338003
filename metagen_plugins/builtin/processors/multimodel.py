"""Logits processors that combine the host model's scores with other models' (same tokenizer).

- Contrastive decoding (Li et al., 2023, "Contrastive Decoding: Open-ended Text Generation as
  Optimization"; the weighted form of O'Brien & Lewis, 2023): prefer tokens the expert likes and
  a weaker amateur does not, among the expert's plausible tokens.
- DExperts (Liu et al., 2021, "DExperts: Decoding-Time Controlled Text Generation with Experts
  and Anti-Experts") and proxy tuning (Liu et al., 2024, "Tuning Language Models by Proxy"):
  add the difference of an expert's and an anti-expert's logits to the base model's.

The other models are loaded from local directories and run incrementally beside generation,
each with its own KV cache, over exactly the rows ``generate()`` decodes.
"""

from __future__ import annotations


class SideModel:
    """Another causal LM fed the same token rows as the host; returns its next-token logits."""

    def __init__(self, model, pad_token_id: int | None) -> None:
        self.model = model
        self.pad = pad_token_id
        self.cache = None
        self.mask = None
        self.seen = 0

    def next_logits(self, input_ids):
        import torch

        with torch.no_grad():
            if self.cache is None or input_ids.shape[1] != self.seen + 1 or input_ids.shape[0] != self.mask.shape[0]:
                # (Re)start: mask the rows' left padding, then one pass over everything.
                real = input_ids != self.pad if self.pad is not None else torch.ones_like(input_ids, dtype=torch.bool)
                self.mask = (real.long().cumsum(-1) > 0).long()
                positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model(input_ids, attention_mask=self.mask, position_ids=positions, use_cache=True)
            else:
                self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
                positions = self.mask.sum(-1, keepdim=True) - 1
                out = self.model(input_ids[:, -1:], attention_mask=self.mask, position_ids=positions,
                                 cache=self.cache, use_cache=True)
        self.cache = out.cache
        self.seen = input_ids.shape[1]
        return out.logits[:, -1, :].float()


def _side(path: str, tokenizer, role: str) -> SideModel:
    from ...models import load_model_cached

    model = load_model_cached(path, what=f"the {role}")
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = model.generation_config.pad_token_id
    return SideModel(model, pad)


def _aligned(scores, other, role: str):
    if other.shape[-1] != scores.shape[-1]:
        raise ValueError(f"the {role} has a vocabulary of {other.shape[-1]} tokens but the host model "
                         f"{scores.shape[-1]}: the models must share one tokenizer")
    return other


class ContrastiveDecoding:
    """Score ``(1 + beta) * log p_expert - beta * log p_amateur`` over the plausible tokens
    ``{t : p_expert(t) >= alpha * max p_expert}``; all other tokens get ``-inf``.

    ``alpha`` is Li et al.'s plausibility threshold; ``beta`` the amateur's weight. With
    ``beta = 0`` and ``alpha = 0`` this is exactly the expert.
    """

    def __init__(self, amateur: str, alpha: float = 0.1, beta: float = 0.5, tokenizer=None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (plausibility threshold) must be in [0, 1], got {alpha}")
        if beta < 0:
            raise ValueError(f"beta (amateur weight) must be >= 0, got {beta}")
        self.alpha, self.beta = alpha, beta
        self.amateur = _side(amateur, tokenizer, "amateur")

    def __call__(self, input_ids, scores):
        import math

        expert = scores.float().log_softmax(-1)
        amateur = _aligned(scores, self.amateur.next_logits(input_ids), "amateur").log_softmax(-1)
        contrast = (1 + self.beta) * expert - self.beta * amateur
        if self.alpha > 0:
            cutoff = expert.max(-1, keepdim=True).values + math.log(self.alpha)
            contrast = contrast.masked_fill(expert < cutoff, float("-inf"))
        return contrast.to(scores.dtype)


class LogitArithmetic:
    """``scores + sum_i weights[i] * logits_i``: the host's logits plus weighted logits of other
    models on the same prefix."""

    def __init__(self, models: list[str], weights: list[float], tokenizer=None) -> None:
        if len(models) != len(weights) or not models:
            raise ValueError(f"models and weights must be non-empty lists of equal length, got "
                             f"{len(models)} models and {len(weights)} weights")
        self.weights = list(weights)
        self.sides = [_side(path, tokenizer, f"model {path!r}") for path in models]

    def __call__(self, input_ids, scores):
        out = scores.float()
        for weight, side in zip(self.weights, self.sides):
            out = out + weight * _aligned(scores, side.next_logits(input_ids), "side model")
        return out.to(scores.dtype)


def dexperts(expert: str, antiexpert: str, alpha: float = 2.0, tokenizer=None):
    """DExperts: ``base + alpha * (expert - antiexpert)`` logits (Liu et al., 2021)."""
    return LogitArithmetic([expert, antiexpert], [alpha, -alpha], tokenizer=tokenizer)


def proxy_tuning(expert: str, antiexpert: str, alpha: float = 1.0, tokenizer=None):
    """Proxy tuning: ``base + alpha * (tuned small - untuned small)`` logits (Liu et al., 2024)."""
    return LogitArithmetic([expert, antiexpert], [alpha, -alpha], tokenizer=tokenizer)


def register_all(register) -> None:
    register("contrastive", ContrastiveDecoding, caller=("alpha", "beta"))
    register("logit_arithmetic", LogitArithmetic, caller=("weights",))
    register("dexperts", dexperts, caller=("alpha",))
    register("proxy_tuning", proxy_tuning, caller=("alpha",))
