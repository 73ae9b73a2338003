"""The tasks of the Qwen2.5-Coder-0.5B-Instruct benchmarks (bench/qwen_coder.py).

- :func:`arithmetic`: harder arithmetic generated from a seed, so that a 0.5B instruction
  model's greedy accuracy sits between the floor and the ceiling (40-70% measured here):
  two-digit products, three-operand expressions, and two- and three-step word problems;
  every answer is a whole number.
- :func:`code_tasks`: small programming tasks written for this bench (``qwen_code_tasks.json``
  beside this file; no licensed offline set exists here): each has a function name, a
  docstring-style description, visible tests shown in the prompt and hidden tests that are not.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

ARITH_SUFFIX = " Be brief: write each calculation as an equation, then give the final answer as \\boxed{N}."
ANSWER_PATTERN = (r"(?s)\A(?:.*\\boxed\{\s*\$?(-?\d[\d,]*(?:\.\d+)?)|.*\\boxed\{()"
                  r"|.*(?:\A|[^\d,.])(-?\d[\d,]*(?:\.\d+)?))")
"""The final answer: the number in the last ``\\boxed{}`` holding one; in a reply with none, the
last number (a brief reply is often just ``80 * 19 = 1520``). Commas are dropped by extraction.
Written for RE2 (no lookaround): the first alternative that matches wins, and the empty group
of the second (a ``\\boxed{`` with no number) is no answer."""

KINDS = ("mul", "expr", "word2", "word3")
_NAMES = ["Maria", "Tom", "Aisha", "Ben", "Chen", "Lena", "Omar", "Sofia", "Raj", "Emma"]
_HE_SHE = {"Maria": "She", "Aisha": "She", "Lena": "She", "Sofia": "She", "Emma": "She"}


@dataclass(frozen=True)
class ArithQuestion:
    prompt: str
    answer: str
    kind: str  # one of KINDS


def arithmetic(count: int, seed: int = 0) -> list[ArithQuestion]:
    """``count`` distinct questions, kinds in turn (mul, expr, word2, word3, mul, ...), the same
    for the same ``seed``; every answer is a non-negative whole number."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    out: list[ArithQuestion] = []
    seen: set[str] = set()
    while len(out) < count:
        kind = KINDS[len(out) % len(KINDS)]
        question = _MAKERS[kind](rng)
        if question.prompt not in seen:
            seen.add(question.prompt)
            out.append(question)
    return out


def _mul(rng: random.Random) -> ArithQuestion:
    a, b = rng.randint(23, 98), rng.randint(13, 97)
    return ArithQuestion(f"What is {a} * {b}?" + ARITH_SUFFIX, str(a * b), "mul")


def _expr(rng: random.Random) -> ArithQuestion:
    a, b = rng.randint(23, 97), rng.randint(3, 9)
    if rng.random() < 0.5:
        c = rng.randint(12, a * b - 1)
        return ArithQuestion(f"What is {a} * {b} - {c}?" + ARITH_SUFFIX, str(a * b - c), "expr")
    c = rng.randint(101, 999)
    return ArithQuestion(f"What is {c} + {a} * {b}?" + ARITH_SUFFIX, str(c + a * b), "expr")


def _word2(rng: random.Random) -> ArithQuestion:
    name = rng.choice(_NAMES)
    pronoun = _HE_SHE.get(name, "He")
    boxes, price = rng.randint(12, 48), rng.randint(13, 59)
    cost = boxes * price
    paid = (cost // 100 + rng.randint(1, 3)) * 100
    text = (f"{name} buys {boxes} boxes of paint that cost {price} dollars each. {pronoun} pays with "
            f"{paid} dollars. How many dollars of change does {pronoun.lower()} get?")
    return ArithQuestion(text + ARITH_SUFFIX, str(paid - cost), "word2")


def _word3(rng: random.Random) -> ArithQuestion:
    name = rng.choice(_NAMES)
    pronoun = _HE_SHE.get(name, "He")
    rows, per_row = rng.randint(14, 38), rng.randint(16, 45)
    sold = rng.randint(101, rows * per_row // 2)
    share = rng.choice([3, 4, 5, 6])
    left = rows * per_row - sold
    left -= left % share  # a whole number per crate: the farmer sells the rest too
    sold = rows * per_row - left
    text = (f"{name} plants {rows} rows of {per_row} cabbages. {pronoun} sells {sold} cabbages at the market "
            f"and packs the rest equally into {share} crates. How many cabbages go into each crate?")
    return ArithQuestion(text + ARITH_SUFFIX, str(left // share), "word3")


_MAKERS = {"mul": _mul, "expr": _expr, "word2": _word2, "word3": _word3}


@dataclass(frozen=True)
class CodeTask:
    name: str  # the function the program must define
    description: str
    visible: list[str] = field(default_factory=list)  # assert lines shown in the prompt
    hidden: list[str] = field(default_factory=list)  # assert lines the prompt does not show

    @property
    def prompt(self) -> str:
        """The prompt: the description, the function to write and the visible tests."""
        tests = "\n".join(self.visible)
        return (f"Write a Python function `{self.name}`. {self.description}\n\n"
                f"Your code should pass these tests:\n{tests}\n\n"
                "Reply with the function in one ```python code block.")


CODE_TASKS_FILE = Path(__file__).resolve().parent / "qwen_code_tasks.json"


def code_tasks(path: Path = CODE_TASKS_FILE) -> list[CodeTask]:
    """The code tasks in ``path`` (a JSON list of {name, description, visible, hidden}), checked:
    distinct names, every test an ``assert`` that calls the task's function, no hidden test that
    is also visible."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    tasks, names = [], set()
    for number, row in enumerate(rows):
        task = CodeTask(row["name"], row["description"], list(row["visible"]), list(row["hidden"]))
        where = f"{path}: task {number} ({task.name!r})"
        if task.name in names:
            raise ValueError(f"{where}: the name is used twice")
        names.add(task.name)
        if not task.visible or not task.hidden:
            raise ValueError(f"{where}: needs visible and hidden tests")
        for test in task.visible + task.hidden:
            if not test.startswith("assert ") or f"{task.name}(" not in test:
                raise ValueError(f"{where}: {test!r} is not an assert that calls {task.name}()")
        if set(task.visible) & set(task.hidden):
            raise ValueError(f"{where}: a hidden test is also visible")
        tasks.append(task)
    return tasks
