"""bench/qwen_coder.py's own rules: the "code run" answer (a reply's Python block run in the
sandbox instead of trusting the output block the model wrote after it) and records of runs
made separately merged by question."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from qwen_coder import code_runner  # noqa: E402
from _common import merge_records  # noqa: E402

MADE_UP = ("Let me compute it.\n```python\nresult = 80 * 19\nprint(result)\n```\n```output\n1440\n```\n"
           "The answer is \\boxed{1440}.")


def test_a_replys_program_is_run_and_its_printed_number_replaces_the_made_up_output():
    run = code_runner()
    assert run(MADE_UP) == "1520"
    assert run("```python\nprint(f'The answer is {12 * 12} apples')\n```") == "144"  # the last number printed


def test_a_reply_without_code_or_whose_code_fails_keeps_its_own_answer():
    run = code_runner()
    assert run("80 * 19 = 1520, so \\boxed{1520}") == "1520"
    assert run("```python\nprint(undefined_name)\n```\nSo \\boxed{7}.") == "7"  # NameError: its own answer
    assert run("```python\nx = 3\n```\nSo \\boxed{3}.") == "3"  # printed nothing
    assert run("no number at all") is None
    repaired = code_runner(lambda text: "repaired")
    assert repaired(MADE_UP) == "1520" and repaired("77 * 15 = 1105, so \\boxed{1105}") == "repaired"


def test_runs_recorded_apart_are_merged_by_question():
    records = [{"index": 1, "answer": "5", "greedy": {"texts": ["5"]}}, {"index": 0, "pal": {"texts": ["p"]}},
               {"index": 1, "pal": {"texts": ["q"]}}, {"index": 0, "answer": "4", "samples": {"texts": ["4"]}}]
    assert merge_records(records) == [{"index": 0, "pal": {"texts": ["p"]}, "answer": "4", "samples": {"texts": ["4"]}},
                               {"index": 1, "answer": "5", "greedy": {"texts": ["5"]}, "pal": {"texts": ["q"]}}]


def test_records_of_one_problem_that_disagree_on_its_set_up_stop_the_merge():
    import pytest

    apart = [{"index": 0, "n": 8, "greedy": {}}, {"index": 0, "n": 4, "pal": {}}]
    with pytest.raises(SystemExit, match=r"records of problem 0 disagree on n \(8 vs 4\)"):
        merge_records(apart, agree=("n",))
    assert merge_records(apart) == [{"index": 0, "n": 4, "greedy": {}, "pal": {}}]
