"""Program-aided answering with self-consistency (PAL, Gao et al., 2023; program of thoughts,
Chen et al., 2023): ask the model for a Python program instead of an answer, run every sample
in the sandbox, and vote over what the programs print.

The interpreter does the arithmetic a small model gets wrong; voting over execution results
(rather than over the texts) merges programs that differ in form but compute the same value.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from metagen_hooks import Budget, Candidate, Generator, Result, Scorer, answers

from metagen_hooks.run import Run
from ...sandbox import Limits, extract_program, probe, run_python

TEMPLATE = ("Write a short Python program that computes the answer to the question below and prints "
            "only the answer.\n\nQuestion: {prompt}")
"""The default code prompt; ``{prompt}`` is the user's question."""


def printed_answer(stdout: str, pattern: str | None = None) -> str | None:
    """What a program answered: the last line it printed, a number normalised (``19.0`` -> ``19``,
    ``1,024`` -> ``1024``), or None when it printed nothing. With ``pattern``, the last match of
    that regular expression in everything it printed (its first group, if any), so that
    ``print(f"The answer is {x} books")`` and ``print(x)`` cast the same vote."""
    if pattern is not None:
        return answers.extract(stdout, pattern)
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    answer = lines[-1]
    number = re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", answer)
    if number:
        answer = answer.replace(",", "").lstrip("+")
        if "." in answer:
            value = float(answer)
            answer = str(int(value)) if value.is_integer() else repr(value)
    return answer


class ProgramAided:
    """PAL-style self-consistency (registered as ``program_aided``): ``n`` programs sampled from
    ``template`` (``{prompt}`` = the question), each run in the sandbox (``isolation`` "full" =
    namespaces, needs root; "limits" = resource limits only), and the printed answer with the
    most votes wins (ties: the answer printed first). A program's answer is the last line it
    printed, or, with ``answer_pattern`` (a regular expression), the last match of the pattern in
    its output: small models print a sentence around the number more often than the number
    alone. The chosen candidate's text is
    ``answer_format`` filled with that answer; its ``meta`` holds the program and the vote.
    When no program prints anything, the first sample is returned as it is."""

    def __init__(self, n: int = 8, template: str = TEMPLATE, answer_format: str = "{answer}",
                 max_new_tokens: int | None = None, timeout: float = 5.0, cpu_seconds: int = 2,
                 memory_mb: int = 256, isolation: Literal["full", "limits"] = "full",
                 answer_pattern: str | None = None) -> None:
        if not (isinstance(n, int) and n > 0):
            raise ValueError(f"program_aided: n must be a positive integer, got {n!r}")
        for name, text, fields in (("template", template, ("prompt",)), ("answer_format", answer_format, ("answer",))):
            try:
                text.format(**{f: "" for f in fields})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"program_aided: {name} may use only {{{fields[0]}}}: {exc}") from None
        if "{prompt}" not in template:
            raise ValueError("program_aided: template must contain {prompt} (where the question goes)")
        if answer_pattern is not None:
            try:
                answers.checked_pattern(answer_pattern)
            except ValueError as exc:
                raise ValueError(f"program_aided: answer_pattern {answer_pattern!r} is not a regular "
                                 f"expression: {exc}") from None
        if isolation not in ("full", "limits"):
            raise ValueError(f"program_aided: isolation must be 'full' or 'limits', got {isolation!r}")
        for name, value in (("timeout", timeout), ("cpu_seconds", cpu_seconds), ("memory_mb", memory_mb)):
            if not value > 0:
                raise ValueError(f"program_aided: {name} must be > 0, got {value!r}")
        problem = probe(isolation)
        if problem is not None:
            raise ValueError(f"program_aided: isolation = {isolation!r} is not available here: {problem}. "
                             "Run as root on Linux for full isolation, or set isolation = \"limits\" "
                             "(resource limits only) for trusted models")
        self.n, self.template, self.answer_format = n, template, answer_format
        self.max_new_tokens, self.isolation, self.answer_pattern = max_new_tokens, isolation, answer_pattern
        self.limits = Limits(wall_seconds=timeout, cpu_seconds=cpu_seconds, memory_bytes=memory_mb * 2**20,
                             output_bytes=16 * 1024, processes=8)

    def execute(self, text: str) -> tuple[str | None, dict]:
        """Run the program in ``text``; its printed answer (or None) and what happened."""
        program = extract_program(text)
        outcome = run_python({"main.py": program}, "main.py", self.limits, self.isolation)
        answer = printed_answer(outcome.stdout, self.answer_pattern) if outcome.ok else None
        return answer, {"program": program, "status": outcome.status, "reason": outcome.reason, "answer": answer}

    def run(self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget) -> Result:
        run = Run("program_aided", self.template.format(prompt=prompt), generator, scorer, budget)
        samples = run.sample(self.n, self.max_new_tokens)
        answers: list[str | None] = []
        for index, sample in enumerate(samples):
            answer, report = self.execute(sample.text)
            sample.meta["program_aided"] = report
            answers.append(answer)
            run.trace.append({"event": "execution", "index": index, **report})
        votes = Counter(a for a in answers if a is not None)
        if not votes:
            result = run.result(samples[0] if samples else None, samples, rule="no program printed an answer")
        else:
            first = {a: answers.index(a) for a in votes}
            winner = max(votes, key=lambda a: (votes[a], -first[a]))
            best = Candidate(prompt=prompt, text=self.answer_format.format(answer=winner), finish_reason="stop",
                             meta={"program": samples[first[winner]].meta["program_aided"]["program"],
                                   "votes": dict(votes), "sample": first[winner]})
            result = run.result(best, samples, rule="majority of printed answers", votes=dict(votes),
                                sample=first[winner])
        result.prompt = prompt
        return result


def register_all(register) -> None:
    register("program_aided", ProgramAided, caller=("n", "max_new_tokens", "answer_pattern"), runs_code=True,
             reads_logprobs=False)
