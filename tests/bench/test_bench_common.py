"""bench/_common.py's shared pieces for benches that record samples once and replay selection
rules on them: the records files, Replay, the exact McNemar test and the cost of each row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _common import Replay, append_records, cost_rows, mcnemar, read_records  # noqa: E402

import metagen_plugins  # noqa: E402
from metagen_hooks import Budget  # noqa: E402


def test_records_append_and_read_back_in_index_order(tmp_path):
    path = str(tmp_path / "r.jsonl")
    assert read_records([path]) == []  # no file yet: nothing done
    append_records(path, [{"index": 2, "x": "b"}])
    append_records(path, [{"index": 0, "x": "a"}])
    append_records(None, [{"index": 9}])  # no records file: nothing written
    assert [r["x"] for r in read_records([path])] == ["a", "b"]


def test_a_strategy_replayed_on_recorded_samples_selects_among_them():
    strategy = metagen_plugins.build(metagen_plugins.get_registry().get("strategies", "self_consistency"), {"n": 3})
    result = strategy.run("q", Replay(["#### 4", "#### 5", "#### 5", "#### 4"]), None, Budget())
    assert result.best.text == "#### 5" and len(result.candidates) == 3  # only the first n are drawn
    with pytest.raises(NotImplementedError):
        Replay(["x"]).extend([])


def test_mcnemar_is_exact_and_two_sided():
    assert mcnemar([False] * 6, [True] * 6) == pytest.approx(2 / 64)
    assert mcnemar([True, False], [False, True]) == 1.0
    assert mcnemar([True] * 3, [True] * 3) == 1.0


def test_cost_rows_charge_a_rule_its_share_of_the_samples():
    # the prompt costs 0.4e9 FLOPs, a token 0.1e9: greedy makes 10 tokens, 4 samples make 40
    records = [{"greedy": {"tokens": 10, "flops": 1.4e9, "wall_time": 1.0},
                "samples": {"tokens": 40, "flops": 4.4e9, "wall_time": 2.0}} for _ in range(4)]
    correct = {"greedy": [True, False, False, False], "vote@2": [True, True, True, False],
               "mean": [0.5, 0.25, 0.0, 1.0]}
    cost = {"greedy": ("greedy", 1.0), "vote@2": ("samples", 0.5), "mean": ("samples", 0.25)}
    rows = {r["strategy"]: r for r in cost_rows(records, correct, cost, descriptive={"mean"})}
    assert rows["greedy"]["accuracy"] == 0.25 and rows["greedy"]["p_vs_greedy"] is None
    assert rows["vote@2"]["correct"] == 3 and rows["vote@2"]["p_vs_greedy"] == pytest.approx(0.5)
    # the prompt once plus 20 of the 40 tokens
    assert rows["vote@2"]["tokens"] == 20 and rows["vote@2"]["flops"] == pytest.approx(0.4e9 + 20 * 0.1e9)
    assert rows["mean"]["accuracy"] == pytest.approx(0.4375) and rows["mean"]["correct"] is None
    assert rows["mean"]["p_vs_greedy"] is None and rows["mean"]["wall_time"] == 0.5


def test_record_runs_records_each_prompts_run_and_stops_on_a_failed_one():
    from _common import record_runs

    prompts = ["Q: 2+3=? A:", "Q: 7+8=? A:"]
    greedy = {"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 12}}
    records = record_runs([("greedy", greedy)], prompts)
    alone = metagen_plugins.run(greedy, prompts)
    assert [r["greedy"]["texts"] for r in records] == [[c.text for c in a.candidates] for a in alone]
    assert all(r["greedy"]["tokens"] > 0 for r in records)

    from tests.fakes.serve_helpers import free_port

    nowhere = {"host": {"name": "vllm", "url": f"http://127.0.0.1:{free_port()}", "model": "demo-arith",
                        "retries": 0, "timeout": 5}, "generation": {"max_new_tokens": 12}}
    with pytest.raises(SystemExit, match=r"the samples run failed on 2 of 2 prompts, e\.g\. 'Q: 2\+3=\? A:': the vllm host "
                                         r"failed: .*is the vLLM server at .* running"):
        record_runs([("samples", nowhere)], prompts)
