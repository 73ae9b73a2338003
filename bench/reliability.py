"""Reliability figures for docs/reliability.md, measured, not written by hand.

Runs the hostile programs of tests/test_sandbox.py through the ``code_tests`` scorer and checks
each was contained (no file written or read outside, no connection, no process or temporary
directory left, scored 0 with a reason); runs the property-based tests of
tests/test_properties.py and counts their examples; injects the plugin faults of
tests/test_plugin_faults.py into three-prompt runs and counts the results lost.

    python bench/reliability.py [--quick] [--write docs/reliability.md]

``--write`` replaces the block between ``<!-- reliability:begin -->`` and
``<!-- reliability:end -->`` in the given file with the tables.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import arguments


def hostile_programs() -> tuple[list[dict], dict]:
    from tests import test_sandbox as ts

    from metagen_plugins import sandbox

    outcomes = []
    original = sandbox.run_python

    def recording(*args, **kwargs):
        outcome = original(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    sandbox.run_python = recording
    rows = []
    try:
        for name, (program, reason) in ts.HOSTILE.items():
            with tempfile.TemporaryDirectory() as directory:
                canaries = ts.Canaries(Path(directory))
                before = ts.sandbox_dirs()
                try:
                    report = sandbox.check_program(canaries.fill(program) + "\ndef f():\n    return 1\n",
                                                   ["assert f() == 1"], limits=ts.LIMITS)
                    outcome = outcomes[-1]
                    left = sandbox.remaining_processes(outcome.uid) if outcome.uid is not None else []
                    violations = canaries.violations()
                    if ts.sandbox_dirs() - before:
                        violations.append("temporary directory left behind")
                    if left:
                        violations.append(f"{len(left)} process(es) left")
                finally:
                    canaries.close()
            scored_failure = report.passed == 0 and bool(report.reason)
            rows.append({"program": name, "sandbox": report.sandbox, "reason": report.reason,
                         "expected reason": bool(re.search(reason, report.reason)),
                         "scored 0": scored_failure, "contained": not violations, "violations": violations,
                         "seconds": round(outcome.wall_seconds, 2)})
        good = sandbox.check_program("def f():\n    return 1\n", ["assert f() == 1"], limits=ts.LIMITS)
        wrong = sandbox.check_program("def f():\n    return 2\n", ["assert f() == 1"], limits=ts.LIMITS)
    finally:
        sandbox.run_python = original
    return rows, {"correct program passes": good.passed == 1, "wrong program fails": wrong.passed == 0}


def invalid_inputs(quick: bool) -> dict[str, int]:
    import os

    os.environ["METAGEN_FUZZ_SCALE"] = "0.5" if quick else "2"  # read when the tests are imported
    from tests import test_properties as tp

    tp.EXAMPLES.clear()
    tp.test_every_invalid_configuration_fails_at_validation_naming_the_field()
    tp.test_any_parameters_of_any_component_validate_or_fail_naming_it()
    tp.test_any_text_prompt_runs_or_fails_clearly()
    tp.test_non_finite_scores_are_caught_and_finite_ones_pass()
    cases = tp.test_prompts_that_are_not_text_fail_before_any_model.pytestmark[0].args[1]
    for prompts, message in cases:
        tp.test_prompts_that_are_not_text_fail_before_any_model(prompts, message)
    tp.test_a_prompt_beyond_the_context_fails_before_generating()
    tp.test_an_empty_prompt_fails_alone()
    counts = dict(tp.EXAMPLES)
    counts["non-text prompts (bytes, lone surrogates, non-str, none)"] = len(cases)
    counts["empty and over-long prompts"] = 2
    return counts


def injected_faults() -> list[dict]:
    import metagen_plugins
    from tests import test_plugin_faults as ti
    from metagen_plugins.testing import tiny_model, tiny_tokenizer

    site = Path(tempfile.mkdtemp(prefix="metagen-faulty-"))
    (site / "metagen_faulty.py").write_text(ti.FAULTY)
    info = site / "metagen_faulty-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: metagen-faulty\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[metagen]\nmetagen_faulty = metagen_faulty\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    metagen_plugins.get_registry(reload=True)
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    rows = []
    try:
        for name, (_, component, error) in ti.FAULTS.items():
            results = ti.run_fault(name, model, tokenizer)
            clean = ti.run_fault(name, model, tokenizer, [ti.PROMPTS[0], ti.PROMPTS[2]])
            failed = [r for r in results if metagen_plugins.failed(r)]
            kept = [r for r in results if not metagen_plugins.failed(r)]
            lost = len(ti.PROMPTS) - len(results)  # prompts with no result at all
            lost += sum(a.best is None or a.best.text != b.best.text for a, b in zip(kept, clean))
            named = all(any(component in f.get("component", "") and "metagen-faulty" in f.get("message", "")
                            for f in r.failures) for r in failed)
            rows.append({"fault": name, "prompts": len(ti.PROMPTS), "completed": len(kept), "failed": len(failed),
                         "lost": lost, "names component + distribution": named})
    finally:
        sys.path.remove(str(site))
        shutil.rmtree(site, ignore_errors=True)
        metagen_plugins.get_registry(reload=True)
    return rows


def tables(hostile, checks, counts, faults) -> str:
    yes = {True: "yes", False: "**NO**"}
    lines = ["### Hostile programs (code_tests sandbox, full isolation)", "",
             "| program | sandbox outcome | scored 0 | reason as expected | contained | reason recorded |",
             "|---|---|---|---|---|---|"]
    for r in hostile:
        reason = r["reason"].replace("|", "\\|")[:110]
        lines.append(f"| {r['program']} | {r['sandbox']} | {yes[r['scored 0']]} | {yes[r['expected reason']]} | "
                     f"{yes[r['contained']]}{' (' + '; '.join(r['violations']) + ')' if r['violations'] else ''} "
                     f"| {reason} |")
    contained = sum(r["contained"] and r["scored 0"] for r in hostile)
    lines += ["", "Sandbox outcome `ok`: the sandboxed process exited normally because the test harness caught "
              "the program's error (the reason column); the others were ended by a limit."]
    lines += ["", f"Hostile programs tried: **{len(hostile)}**, contained and scored as failures: "
              f"**{contained}**. Correct program passes: {yes[checks['correct program passes']]}; "
              f"wrong program fails: {yes[checks['wrong program fails']]}.", "",
              "### Invalid inputs (property-based, hypothesis)", "", "| property | examples tried |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines += ["", f"Invalid or random inputs tried: **{sum(counts.values())}**; each failed (or ran) as the "
              "property requires, none reached a model when invalid.", "",
              "### Plugin faults injected (3-prompt runs on a tiny model)", "",
              "| fault | prompts | completed | failed | results lost | error names component + distribution |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['fault']} | {r['prompts']} | {r['completed']} | {r['failed']} | {r['lost']} | "
              f"{yes[r['names component + distribution']]} |" for r in faults]
    lines += ["", f"Faults injected: **{len(faults)}**; results lost: **{sum(r['lost'] for r in faults)}**."]
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], lambda p: p.add_argument("--write", metavar="FILE"))
    started = time.perf_counter()
    hostile, checks = hostile_programs()
    counts = invalid_inputs(args.quick)
    faults = injected_faults()
    text = tables(hostile, checks, counts, faults)
    print(text)
    if args.write:
        path = Path(args.write)
        doc = path.read_text()
        begin, end = "<!-- reliability:begin -->", "<!-- reliability:end -->"
        if begin not in doc or end not in doc:
            sys.exit(f"{path} has no {begin} ... {end} block")
        head, rest = doc.split(begin, 1)
        path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])
    print(json.dumps({"bench": "reliability", "hostile": len(hostile),
                      "contained": sum(r["contained"] and r["scored 0"] for r in hostile),
                      "invalid_inputs": sum(counts.values()), "faults": len(faults),
                      "results_lost": sum(r["lost"] for r in faults),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
