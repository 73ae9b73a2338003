"""Multi-step integer arithmetic with chain-of-thought, and its exact checkers.

    Q: 37+48-19=? A: 37+48=85. 85-19=66. #### 66

One to three operations of ``+`` or ``-`` on operands 1-99, every intermediate result >= 0;
steps end with ". " (the step delimiter of step-level search). ``check_steps`` is an exact
process verifier (a tool as verifier), ``extract_answer`` the outcome.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

CHARACTERS = "0123456789+-=?.:# QA"
STEP_DELIMITER = ". "
ANSWER = re.compile(r"####\s*(-?\d+)")
_STEP = re.compile(r"^(\d+)([+-])(\d+)=(-?\d+)$")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def question(self) -> str:
        expression = str(self.operands[0]) + "".join(
            op + str(x) for op, x in zip(self.operators, self.operands[1:]))
        return f"{expression}=?"

    @property
    def prompt(self) -> str:
        return f"Q: {self.question} A:"

    def steps(self) -> list[str]:
        value, out = self.operands[0], []
        for op, x in zip(self.operators, self.operands[1:]):
            result = value + x if op == "+" else value - x
            out.append(f"{value}{op}{x}={result}")
            value = result
        return out

    @property
    def answer(self) -> int:
        value = self.operands[0]
        for op, x in zip(self.operators, self.operands[1:]):
            value = value + x if op == "+" else value - x
        return value

    @property
    def solution(self) -> str:
        """The reference continuation of :attr:`prompt` (without EOS)."""
        return " " + "".join(s + STEP_DELIMITER for s in self.steps()) + f"#### {self.answer}"


def random_problem(rng: random.Random, max_ops: int = 3) -> Problem:
    ops = rng.randint(1, max_ops)
    operands = [rng.randint(1, 99)]
    operators = []
    value = operands[0]
    for _ in range(ops):
        x = rng.randint(1, 99)
        op = rng.choice("+-") if x <= value else "+"
        operands.append(x)
        operators.append(op)
        value = value + x if op == "+" else value - x
    return Problem(tuple(operands), tuple(operators))


def problems(count: int, seed: int, exclude: set[str] | frozenset = frozenset(),
             max_ops: int = 3) -> list[Problem]:
    """``count`` distinct problems from ``seed``, none of whose questions is in ``exclude``."""
    rng = random.Random(seed)
    seen: set[str] = set(exclude)
    out: list[Problem] = []
    while len(out) < count:
        p = random_problem(rng, max_ops)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def parse_question(prompt: str) -> Problem | None:
    match = re.search(r"Q:\s*(\d+(?:[+-]\d+)*)=\?", prompt)
    if not match:
        return None
    tokens = re.findall(r"\d+|[+-]", match.group(1))
    return Problem(tuple(int(t) for t in tokens[0::2]), tuple(tokens[1::2]))


def extract_answer(text: str) -> str | None:
    """The final answer after ``####``, or None when the text has none."""
    match = ANSWER.search(text)
    return match.group(1) if match else None


def split_steps(text: str) -> list[str]:
    """The reasoning steps of a continuation (text before ``####`` split at the delimiter)."""
    body = text.split("####")[0]
    return [s.strip() for s in body.split(STEP_DELIMITER.strip()) if s.strip()]


def check_steps(prompt: str, text: str) -> list[bool]:
    """Per step: is it the right next operation of the question with the right result?

    A step is right when it applies the question's next operator and operand to the previous
    step's result (the first operand for the first step) and computes it correctly.
    """
    problem = parse_question(prompt)
    if problem is None:
        return [False for _ in split_steps(text)]
    verdicts, value = [], problem.operands[0]
    expected = list(zip(problem.operators, problem.operands[1:]))
    for i, step in enumerate(split_steps(text)):
        match = _STEP.match(step.replace(" ", ""))
        if not match or i >= len(expected):
            verdicts.append(False)
            continue
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        good = (left == value and (op, right) == expected[i]
                and result == (left + right if op == "+" else left - right))
        verdicts.append(good)
        value = result  # the next step builds on what was written, right or wrong
    return verdicts


def is_correct(prompt: str, text: str) -> bool:
    problem = parse_question(prompt)
    answer = extract_answer(text)
    return problem is not None and answer is not None and int(answer) == problem.answer
