"""Step-level search: generate one reasoning step at a time, score partial solutions with a
process reward (a PRM or a rule verifier), and spend compute on the promising ones
(survey sec. 4.2). Steps end at ``delimiter``; the Generator's prefix cache means extending a
partial solution pays only for its new tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from metagen_hooks import Candidate, Result

from metagen_hooks import selection
from metagen_hooks.run import Run

Aggregate = Literal["last", "min", "prod"]


class _StepSearch:
    """Settings shared by the step-level searches."""

    def __init__(self, delimiter: str, max_steps: int, step_tokens: int, aggregate: str) -> None:
        if max_steps < 1 or step_tokens < 1:
            raise ValueError("max_steps and step_tokens must be >= 1")
        self.delimiter, self.max_steps = delimiter, max_steps
        self.step_tokens, self.aggregate = step_tokens, aggregate

    def done(self, c: Candidate) -> bool:
        """Finished: ended by EOS (not at a step boundary), or out of tokens mid-step."""
        return bool(c.text) and not c.text.endswith(self.delimiter)

    def expand(self, run: Run, nodes: list[Candidate], k: int, depth: int) -> list[list[Candidate]]:
        return run.sample(k, self.step_tokens, [self.delimiter], prefixes=nodes, depth=depth)

    def finish(self, run: Run, leaves: list[Candidate], scores: list[float], **info) -> Result:
        return run.result(leaves[selection.argmax(scores)] if leaves else None, leaves, scores, **info)


def _root(prompt: str) -> Candidate:
    return Candidate(prompt=prompt, text="", finish_reason="stop")


class StepBeamSearch(_StepSearch):
    """Step-level beam search with a process reward model (Yao et al., 2023; Snell et al., 2024):
    keep the ``beam_width`` best partial solutions, extend each by ``expansions`` next steps,
    score them, repeat until every beam has finished."""

    def __init__(self, beam_width: int = 4, expansions: int = 4, max_steps: int = 8, step_tokens: int = 32,
                 delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(delimiter, max_steps, step_tokens, aggregate)
        if beam_width < 1 or expansions < 1:
            raise ValueError("beam_width and expansions must be >= 1")
        self.beam_width, self.expansions = beam_width, expansions

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("step_beam_search", prompt, generator, scorer, budget)
        leaves, scores = self.search(run, self.beam_width, self.expansions)
        return self.finish(run, leaves, scores, rule="highest process reward")

    def search(self, run: Run, width: int, expansions: int) -> tuple[list[Candidate], list[float]]:
        beams, scores = [_root(run.prompt)], [0.0]
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
            child_scores = run.step_scores(children, self.aggregate, depth=depth)
            pool = kept + list(zip(children, child_scores))
            pool.sort(key=lambda pair: -pair[1])  # stable: ties keep generation order
            beams, scores = [b for b, _ in pool[:width]], [s for _, s in pool[:width]]
        return beams, scores


class DVTS(StepBeamSearch):
    """Diverse verifier tree search (Beeching et al., 2024): split ``n`` into ``n / expansions``
    independent subtrees, each a greedy step search that keeps its single best child of
    ``expansions``; the subtrees' diversity avoids beam search's collapse onto one prefix."""

    def __init__(self, n: int = 16, expansions: int = 4, max_steps: int = 8, step_tokens: int = 32,
                 delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(1, expansions, max_steps, step_tokens, delimiter, aggregate)
        if n < expansions:
            raise ValueError(f"n ({n}) must be >= expansions ({expansions})")
        self.subtrees = n // expansions

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("dvts", prompt, generator, scorer, budget)
        leaves, scores = [], []
        for tree in range(self.subtrees):
            run.trace.append({"event": "subtree", "index": tree})
            found, found_scores = self.search(run, 1, self.expansions)
            leaves += found
            scores += found_scores
        return self.finish(run, leaves, scores, rule="highest process reward across subtrees")


class Rebase(_StepSearch):
    """REBASE (Wu et al., 2024, "Inference Scaling Laws"): a tree of width ``n`` where each
    depth's ``n`` expansions are shared among the unfinished nodes in proportion to
    ``softmax(reward / temperature)``; finished leaves use up their share of the width."""

    def __init__(self, n: int = 16, temperature: float = 0.2, max_steps: int = 8, step_tokens: int = 32,
                 delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(delimiter, max_steps, step_tokens, aggregate)
        if n < 1 or temperature <= 0:
            raise ValueError("n must be >= 1 and temperature > 0")
        self.n, self.temperature = n, temperature

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("rebase", prompt, generator, scorer, budget)
        nodes, scores = [_root(prompt)], [0.0]
        leaves, leaf_scores = [], []
        for depth in range(self.max_steps):
            width = self.n - len(leaves)
            if width <= 0 or not nodes:
                break
            weights = _softmax([s / self.temperature for s in scores])
            counts = _apportion(width, weights)
            chosen = [(node, score, k) for node, score, k in zip(nodes, scores, counts) if k > 0]
            nodes, scores = [], []
            for node, score, k in chosen:
                [children] = self.expand(run, [node], k, depth)
                if not children:  # out of budget: the node competes as it is
                    leaves.append(node)
                    leaf_scores.append(score)
                    continue
                child_scores = run.step_scores(children, self.aggregate, depth=depth)
                for child, s in zip(children, child_scores):
                    if self.done(child):
                        leaves.append(child)
                        leaf_scores.append(s)
                    else:
                        nodes.append(child)
                        scores.append(s)
        leaves += nodes  # unfinished at the depth limit still compete
        leaf_scores += scores
        return self.finish(run, leaves, leaf_scores, rule="highest process reward")


class ParticleFiltering(_StepSearch):
    """Particle filtering (Puri et al., 2025): ``n`` partial solutions advance one step at a
    time and are resampled in proportion to ``softmax(reward / temperature)``, so compute follows
    the likely-good ones while keeping diversity. Resampling draws from a ``seed``-ed generator."""

    def __init__(self, n: int = 8, temperature: float = 0.5, seed: int = 0, max_steps: int = 8,
                 step_tokens: int = 32, delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(delimiter, max_steps, step_tokens, aggregate)
        if n < 1 or temperature <= 0:
            raise ValueError("n must be >= 1 and temperature > 0")
        self.n, self.temperature, self.seed = n, temperature, seed

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("particle_filtering", prompt, generator, scorer, budget)
        rng = random.Random(self.seed)
        particles = [c for c in run.sample(self.n, self.step_tokens, [self.delimiter], depth=0)]
        weights = run.step_scores(particles, self.aggregate, depth=0)
        for depth in range(1, self.max_steps):
            if not particles or all(self.done(p) for p in particles):
                break
            probabilities = _softmax([w / self.temperature for w in weights])
            picks = rng.choices(range(len(particles)), weights=probabilities, k=self.n)
            run.trace.append({"event": "resample", "depth": depth, "picks": picks})
            resampled = [(particles[i], weights[i]) for i in picks]
            moving = [p for p, _ in resampled if not self.done(p)]
            groups = self.expand(run, moving, 1, depth) if moving else []
            advanced = iter([g[0] for g in groups if g])
            new_particles = []
            for p, w in resampled:
                if self.done(p):
                    new_particles.append((p, w))
                else:
                    child = next(advanced, None)  # None once the budget is spent: keep the particle
                    new_particles.append((child, None) if child is not None else (p, w))
            to_score = [p for p, w in new_particles if w is None]
            fresh = iter(run.step_scores(to_score, self.aggregate, depth=depth))
            particles = [p for p, _ in new_particles]
            weights = [w if w is not None else next(fresh) for _, w in new_particles]
        return self.finish(run, particles, weights, rule="highest process reward")


@dataclass
class _Node:
    candidate: Candidate
    parent: "_Node | None" = None
    children: list["_Node"] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    reward: float = 0.0


class MCTS(_StepSearch):
    """Monte Carlo tree search over reasoning steps (as in Hao et al., 2023, "Reasoning via
    Planning"; Zhang et al., 2024): ``iterations`` rounds of UCT selection (``exploration``),
    expansion by ``expansions`` next steps, evaluation by the process reward, and backup of the
    mean value. Returns the best-rewarded finished solution found (or the best leaf)."""

    def __init__(self, iterations: int = 16, expansions: int = 3, exploration: float = 1.0,
                 max_steps: int = 8, step_tokens: int = 32, delimiter: str = ". ",
                 aggregate: Aggregate = "last") -> None:
        super().__init__(delimiter, max_steps, step_tokens, aggregate)
        if iterations < 1 or expansions < 1:
            raise ValueError("iterations and expansions must be >= 1")
        self.iterations, self.expansions, self.exploration = iterations, expansions, exploration

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("mcts", prompt, generator, scorer, budget)
        root = _Node(_root(prompt))
        leaves: list[_Node] = []
        for iteration in range(self.iterations):
            node, depth = root, 0
            while node.children:
                node = max(node.children, key=lambda c: self._uct(c, node))
                depth += 1
            if self.done(node.candidate) or depth >= self.max_steps:
                self._backup(node, node.reward)
                continue
            [children] = self.expand(run, [node.candidate], self.expansions, depth)
            if not children:
                break
            rewards = run.step_scores(children, self.aggregate, depth=depth, iteration=iteration)
            for child, reward in zip(children, rewards):
                child_node = _Node(child, parent=node, reward=reward)
                node.children.append(child_node)
                if self.done(child):
                    leaves.append(child_node)
                self._backup(child_node, reward)
        pool = leaves or _all_nodes(root)[1:]
        return self.finish(run, [n.candidate for n in pool], [n.reward for n in pool],
                           rule="highest process reward", tree_nodes=len(_all_nodes(root)))

    def _uct(self, child: _Node, parent: _Node) -> float:
        if child.visits == 0:
            return float("inf")
        return child.value / child.visits + self.exploration * math.sqrt(math.log(parent.visits + 1) / child.visits)

    @staticmethod
    def _backup(node: _Node | None, reward: float) -> None:
        while node is not None:
            node.visits += 1
            node.value += reward
            node = node.parent


def _all_nodes(root: _Node) -> list[_Node]:
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _softmax(values: list[float]) -> list[float]:
    if not values:
        return []
    peak = max(values)
    exps = [math.exp(v - peak) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainders)."""
    raw = [total * w for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: -(raw[i] - counts[i]))[: total - sum(counts)]:
        counts[i] += 1
    return counts


def register_all(register) -> None:
    register("step_beam_search", StepBeamSearch, caller=("beam_width", "expansions", "max_steps", "step_tokens", "delimiter", "aggregate"))
    register("dvts", DVTS, caller=("n", "expansions", "max_steps", "step_tokens", "delimiter", "aggregate"))
    register("rebase", Rebase, caller=("n", "temperature", "max_steps", "step_tokens", "delimiter", "aggregate"))
    register("particle_filtering", ParticleFiltering, caller=("n", "temperature", "seed", "max_steps", "step_tokens", "delimiter", "aggregate"))
    register("mcts", MCTS, caller=("iterations", "expansions", "exploration", "max_steps", "step_tokens", "delimiter", "aggregate"))
