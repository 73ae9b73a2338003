"""Final-answer extraction and comparison, shared by voting strategies and evaluation.

Patterns run in linear time (:mod:`metagen_hooks.patterns`): an ``answer_pattern`` may come
from a request to ``metagen serve``."""

from __future__ import annotations

import re

from . import patterns

DEFAULT_PATTERN = r"####\s*(-?[\d,]*\.?\d+)"
"""GSM8K's answer format (``#### 42``); the first group is the answer."""


def extract(text: str, pattern: str = DEFAULT_PATTERN) -> str | None:
    """The last answer ``pattern`` finds in ``text`` (its first group that matched, else the whole
    match), normalised (no thousands separators, no trailing ``.0``), or None."""
    matches = list(patterns.compile(pattern, "answer_pattern").finditer(text))
    if not matches:
        return None
    match = matches[-1]
    groups = [g for g in match.groups() if g is not None]
    answer = (groups[0] if groups else match.group(0)).strip().replace(",", "")
    if re.fullmatch(r"-?\d+\.0+", answer):
        answer = answer.split(".")[0]
    return answer or None  # an empty group matched: no answer


def agree(hypothesis: str, reference: str, pattern: str | None = DEFAULT_PATTERN) -> float:
    """1.0 when two outputs give the same answer (extracted with ``pattern``; with ``None``, the
    same stripped text), else 0.0: exact match as a pairwise utility (MBR with it is majority
    voting)."""
    a, b = (extract(hypothesis, pattern), extract(reference, pattern)) if pattern else \
        (hypothesis.strip(), reference.strip())
    return float(a is not None and a == b)


def checked_pattern(pattern: str) -> str:
    """``pattern`` itself, once it is known to compile (for a component's constructor, so that a
    bad ``answer_pattern`` fails when the configuration is checked, not in the middle of a run)."""
    patterns.compile(pattern, "answer_pattern")
    return pattern
