"""Simple arithmetic and word questions with known answers, generated from a seed.

They are easy enough that a 135M-parameter instruction model (SmolLM2-135M-Instruct, the
default model of ``metagen run``) gets some of them right, so greedy decoding and
self-consistency can be compared on it (``bench/smollm2.py``, ``metagen run --compare``)::

    What is 12 + 7? Answer with just the number.                                      -> 19
    Tom has 5 apples. He gets 3 more. How many apples does Tom have now? Answer ...   -> 8

Each question is one addition or subtraction of numbers from 1 to 20 (results >= 0).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SUFFIX = " Answer with just the number."
ANSWER_PATTERN = r"(-?\d[\d,]*(?:\.\d+)?)"
"""Any number; answer extraction keeps the last one in the text (``8 + 6 = 14`` -> 14)."""

_NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Emma", "Leo", "Zoe"]
_THINGS = ["apples", "pencils", "books", "marbles", "cookies", "stickers", "balloons", "cards"]


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str
    kind: str  # "add", "sub", "word-add" or "word-sub"

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer, "kind": self.kind}


def question(rng: random.Random) -> Question:
    kind = rng.choice(["add", "sub", "word-add", "word-sub"])
    a, b = rng.randint(2, 20), rng.randint(1, 20)
    if kind.endswith("sub") and b > a:
        a, b = b, a
    answer = a + b if kind.endswith("add") else a - b
    if kind == "add":
        text = f"What is {a} + {b}?"
    elif kind == "sub":
        text = f"What is {a} - {b}?"
    else:
        name, things = rng.choice(_NAMES), rng.choice(_THINGS)
        pronoun = "She" if name in ("Anna", "Mia", "Lily", "Emma", "Zoe") else "He"
        if kind == "word-add":
            text = f"{name} has {a} {things}. {pronoun} gets {b} more. How many {things} does {name} have now?"
        else:
            text = f"{name} has {a} {things}. {pronoun} gives away {b}. How many {things} does {name} have left?"
    return Question(text + SUFFIX, str(answer), kind)


def questions(count: int, seed: int = 0) -> list[Question]:
    """``count`` distinct questions, the same for the same ``seed``."""
    rng = random.Random(seed)
    out: list[Question] = []
    seen: set[str] = set()
    while len(out) < count:
        q = question(rng)
        if q.prompt not in seen:
            seen.add(q.prompt)
            out.append(q)
    return out


def write_jsonl(path: str | Path, items: list[Question]) -> None:
    """The prompts file ``metagen run --prompts`` reads: one ``{"prompt", "answer"}`` per line."""
    Path(path).write_text("".join(json.dumps(q.to_dict()) + "\n" for q in items), encoding="utf-8")


if __name__ == "__main__":  # python -m metagen_plugins.demo.questions 20 > questions.jsonl
    import sys

    for q in questions(int(sys.argv[1]) if len(sys.argv) > 1 else 20, int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        print(json.dumps(q.to_dict()))
