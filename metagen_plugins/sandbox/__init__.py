"""The sandbox for model-written Python (docs/reliability.md), in two parts: ``isolation`` runs a
program in an isolated process tree with time, memory and output limits; ``programs`` finds the
program in a candidate and runs its tests there. The names below are the sandbox's interface
(``from metagen_plugins.sandbox import run_python, check_program, ...``, as before the split)."""

from __future__ import annotations

from .isolation import Limits, Outcome, SandboxUnavailable, probe, remaining_processes, run_python
from .programs import TestReport, check_program, extract_program

__all__ = ["Limits", "Outcome", "SandboxUnavailable", "TestReport", "check_program", "extract_program", "probe",
           "remaining_processes", "run_python"]
