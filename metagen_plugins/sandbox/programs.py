"""A program's tests, run in the sandbox: the program a candidate holds (``extract_program``),
and how many of its tests pass (``check_program``), for the ``code_tests`` scorer and the
``program_aided`` strategy."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field

from .isolation import Limits, run_python

_HARNESS = r'''
import json, os, sys

def _main():
    with open("tests.json", encoding="utf-8") as f:
        spec = json.load(f)
    os.remove("tests.json")
    mark = spec["mark"]

    def report(**fields):
        sys.stdout.write("\n" + mark + json.dumps(fields) + "\n")
        sys.stdout.flush()

    def describe(exc):
        text = str(exc).strip().splitlines()
        return type(exc).__name__ + (": " + text[0][:300] if text else "")

    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        with open("solution.py", encoding="utf-8", errors="surrogateescape") as f:
            code = compile(f.read(), "solution.py", "exec")
        exec(code, namespace)
        if spec["setup"]:
            exec(compile(spec["setup"], "setup", "exec"), namespace)
    except BaseException as exc:
        report(stage="load", ok=False, error=describe(exc))
        return
    report(stage="load", ok=True)
    for index, test in enumerate(spec["tests"]):
        try:
            exec(compile(test, "test %d" % index, "exec"), namespace)
        except BaseException as exc:
            report(stage="test", index=index, ok=False, error=describe(exc))
        else:
            report(stage="test", index=index, ok=True)

_main()
'''

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_program(text: str) -> str:
    """The program in a candidate: its first ```python (or ```py) block, else its first fenced
    block, else the whole text. An unterminated fence runs to the end (a truncated answer)."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for language, body in blocks:
        if language in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else text


@dataclass
class TestReport:
    """What ``check_program`` found: tests passed of total, and why the rest failed."""

    passed: int
    total: int
    sandbox: str  # how the sandboxed process ended (Outcome.status): ok, timeout, cpu_limit, ...
    reason: str  # empty when every test passed
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def check_program(program: str, tests: list[str], setup: str = "", limits: Limits | None = None,
                  isolation: str = "full") -> TestReport:
    """Run ``program`` then each test statement in one sandboxed process; count the tests that
    ran without raising. Test results are read only from the harness's marked lines, so a
    program that exits early passes nothing."""
    mark = f"@@metagen-{random.getrandbits(64):016x}@@"
    spec = {"mark": mark, "setup": setup, "tests": list(tests)}
    outcome = run_python({"solution.py": program, "tests.json": json.dumps(spec), "_harness.py": _HARNESS},
                         "_harness.py", limits, isolation)
    loaded, results = None, {}
    for line in outcome.stdout.splitlines():
        if line.startswith(mark):
            try:
                event = json.loads(line[len(mark):])
            except json.JSONDecodeError:
                continue
            if event.get("stage") == "load":
                loaded = event
            elif event.get("stage") == "test" and isinstance(event.get("index"), int):
                results[event["index"]] = event
    failures = []
    if loaded is not None and not loaded.get("ok"):
        failures.append({"test": None, "error": f"the program failed to load: {loaded.get('error')}"})
    for index, test in enumerate(tests):
        event = results.get(index)
        if event is None:
            if loaded is not None and not loaded.get("ok"):
                continue
            failures.append({"test": index, "error": "did not run (" + (outcome.reason or "the program exited early") + ")"})
        elif not event.get("ok"):
            failures.append({"test": index, "error": f"{event.get('error')} in: {test.strip()[:200]}"})
    passed = sum(1 for e in results.values() if e.get("ok"))
    if outcome.ok and loaded is None:
        outcome.status, outcome.reason = "error", "the program exited before its tests ran"
    reasons = [] if outcome.ok else [outcome.reason]
    reasons += [f["error"] if f["test"] is None else f"test {f['test']}: {f['error']}" for f in failures
                if not (f["error"].startswith("did not run") and not outcome.ok)]
    return TestReport(passed, len(tests), outcome.status, "; ".join(r for r in reasons if r), failures)
