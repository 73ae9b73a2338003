"""The code-execution sandbox and the ``code_tests`` scorer: correct programs pass, wrong ones
fail, and hostile programs are contained and scored as failures with the reason.

``HOSTILE`` is also run by ``bench/reliability.py`` for the report in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from metagen_hooks import Candidate
from metagen_plugins import sandbox
from metagen_plugins.builtin.scorers.code_tests import CodeTests
from metagen_plugins.sandbox import Limits, check_program, extract_program, run_python

FULL = sandbox.probe("full")
needs_full = pytest.mark.skipif(FULL is not None, reason=f"full isolation unavailable here: {FULL}")

# Small limits keep the hostile runs short; the wall limit is generous because 2 CPUs are shared.
LIMITS = Limits(wall_seconds=20, cpu_seconds=2, memory_bytes=256 * 2**20, output_bytes=32 * 1024,
                file_bytes=4 * 2**20, processes=16)

# name -> (program, reason pattern). {canary}, {home_canary}, {port}, {pid} and {outside} are
# filled in per run; every program is the candidate's whole text, and the test is `assert f() == 1`.
HOSTILE: dict[str, tuple[str, str]] = {
    "infinite loop": ("while True:\n    pass\n", r"CPU-time limit|wall-clock limit"),
    "sleeping forever": ("import time\ntime.sleep(3600)\n", r"wall-clock limit"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", r"BlockingIOError|Resource temporarily unavailable"
                  r"|CPU-time limit|wall-clock limit"),
    "fork bomb ignoring errors": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                                  "        pass\n", r"CPU-time limit|wall-clock limit|SIGKILL"),
    "memory bomb": ("x = bytearray(8 * 2**30)\n", r"MemoryError"),
    "growing memory": ("chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))\n", r"MemoryError"),
    "huge output": ("while True:\n    print('x' * 4096)\n", r"output exceeded"),
    "huge file": ("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n",
                  r"File too large|No space left|file-size limit"),
    "read /etc/passwd": ("print(open('/etc/passwd').read())\n", r"FileNotFoundError.*/etc/passwd"),
    "read a file outside its directory": ("print(open({canary!r}).read())\n", r"FileNotFoundError"),
    "read the user's home": ("print(open({home_canary!r}).read())\n", r"FileNotFoundError"),
    "write outside its directory": ("open({outside!r}, 'w').write('owned')\n",
                                    r"FileNotFoundError|Read-only file system|PermissionError"),
    "write into system directories": ("open('/usr/owned', 'w').write('owned')\n", r"Read-only file system"),
    "open a socket": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\n",
                      r"Network is unreachable|Connection refused"),
    "kill its parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                        r"PermissionError|ProcessLookupError"),
    "kill everything it can": ("import os, signal\nos.kill({pid}, signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n",
                               r"ProcessLookupError|PermissionError|SIGKILL"),
    "leave a daemon behind": ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(3600)\n"
                              "sys.exit(0)\n", r"SystemExit"),
}


class Canaries:
    """What hostile programs aim at, on the host side: files they must not read or write, a
    server they must not reach."""

    def __init__(self, directory: Path) -> None:
        self.canary = directory / "canary.txt"
        self.canary.write_text("secret outside the sandbox")
        self.home_canary = Path.home() / f".metagen-sandbox-canary-{os.getpid()}"
        self.home_canary.write_text("secret in the user's home")
        self.outside = directory / "written-by-sandbox.txt"
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.2)
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def fill(self, program: str) -> str:
        return program.format(canary=str(self.canary), home_canary=str(self.home_canary),
                              outside=str(self.outside), port=self.server.getsockname()[1], pid=os.getpid())

    def violations(self) -> list[str]:
        """Host-side evidence that a program got out (empty when contained)."""
        found = []
        if self.outside.exists():
            found.append(f"{self.outside} was written")
        if self.canary.read_text() != "secret outside the sandbox":
            found.append("the canary was changed")
        if self.connections:
            found.append(f"{self.connections} connection(s) reached the host's server")
        return found

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.server.close()
        self.home_canary.unlink(missing_ok=True)


@pytest.fixture
def canaries(tmp_path):
    c = Canaries(tmp_path)
    yield c
    c.close()


def sandbox_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("metagen-sandbox-*")}


def candidate(text: str) -> Candidate:
    return Candidate(prompt="p", text=text)


# -- correct and wrong programs ------------------------------------------------------------------

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


@needs_full
def test_a_correct_program_passes_and_a_wrong_one_fails():
    scorer = CodeTests(tests=ADD_TESTS, timeout=20)
    good = candidate("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n")
    wrong = candidate("```python\ndef add(a, b):\n    return a * b\n```")  # passes add(2, 2) only
    assert scorer.score("p", [good, wrong]) == [1.0, pytest.approx(1 / 3)]
    assert good.meta["code_tests"]["passed"] == 3 and good.meta["code_tests"]["reason"] == ""
    report = wrong.meta["code_tests"]
    assert report["passed"] == 1 and report["total"] == 3 and report["sandbox"] == "ok"
    assert "test 0: AssertionError in: assert add(1, 2) == 3" in report["reason"]
    assert CodeTests(tests=ADD_TESTS, mode="all").score("p", [good, wrong]) == [1.0, 0.0]


@needs_full
@pytest.mark.parametrize("program, reason", [
    ("import sys\nsys.exit(0)\n", "SystemExit"),
    ("import os\nos._exit(0)\ndef add(a, b): return a + b\n", "exited before its tests ran"),
    ("def add(a, b) return a + b", "SyntaxError"),
    ("print('@@metagen-0000000000000000@@{\"stage\": \"test\", \"index\": 0, \"ok\": true}')\n", "NameError"),
])
def test_programs_that_exit_early_or_forge_results_pass_nothing(program, reason):
    report = check_program(program, ADD_TESTS, limits=LIMITS)
    assert report.passed == 0 and reason in report.reason


@needs_full
def test_a_hanging_test_keeps_the_results_of_the_tests_before_it():
    program = "def add(a, b):\n    if a == -1:\n        while True: pass\n    return a + b\n"
    report = check_program(program, ADD_TESTS, limits=LIMITS)
    assert report.passed == 1 and report.sandbox in ("cpu_limit", "timeout")
    assert report.failures[0]["test"] == 1 and "did not run" in report.failures[1]["error"]


def test_extract_program():
    assert extract_program("text\n```python\nx = 1\n```\nmore\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_program("```\nz = 3\n```") == "z = 3\n"
    assert extract_program("```js\nno\n```\n```py\nyes = 1\n```") == "yes = 1\n"
    assert extract_program("```python\ntruncated = 1\n") == "truncated = 1\n"
    assert extract_program("plain = 1\n") == "plain = 1\n"


@needs_full
def test_tests_per_prompt_from_a_file_and_from_the_prompt(tmp_path):
    rows = [{"text": "Write add.", "test_list": ["assert add(1, 1) == 2"]},
            {"prompt": "Write neg.", "tests": ["assert neg(1) == -1"], "setup": "import math"}]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    scorer = CodeTests(tests_file=str(path), tests_in_prompt=True)
    assert scorer.score("Write add.", [candidate("def add(a, b): return a + b")]) == [1.0]
    assert scorer.score("Write neg.", [candidate("def neg(x): return -x")]) == [1.0]
    prompt = "Write sq. Your code should pass:\nassert sq(3) == 9\nassert sq(0) == 0\n"
    assert scorer.score(prompt, [candidate("def sq(x): return x * x"), candidate("def sq(x): return 9")]) \
        == [1.0, 0.5]
    with pytest.raises(ValueError, match="no tests for the prompt"):
        scorer.score("Write nothing.", [candidate("pass")])


def test_scorer_parameters_are_checked(tmp_path):
    import metagen_plugins
    from metagen_plugins import ConfigError

    registry = metagen_plugins.get_registry(reload=True)
    info = registry.get("scorers", "code_tests")
    assert info.plugin == "metagen_plugins.builtin"
    with pytest.raises(ValueError, match="give the tests"):
        CodeTests()
    with pytest.raises(ValueError, match="timeout must be > 0"):
        CodeTests(tests=["assert True"], timeout=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="line 1: needs"):
        CodeTests(tests_file=str(bad))
    with pytest.raises(ConfigError, match=r"parameter 'mode' must be 'fraction' \| 'all'"):
        metagen_plugins.validate({"scorer": {"name": "code_tests", "tests": [], "mode": "any"}}, registry)


# -- hostile programs ----------------------------------------------------------------------------

@needs_full
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained_and_scored_as_failure(name, canaries):
    program, reason = HOSTILE[name]
    before = sandbox_dirs()
    scorer = CodeTests(tests=["assert f() == 1"], timeout=LIMITS.wall_seconds, cpu_seconds=LIMITS.cpu_seconds,
                       memory_mb=256, output_kb=32, max_processes=16)
    c = candidate(f"```python\n{canaries.fill(program)}\ndef f():\n    return 1\n```")
    assert scorer.score("p", [c]) == [0.0]
    report = c.meta["code_tests"]
    assert report["passed"] == 0
    assert re.search(reason, report["reason"]), report
    assert canaries.violations() == []
    assert sandbox_dirs() <= before  # the temporary directory is gone


@needs_full
@pytest.mark.parametrize("name", ["fork bomb", "leave a daemon behind", "sleeping forever"])
def test_no_process_survives_a_run(name, canaries):
    program, _ = HOSTILE[name]
    outcome = run_python({"main.py": canaries.fill(program)}, "main.py", LIMITS)
    assert outcome.uid is not None and sandbox.remaining_processes(outcome.uid) == []


@needs_full
def test_what_the_program_sees():
    probe = ("import os, json\n"
             "print(json.dumps({'cwd': os.getcwd(), 'uid': os.getuid(), 'root': sorted(os.listdir('/')),"
             " 'env': dict(os.environ), 'home': os.path.exists(os.path.expanduser('~'))}))\n")
    outcome = run_python({"main.py": probe}, "main.py", LIMITS)
    assert outcome.ok, outcome.reason
    seen = json.loads(outcome.stdout)
    assert seen["cwd"] == "/work" and seen["uid"] >= 1_000_000
    assert not {"etc", "home", "tmp", "proc", "sys", "var", "run", "opt"} & set(seen["root"])
    assert set(seen["env"]) <= {"LC_ALL", "PATH", "HOME", "TMPDIR"}
    home = Path.home()
    listing = run_python({"main.py": f"import os\nprint(sorted(os.listdir({str(home)!r})))\n"}, "main.py", LIMITS)
    real = {p.name for p in home.iterdir()}
    shown = set(eval(listing.stdout)) if listing.ok else set()  # noqa: S307 - our own program's output
    assert len(shown & real) <= 1  # at most the directory leading to the Python installation


def test_limits_mode_enforces_resource_limits_without_isolation():
    for program, status in [("while True: pass\n", "cpu_limit"), ("x = bytearray(8 * 2**30)\n", "memory_limit"),
                            ("while True: print('x' * 4096)\n", "output_limit"), ("print('fine')\n", "ok")]:
        outcome = run_python({"main.py": program}, "main.py", LIMITS, isolation="limits")
        assert outcome.status == status, outcome
    assert outcome.stdout == "fine\n"


def test_full_isolation_refuses_to_degrade_silently(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxUnavailable, match="needs root"):
        run_python({"main.py": "pass"}, "main.py", LIMITS)
    monkeypatch.setattr(sandbox.isolation, "_PROBED", {})
    from metagen_plugins import ConfigError

    with pytest.raises(ConfigError, match="isolation = 'full' is not available here.*isolation = \"limits\""):
        CodeTests(tests=["assert True"])
