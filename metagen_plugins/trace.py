"""Trace files: every candidate, branch, score and selection of a run, as JSON lines, so that
selection can be re-run offline (``metagen reselect``) without generating again.

Each prompt's run is a ``run`` line (prompt, strategy, configuration), its strategy's events,
and a ``result`` line holding the final candidates, their scores, the choice and the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from metagen_hooks import Candidate, Result

from .errors import ConfigError

SELECTIONS = ("self_consistency", "weighted_majority", "best_of_n", "mbr")


def write(path: str | Path, results: Iterable[Result], config: dict[str, Any] | Sequence[dict] | None = None,
          expected: Sequence[str | None] | None = None) -> None:
    """``config``: the run's configuration, or one per result; ``expected``: each prompt's known
    answer (recorded as ``answer`` on its run line, so ``metagen plot`` can score the trace)."""
    results = list(results)
    configs = config if isinstance(config, (list, tuple)) else [config] * len(results)
    with open(path, "w", encoding="utf-8") as out:
        for i, result in enumerate(results):
            answer = expected[i] if expected is not None and i < len(expected) else None
            out.write(json.dumps({"event": "run", "prompt": result.prompt, "strategy": result.strategy,
                                  "config": configs[i] or {},
                                  **({"answer": answer} if answer is not None else {})}) + "\n")
            for event in result.trace:
                out.write(json.dumps(event) + "\n")
            best = result.candidates.index(result.best) if result.best in result.candidates else None
            out.write(json.dumps({"event": "result", "best": best,
                                  "candidates": [c.to_dict() for c in result.candidates],
                                  "scores": list(result.scores), "budget": result.budget.spent()}) + "\n")


@dataclass
class TracedRun:
    prompt: str
    strategy: str
    candidates: list[Candidate]
    scores: list[float]
    best: int | None
    budget: dict[str, float]


def read(path: str | Path) -> list[TracedRun]:
    runs, current = [], None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {str(path)!r}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"trace {path}, line {number} is not JSON: {exc}") from None
        if event.get("event") == "run":
            current = event
        elif event.get("event") == "result":
            if current is None:
                raise ConfigError(f"trace {path}, line {number}: a result with no run line before it")
            runs.append(TracedRun(current["prompt"], current.get("strategy", ""),
                                  [Candidate(**c) for c in event["candidates"]], event.get("scores", []),
                                  event.get("best"), event.get("budget", {})))
            current = None
    return runs


def reselect(run: TracedRun, strategy: str, scorer=None, answer_pattern: str | None = None) -> tuple[int | None, dict]:
    """Choose again among a traced run's candidates with another selection rule."""
    import functools

    from metagen_hooks import answers, selection

    pattern = answer_pattern or answers.DEFAULT_PATTERN
    scores: Sequence[float] = run.scores
    if scorer is not None and strategy != "mbr":
        scores = scorer.score(run.prompt, run.candidates)
    if strategy == "self_consistency":
        index, votes = selection.majority(run.candidates, pattern)
        return index, {"votes": votes}
    if strategy in ("weighted_majority", "best_of_n"):
        if len(scores) != len(run.candidates):
            raise ConfigError(f"{strategy} needs a score per candidate; this trace has "
                              f"{len(scores)} for {len(run.candidates)}: pass --scorer")
        if strategy == "best_of_n":
            return selection.argmax(list(scores)), {"scores": list(scores)}
        index, votes = selection.majority(run.candidates, pattern, weights=scores)
        return index, {"votes": votes}
    if strategy == "mbr":
        utility = scorer.utility if scorer is not None and hasattr(scorer, "utility") else \
            functools.partial(answers.agree, pattern=pattern)
        index, expected = selection.mbr(run.candidates, utility)
        return index, {"expected_utility": expected}
    raise ConfigError(f"reselect supports {', '.join(SELECTIONS)}; got {strategy!r}")
