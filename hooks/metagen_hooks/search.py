"""The step-search kit: what the step-level searches share, so that a plugin can write its own
(a beam-search variant, a tree search) from the contract alone.

A step search grows partial solutions one reasoning step at a time. A step ends at a
``delimiter`` (the Generator's stop string); a process reward scores each partial solution
(:meth:`Run.step_scores`: a process reward model's or a rule verifier's step scores, aggregated
by ``last``, ``min`` or ``prod``); the search decides which partial solutions to extend next. The
host's prefix cache makes extending a partial solution pay only for its new tokens.

- :class:`StepSearch`: the settings (``delimiter``, ``max_steps``, ``step_tokens``,
  ``aggregate``) and the moves every step search makes: :meth:`~StepSearch.expand` partial
  solutions, :meth:`~StepSearch.score` them, tell a :meth:`~StepSearch.done` one,
  :meth:`~StepSearch.finish` with the best.
- :class:`BeamSearch`: step-level beam search, complete; a variant overrides
  :meth:`~BeamSearch.prune` (which partial solutions stay in the beam).
- :class:`TreeNode`: a search-tree node with visit counts, for Monte Carlo tree searches
  (:meth:`~TreeNode.uct`, :meth:`~TreeNode.backup`, :meth:`~TreeNode.walk`).
- :func:`root` (the empty partial solution), :func:`finished`, :func:`steps`, :func:`softmax`,
  :func:`apportion` (split a width among nodes by weight).

metagen's own step searches (``step_beam_search``, ``dvts``, ``rebase``, ``particle_filtering``,
``mcts``) are built on this module. A variant, tested without a model::

    from metagen_hooks.search import BeamSearch
    from metagen_hooks.testing import ScriptedGenerator

    class ShortBeams(BeamSearch):
        name = "short_beams"

        def prune(self, pool, width, depth):  # best first, shorter text breaking ties
            return sorted(pool, key=lambda pair: (-pair[1], len(pair[0].text)))[:width]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence, get_args

from . import selection
from .run import Run
from .types import Candidate, Result

Aggregate = Literal["last", "min", "prod"]
"""How a candidate's step scores become one process reward (see :meth:`Run.step_scores`)."""

AGGREGATES: tuple[str, ...] = get_args(Aggregate)

Pool = list[tuple[Candidate, float]]
"""Partial solutions with their process rewards, as :meth:`BeamSearch.prune` sees them."""


def root(prompt: str) -> Candidate:
    """The empty partial solution of ``prompt``: what a search extends first."""
    return Candidate(prompt=prompt, text="", finish_reason="stop")


def finished(candidate: Candidate, delimiter: str) -> bool:
    """True when ``candidate`` ended otherwise than at a step boundary: by EOS or a final
    answer, or out of tokens mid-step. The empty root is not finished."""
    return bool(candidate.text) and not candidate.text.endswith(delimiter)


