"""``metagen plot``: accuracy vs compute, from a results file or a trace.

It reads

- a results file (``metagen_plugins.evaluate``: ``{"format": "metagen-results/1", "rows": [...]}``,
  written by ``metagen run --json --compare`` and ``bench/smollm2.py --results``);
- a benchmark's closing JSON line (``bench/strategies.py`` prints ``{"bench": ..., "rows": [...]}``
  with ``MFLOPs`` per row);
- a trace (``metagen run --trace FILE``): one point per strategy in it, mean FLOPs per prompt;
  accuracy needs the known answers the trace records when the run had them
  (``metagen run --prompts FILE.jsonl`` with an ``answer`` per line).

and draws one line per strategy (its rows over N): mean FLOPs per prompt (log scale) against
accuracy, as PNG or SVG (by the output's suffix) with matplotlib's Agg backend. ``x="tokens"``
or ``x="wall"`` puts tokens generated or wall seconds per prompt on the axis instead (rows that
have ``tokens`` / ``wall``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError

SUFFIXES = (".png", ".svg", ".pdf")
AXES = {"flops": "FLOPs per prompt (2 x params x tokens computed)", "tokens": "tokens generated per prompt",
        "wall": "wall time per prompt (s)"}


def load(path: str | Path) -> dict[str, Any]:
    """A results file, a bench line or a trace, as ``{"task": ..., "rows": [...]}`` with
    ``strategy``, ``accuracy`` and ``flops`` in every row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}. "
                          f"Give a results file (metagen run --json --compare > results.json) or a "
                          f"trace (metagen run --trace FILE).") from None
    data = _json(text)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        rows = [_row(r, path, i) for i, r in enumerate(data["rows"])]
        return {"task": data.get("task") or data.get("bench") or path.stem, "rows": rows}
    lines = _json_lines(text)
    if lines and any(isinstance(e, dict) and e.get("event") == "run" for e in lines):
        return _from_trace(lines, path)
    bench = [e for e in lines if isinstance(e, dict) and isinstance(e.get("rows"), list)]
    if bench:  # a benchmark's output: its closing JSON line
        return load_rows(bench[-1], path)
    raise ConfigError(f"{str(path)!r} is neither a results file (a JSON object with \"rows\": "
                      f"[{{\"strategy\", \"accuracy\", \"flops\"}}, ...]) nor a trace (JSON lines with "
                      f"\"event\": \"run\"). Write one with `metagen run --json --compare ... > "
                      f"results.json` or `metagen run --trace FILE ...`.")


def load_rows(data: dict[str, Any], path: Path) -> dict[str, Any]:
    return {"task": data.get("task") or data.get("bench") or path.stem,
            "rows": [_row(r, path, i) for i, r in enumerate(data["rows"])]}


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _json_lines(text: str) -> list:
    out = []
    for line in text.splitlines():
        if line.strip().startswith("{"):
            value = _json(line)
            if value is not None:
                out.append(value)
    return out


def _row(row: Any, path: Path, index: int) -> dict[str, Any]:
    if not isinstance(row, dict) or "strategy" not in row:
        raise ConfigError(f"{path}: row {index} has no \"strategy\"; each row needs strategy, "
                          f"accuracy and flops (or MFLOPs)")
    flops = row.get("flops")
    if flops is None and row.get("MFLOPs") is not None:
        flops = row["MFLOPs"] * 1e6
    return {**row, "flops": flops}


def _from_trace(lines: list[dict], path: Path) -> dict[str, Any]:
    from metagen_hooks import answers
    from .evaluate import normalise

    per: dict[str, dict[str, Any]] = {}
    current = None
    for event in lines:
        kind = event.get("event")
        if kind == "run":
            current = event
        elif kind == "result" and current is not None:
            strategy = current.get("strategy") or "generate"
            entry = per.setdefault(strategy, {"prompts": 0, "flops": 0.0, "tokens": 0.0, "known": 0, "correct": 0})
            budget = event.get("budget", {})
            entry["prompts"] += 1
            entry["flops"] += budget.get("flops", 0.0)
            entry["tokens"] += budget.get("tokens_generated", 0)
            if current.get("answer") is not None:
                pattern = ((current.get("config") or {}).get("strategy") or {}).get(
                    "answer_pattern", answers.DEFAULT_PATTERN)
                best = event.get("best")
                text = event["candidates"][best]["text"] if best is not None else ""
                entry["known"] += 1
                entry["correct"] += answers.extract(text, pattern) == normalise(current["answer"])
            current = None
    if not per:
        raise ConfigError(f"trace {path} has no complete run (a \"run\" line followed by a \"result\" line)")
    rows = [{"strategy": name, "prompts": e["prompts"], "flops": e["flops"] / e["prompts"],
             "tokens": e["tokens"] / e["prompts"],
             "accuracy": e["correct"] / e["known"] if e["known"] else None} for name, e in per.items()]
    return {"task": path.stem, "rows": rows}


def families(rows) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped into one line per strategy: rows whose names differ only in a number (the
    N of best_of_4 / best_of_16, the k of pass@k, "3 rounds") are points of one line."""
    import re

    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(re.sub(r"\d+", "N", str(r["strategy"])), []).append(r)
    return {name if len(points) > 1 else str(points[0]["strategy"]): points for name, points in out.items()}


def plot(data: dict[str, Any], out: str | Path, title: str | None = None, x: str = "flops") -> Path:
    """Draw ``data`` (as :func:`load` returns it) to ``out`` (.png, .svg or .pdf), accuracy
    against ``x`` (a key of :data:`AXES`)."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"-o {str(out)!r}: the output must end in {', '.join(SUFFIXES)}")
    if x not in AXES:
        raise ConfigError(f"--x {x!r}: choose one of {', '.join(AXES)}")
    rows = [r for r in data["rows"] if r.get(x)]
    if not rows:
        what = "FLOPs" if x == "flops" else x
        raise ConfigError(f"nothing to plot: no row has {what} (the results need {x} per strategy)")
    if all(r.get("accuracy") is None for r in rows):
        raise ConfigError("nothing to plot: no row has an accuracy. The prompts need known answers: "
                          "run with --prompts FILE.jsonl ({\"prompt\": ..., \"answer\": ...} per line) "
                          "or --answers")
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("metagen plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    styles = [(m, ls) for ls in ("-", "--", ":") for m in "os^Dv"]  # 15 distinct looks beside colour
    for i, (name, points) in enumerate(families(r for r in rows if r.get("accuracy") is not None).items()):
        points.sort(key=lambda r: r[x])
        marker, line = styles[i % len(styles)]
        ax.plot([r[x] for r in points], [r["accuracy"] for r in points], marker=marker, linestyle=line,
                label=name)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"{data.get('task', '')}: accuracy vs compute")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
