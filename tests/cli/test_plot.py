"""`metagen plot`: accuracy vs compute from a results file, a benchmark's JSON line or a trace;
bad input gives one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metagen_plugins.errors import ConfigError
from metagen_plugins.plot import load, plot

BIN = Path(sys.executable).parent / "metagen"
RESULTS = {"format": "metagen-results/1", "task": "demo",
           "rows": [{"strategy": "greedy", "accuracy": 0.25, "flops": 2e10, "tokens": 22.0},
                    {"strategy": "self_consistency@8", "accuracy": 0.3, "flops": 6e10, "tokens": 180.0}]}


def metagen(*args):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_plots_a_results_file(tmp_path, suffix, magic):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(RESULTS))
    out = tmp_path / f"plot{suffix}"
    proc = metagen("plot", str(source), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000 and out.read_bytes().startswith(magic)
    if suffix == ".svg":
        text = out.read_text()
        assert "greedy" in text and "self_consistency@8" in text


def test_default_output_is_beside_the_source(tmp_path):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(RESULTS))
    assert metagen("plot", str(source)).returncode == 0
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_reads_a_benchmark_line_with_mflops(tmp_path):
    source = tmp_path / "bench.txt"
    source.write_text("a table\n" + json.dumps({"bench": "strategies", "rows": [
        {"strategy": "greedy", "accuracy": 0.42, "MFLOPs": 0.5},
        {"strategy": "self_consistency@16", "accuracy": 0.6, "MFLOPs": 8.0}]}) + "\n")
    data = load(source)
    assert [r["flops"] for r in data["rows"]] == [0.5e6, 8.0e6]
    assert plot(data, tmp_path / "b.png").stat().st_size > 1000


def test_reads_a_trace_with_known_answers(tmp_path):
    lines = []
    for strategy, flops, text in (("generate", 10.0, "12 + 7 = 19"), ("self_consistency", 80.0, "12 + 7 = 9")):
        lines.append({"event": "run", "prompt": "What is 12 + 7?", "strategy": strategy, "answer": "19",
                      "config": {"strategy": {"name": strategy, "answer_pattern": r"=\s*(\d+)"}}})
        lines.append({"event": "result", "best": 0, "candidates": [{"prompt": "What is 12 + 7?", "text": text}],
                      "scores": [], "budget": {"flops": flops, "tokens_generated": 5}})
    source = tmp_path / "trace.jsonl"
    source.write_text("".join(json.dumps(l) + "\n" for l in lines))
    rows = {r["strategy"]: r for r in load(source)["rows"]}
    assert rows["generate"]["accuracy"] == 1.0 and rows["self_consistency"]["accuracy"] == 0.0
    assert rows["self_consistency"]["flops"] == 80.0


@pytest.mark.parametrize("content,expected", [
    (None, "cannot read"),
    ("not json at all\n", "neither a results file"),
    ('{"rows": [{"accuracy": 0.5}]}', "row 0 has no \"strategy\""),
    ('{"rows": [{"strategy": "x", "accuracy": 0.5}]}', "no row has FLOPs"),
    ('{"rows": [{"strategy": "x", "accuracy": null, "flops": 5}]}', "no row has an accuracy"),
])
def test_bad_input_is_one_clear_line(tmp_path, content, expected):
    source = tmp_path / "in.json"
    if content is not None:
        source.write_text(content)
    proc = metagen("plot", str(source), "-o", str(tmp_path / "o.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and expected in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_rejects_an_unknown_output_format(tmp_path):
    with pytest.raises(ConfigError, match=r"\.png, \.svg, \.pdf"):
        plot({"rows": RESULTS["rows"]}, tmp_path / "plot.jpg")


def test_rows_differing_only_in_n_are_one_line():
    from metagen_plugins.plot import families

    rows = [{"strategy": s} for s in ("best_of_4 + rule", "best_of_16 + rule", "greedy", "self_consistency@8")]
    assert {name: len(points) for name, points in families(rows).items()} == {
        "best_of_N + rule": 2, "greedy": 1, "self_consistency@8": 1}
