"""The ``code_tests`` scorer: a code-execution verifier that runs each candidate's program and
its tests in the sandbox (:mod:`metagen_plugins.sandbox`)."""

from __future__ import annotations

import json
import re
from typing import Literal

from ...errors import ConfigError
from ...sandbox import Limits, check_program, extract_program, probe

_ASSERT = re.compile(r"^\s*(assert\b.*)$", re.M)


class CodeTests:
    """Code-execution verifier (MBPP-style): extract the program from each candidate (its first
    ```python block, else the whole text), run it and the tests in the sandbox, and score the
    fraction of tests passed (``mode = "fraction"``) or 1/0 for all/not all (``"all"``).

    Tests are assert statements: ``tests`` for every prompt, ``tests_file`` (JSON lines with
    ``prompt`` and ``tests`` or MBPP's ``test_list``/``test_setup_code``) per prompt, or
    ``tests_in_prompt = true`` to take the prompt's own ``assert`` lines. Each candidate's
    ``meta["code_tests"]`` records passed, total, the sandbox status and the failure reason.
    ``isolation = "full"`` (namespaces; needs root) is the default; ``"limits"`` is resource
    limits only, for trusted code (see docs/reliability.md)."""

    def __init__(self, tests: list[str] | None = None, tests_file: str | None = None,
                 tests_in_prompt: bool = False, setup: str = "",
                 mode: Literal["fraction", "all"] = "fraction",
                 timeout: float = 10.0, cpu_seconds: int = 5, memory_mb: int = 512,
                 output_kb: int = 64, max_processes: int = 32,
                 isolation: Literal["full", "limits"] = "full") -> None:
        if mode not in ("fraction", "all"):
            raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")
        if isolation not in ("full", "limits"):
            raise ValueError(f"isolation must be 'full' or 'limits', got {isolation!r}")
        for name, value in (("timeout", timeout), ("cpu_seconds", cpu_seconds), ("memory_mb", memory_mb),
                            ("output_kb", output_kb), ("max_processes", max_processes)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if tests is None and tests_file is None and not tests_in_prompt:
            raise ValueError("give the tests: tests = [\"assert f(1) == 2\", ...], tests_file = "
                             "\"tests.jsonl\", or tests_in_prompt = true")
        self.tests, self.setup, self.mode, self.isolation = tests, setup, mode, isolation
        self.tests_in_prompt = tests_in_prompt
        self.by_prompt = _read_tests_file(tests_file) if tests_file else {}
        self.limits = Limits(wall_seconds=timeout, cpu_seconds=cpu_seconds, memory_bytes=memory_mb * 2**20,
                             output_bytes=output_kb * 1024, processes=max_processes)
        problem = probe(isolation)
        if problem is not None:
            raise ConfigError(f"code_tests: isolation = {isolation!r} is not available here: {problem}. "
                              "Run metagen as root on Linux for full isolation, or set isolation = "
                              "\"limits\" (resource limits only; no network or filesystem isolation) "
                              "for trusted code")

    def tests_for(self, prompt: str) -> tuple[list[str], str]:
        if prompt in self.by_prompt:
            return self.by_prompt[prompt]
        if self.tests_in_prompt:
            found = [m.group(1).strip() for m in _ASSERT.finditer(prompt)]
            if found:
                return found, self.setup
        if self.tests is not None:
            return list(self.tests), self.setup
        raise ValueError(f"code_tests has no tests for the prompt {prompt[:80]!r} (not in tests_file, "
                         "and no assert lines in it)")

    def score(self, prompt: str, candidates) -> list[float]:
        tests, setup = self.tests_for(prompt)
        scores = []
        for candidate in candidates:
            report = check_program(extract_program(candidate.text), tests, setup, self.limits, self.isolation)
            candidate.meta["code_tests"] = report.as_dict()
            if self.mode == "all":
                scores.append(float(report.total > 0 and report.passed == report.total))
            else:
                scores.append(report.passed / report.total if report.total else 0.0)
        return scores


def _read_tests_file(path: str) -> dict[str, tuple[list[str], str]]:
    table = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"code_tests: cannot read tests_file {path!r}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row.get("prompt", row.get("text"))
            tests = row.get("tests", row.get("test_list"))
            if not isinstance(prompt, str) or not isinstance(tests, list):
                raise ValueError("needs \"prompt\" (or \"text\") and \"tests\" (or \"test_list\")")
            table[prompt] = ([str(t) for t in tests], str(row.get("setup", row.get("test_setup_code", ""))))
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"code_tests: tests_file {path!r}, line {number}: {exc}") from None
    return table


def register_all(register) -> None:
    register("code_tests", CodeTests, caller=("mode",), runs_code=True, reads_logprobs=False)
