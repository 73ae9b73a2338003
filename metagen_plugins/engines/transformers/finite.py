"""The check that stops generation, naming the component, when scores turn NaN or +inf or leave
no token to choose (instead of sampling from them or failing deep inside torch)."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LogitsProcessorList

from ...config import Config
from ...errors import HostError
from ...registry import Registry


class _Guard:
    """What metagen adds to a processor list around the configured components (not a component)."""


class _Raw(_Guard):
    """First in the list: keeps the scores as they arrive (the model's logits), computing nothing."""

    scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores = scores
        return scores


class _FiniteCheck(_Guard):
    """Last in the list: stops generation with an error naming the component when a processor's
    output (or the model's logits) holds NaN or +inf, or leaves a row all -inf, instead of
    sampling from them. One check per step, fused: the sum of the rows' largest scores is finite
    (a NaN, a +inf and an all -inf row all make it NaN or infinite; NaN from the model runs
    through every processor). Only when it is not are the processors replayed on the step's
    logits, each checked, to find the culprit (or to find a finite sum's overflow harmless)."""

    def __init__(self, raw: _Raw, processors: list[tuple[Any, str, Any]]) -> None:
        self.raw, self.processors, self.step = raw, processors, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.step += 1
        if not math.isfinite(scores.amax(-1).sum().item()) and _problem(scores) is not None:
            self._blame(input_ids)
        return scores

    def _blame(self, input_ids: torch.LongTensor) -> None:
        """Replays the step from the model's logits, checking after each processor (their state
        no longer matters: generation stops here)."""
        scores = self.raw.scores
        what, info = ("the model's logits (before any processor, unless one wrote into them in place)",
                      None)
        problem = _problem(scores)
        for processor, label, entry in self.processors:
            if problem is not None:
                break
            scores = processor(input_ids, scores)
            what, info, problem = label, entry, _problem(scores)
        if problem is None:  # not reproduced: a processor drawing at random
            what = "one of " + ", ".join(label for _, label, _ in self.processors)
            problem, scores = "non-finite", None
        row = _first_bad_row(scores) if scores is not None else -1
        error = HostError(f"{what} produced {problem} scores at generation step {self.step} "
                          f"(row {row}); metagen does not sample from them. Fix the component, or "
                          f"remove it from the configuration")
        error.component = info
        raise error


def _problem(scores: torch.Tensor) -> str | None:
    if torch.isnan(scores).any():
        return "NaN"
    if torch.isposinf(scores).any():
        return "+inf"
    if torch.isneginf(scores).all(dim=-1).any():
        return "only -inf (every token banned) in a row"
    return None


def _first_bad_row(scores: torch.Tensor) -> int:
    bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
    return int(bad.nonzero()[0, 0]) if bad.any() else -1


def checked(processors, config: Config, registry: Registry) -> LogitsProcessorList:
    """The configured processors between two guards: the first remembers the model's logits,
    the last checks them and the result once per step (``_FiniteCheck``)."""
    raw = _Raw()
    named = []
    for index, (processor, entry) in enumerate(zip(processors, config.processors)):
        info = registry.get("logits_processors", entry["name"])
        named.append((processor, f"processors[{index}]: {info.label()}", info))
    return LogitsProcessorList([raw, *processors, _FiniteCheck(raw, named)])