def steps(text: str, delimiter: str) -> list[str]:
    """``text`` cut into its steps, each ending with ``delimiter`` but perhaps the last:
    ``steps("a. b. c", ". ") == ["a. ", "b. ", "c"]``; ``"".join`` gives ``text`` back."""
    parts = text.split(delimiter)
    return [p + delimiter for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def softmax(values: Sequence[float]) -> list[float]:
    """Probabilities proportional to ``exp(value)`` (computed stably); ``[]`` for none."""
    if not values:
        return []
    peak = max(values)
    exps = [math.exp(v - peak) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (which sum to 1), by largest
    remainders: ``apportion(5, [0.5, 0.3, 0.2]) == [3, 1, 1]``."""
    raw = [total * w for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: -(raw[i] - counts[i]))[: total - sum(counts)]:
        counts[i] += 1
    return counts


class StepSearch:
    """The settings and moves every step search shares. Subclass it and write ``run``.

    ``delimiter`` ends a step; ``max_steps`` bounds the depth; ``step_tokens`` bounds one step;
    ``aggregate`` turns a candidate's step scores into its process reward."""

    def __init__(self, delimiter: str = ". ", max_steps: int = 8, step_tokens: int = 32,
                 aggregate: Aggregate = "last") -> None:
        if max_steps < 1 or step_tokens < 1:
            raise ValueError("max_steps and step_tokens must be >= 1")
        if not delimiter:
            raise ValueError("delimiter must be a non-empty string (what ends a step, e.g. '. ' or '\\n')")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.delimiter, self.max_steps = delimiter, max_steps
        self.step_tokens, self.aggregate = step_tokens, aggregate

    def done(self, candidate: Candidate) -> bool:
        """Finished: ended by EOS (not at a step boundary), or out of tokens mid-step."""
        return finished(candidate, self.delimiter)

    def steps(self, candidate: Candidate) -> list[str]:
        """The candidate's steps so far (see :func:`steps`)."""
        return steps(candidate.text, self.delimiter)

    def expand(self, run: Run, nodes: Sequence[Candidate], k: int, depth: int) -> list[list[Candidate]]:
        """``k`` next steps of each partial solution in ``nodes`` (one list per node; empty lists
        once the budget is spent), recorded in the trace at ``depth``."""
        return run.sample(k, self.step_tokens, [self.delimiter], prefixes=nodes, depth=depth)

    def score(self, run: Run, candidates: Sequence[Candidate], depth: int, **meta) -> list[float]:
        """Each candidate's process reward (its step scores aggregated by ``aggregate``)."""
        return run.step_scores(candidates, self.aggregate, depth=depth, **meta)

    def finish(self, run: Run, leaves: list[Candidate], scores: list[float], **info) -> Result:
        """The result: the highest-scored leaf is best (the first of equals); ``info`` goes into
        the trace's ``select`` event."""
        return run.result(leaves[selection.argmax(scores)] if leaves else None, leaves, scores, **info)


class BeamSearch(StepSearch):
    """Step-level beam search with a process reward (Yao et al., 2023; Snell et al., 2024): keep
    the ``beam_width`` best partial solutions, extend each by ``expansions`` next steps (the
    first step: ``beam_width * expansions`` from the prompt), score them, repeat until every
    beam has finished or ``max_steps``. Finished beams stay in the pool and compete.

    A variant overrides :meth:`prune`; ``name`` is the strategy name in the result and trace."""

    name = "beam_search"
    rule = "highest process reward"

    def __init__(self, beam_width: int = 4, expansions: int = 4, max_steps: int = 8, step_tokens: int = 32,
                 delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(delimiter, max_steps, step_tokens, aggregate)
        if beam_width < 1 or expansions < 1:
            raise ValueError("beam_width and expansions must be >= 1")
        self.beam_width, self.expansions = beam_width, expansions

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run(self.name, prompt, generator, scorer, budget)
        leaves, scores = self.search(run, self.beam_width, self.expansions)
        return self.finish(run, leaves, scores, rule=self.rule)

    def search(self, run: Run, width: int, expansions: int) -> tuple[list[Candidate], list[float]]:
        """One beam search of ``width`` from the prompt; returns the final beams and their scores."""
        beams, scores = [root(run.prompt)], [0.0]
        first = True
        for depth in range(self.max_steps):
            active = [b for b in beams if not self.done(b)]
            if not active:
                break
            kept = [(b, s) for b, s in zip(beams, scores) if self.done(b)]
            k = width * expansions if first else expansions
            children = [c for group in self.expand(run, active, k, depth) for c in group]
            first = False
            if not children:
                break
            child_scores = self.score(run, children, depth)
            pool = self.prune(kept + list(zip(children, child_scores)), width, depth)
            beams, scores = [b for b, _ in pool], [s for _, s in pool]
        return beams, scores

    def prune(self, pool: Pool, width: int, depth: int) -> Pool:
        """The beams to keep out of ``pool`` (finished beams first, then this depth's children in
        generation order, each with its process reward): by default the ``width`` highest, ties
        keeping pool order. Return at most ``width`` pairs taken from ``pool``."""
        return sorted(pool, key=lambda pair: -pair[1])[:width]


@dataclass(eq=False)
class TreeNode:
    """A node of a search tree over partial solutions: its candidate, its reward (the process
    reward when it was expanded), and the visits and summed value that tree search backs up."""

    candidate: Candidate
    parent: TreeNode | None = None
    children: list[TreeNode] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    reward: float = 0.0

    def add(self, candidate: Candidate, reward: float) -> TreeNode:
        """A new child holding ``candidate`` with ``reward``."""
        child = TreeNode(candidate, parent=self, reward=reward)
        self.children.append(child)
        return child

    def uct(self, exploration: float) -> float:
        """Upper confidence bound for trees (Kocsis & Szepesvari, 2006): mean value plus
        ``exploration * sqrt(ln(parent visits + 1) / visits)``; infinite while unvisited."""
        if self.visits == 0:
            return float("inf")
        parent_visits = self.parent.visits if self.parent is not None else 0
        return self.value / self.visits + exploration * math.sqrt(math.log(parent_visits + 1) / self.visits)

    def backup(self, reward: float) -> None:
        """Count a visit with ``reward`` here and at every ancestor."""
        node: TreeNode | None = self
        while node is not None:
            node.visits += 1
            node.value += reward
            node = node.parent

    def walk(self) -> list[TreeNode]:
        """This node and all below it, depth first, children in order."""
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out
