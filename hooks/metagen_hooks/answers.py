"""Final-answer extraction and comparison, shared by voting strategies and evaluation."""

from __future__ import annotations

import re

DEFAULT_PATTERN = r"####\s*(-?[\d,]*\.?\d+)"
"""GSM8K's answer format (``#### 42``); the first group is the answer."""


def extract(text: str, pattern: str = DEFAULT_PATTERN) -> str | None:
    """The last answer ``pattern`` finds in ``text``, normalised (no thousands separators, no
    trailing ``.0``), or None."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    match = matches[-1]
    answer = (match.group(1) if match.groups() else match.group(0)).strip().replace(",", "")
    if re.fullmatch(r"-?\d+\.0+", answer):
        answer = answer.split(".")[0]
    return answer


def agree(hypothesis: str, reference: str, pattern: str | None = DEFAULT_PATTERN) -> float:
    """1.0 when two outputs give the same answer (extracted with ``pattern``; with ``None``, the
    same stripped text), else 0.0: exact match as a pairwise utility (MBR with it is majority
    voting)."""
    a, b = (extract(hypothesis, pattern), extract(reference, pattern)) if pattern else \
        (hypothesis.strip(), reference.strip())
    return float(a is not None and a == b)
