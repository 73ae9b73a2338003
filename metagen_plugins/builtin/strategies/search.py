"""Step-level search: generate one reasoning step at a time, score partial solutions with a
process reward (a PRM or a rule verifier), and spend compute on the promising ones
(survey sec. 4.2). Steps end at ``delimiter``; the Generator's prefix cache means extending a
partial solution pays only for its new tokens.

The shared parts (the step-search base, the beam loop, the tree node, ``root``, ``softmax``,
``apportion``) are the public kit :mod:`metagen_hooks.search`; this module holds the searches
metagen registers. MOVED to the kit, still importable here: ``_StepSearch``
(``StepSearch``), ``_root``, ``_softmax``, ``_apportion``, ``_Node`` (``TreeNode``),
``_all_nodes`` (``TreeNode.walk``).
"""

from __future__ import annotations

import random

from metagen_hooks import Result
from metagen_hooks.run import Run
from metagen_hooks.search import (Aggregate, BeamSearch, StepSearch, TreeNode, apportion, root, softmax)

# The old private names of what moved to metagen_hooks.search.
_StepSearch, _root, _softmax, _apportion, _Node = StepSearch, root, softmax, apportion, TreeNode


def _all_nodes(root_node: TreeNode) -> list[TreeNode]:
    return root_node.walk()


class StepBeamSearch(BeamSearch):
    """Step-level beam search with a process reward model (Yao et al., 2023; Snell et al., 2024):
    keep the ``beam_width`` best partial solutions, extend each by ``expansions`` next steps,
    score them, repeat until every beam has finished."""

    name = "step_beam_search"


class DVTS(StepBeamSearch):
    """Diverse verifier tree search (Beeching et al., 2024): split ``n`` into ``n / expansions``
    independent subtrees, each a greedy step search that keeps its single best child of
    ``expansions``; the subtrees' diversity avoids beam search's collapse onto one prefix."""

    name = "dvts"

    def __init__(self, n: int = 16, expansions: int = 4, max_steps: int = 8, step_tokens: int = 32,
                 delimiter: str = ". ", aggregate: Aggregate = "last") -> None:
        super().__init__(1, expansions, max_steps, step_tokens, delimiter, aggregate)
        if n < expansions:
            raise ValueError(f"n ({n}) must be >= expansions ({expansions})")
        self.subtrees = n // expansions

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run(self.name, prompt, generator, scorer, budget)
        leaves, scores = [], []
        for tree in range(self.subtrees):
            run.trace.append({"event": "subtree", "index": tree})
            found, found_scores = self.search(run, 1, self.expansions)
            leaves += found
            scores += found_scores
        return self.finish(run, leaves, scores, rule="highest process reward across subtrees")


class Rebase(StepSearch):
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
        nodes, scores = [root(prompt)], [0.0]
        leaves, leaf_scores = [], []
        for depth in range(self.max_steps):
            width = self.n - len(leaves)
            if width <= 0 or not nodes:
                break
            weights = softmax([s / self.temperature for s in scores])
            counts = apportion(width, weights)
            chosen = [(node, score, k) for node, score, k in zip(nodes, scores, counts) if k > 0]
            nodes, scores = [], []
            for node, score, k in chosen:
                [children] = self.expand(run, [node], k, depth)
                if not children:  # out of budget: the node competes as it is
                    leaves.append(node)
                    leaf_scores.append(score)
                    continue
                child_scores = self.score(run, children, depth)
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


class ParticleFiltering(StepSearch):
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
        weights = self.score(run, particles, 0)
        for depth in range(1, self.max_steps):
            if not particles or all(self.done(p) for p in particles):
                break
            probabilities = softmax([w / self.temperature for w in weights])
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
            fresh = iter(self.score(run, to_score, depth))
            particles = [p for p, _ in new_particles]
            weights = [w if w is not None else next(fresh) for _, w in new_particles]
        return self.finish(run, particles, weights, rule="highest process reward")


class MCTS(StepSearch):
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
        tree = TreeNode(root(prompt))
        leaves: list[TreeNode] = []
        for iteration in range(self.iterations):
            node, depth = tree, 0
            while node.children:
                node = max(node.children, key=lambda c: c.uct(self.exploration))
                depth += 1
            if self.done(node.candidate) or depth >= self.max_steps:
                node.backup(node.reward)
                continue
            [children] = self.expand(run, [node.candidate], self.expansions, depth)
            if not children:
                break
            rewards = self.score(run, children, depth, iteration=iteration)
            for child, reward in zip(children, rewards):
                child_node = node.add(child, reward)
                if self.done(child):
                    leaves.append(child_node)
                child_node.backup(reward)
        pool = leaves or tree.walk()[1:]
        return self.finish(run, [n.candidate for n in pool], [n.reward for n in pool],
                           rule="highest process reward", tree_nodes=len(tree.walk()))


def register_all(register) -> None:
    register("step_beam_search", StepBeamSearch, caller=("beam_width", "expansions", "max_steps", "step_tokens", "delimiter", "aggregate"),
             reads_logprobs=False)
    register("dvts", DVTS, caller=("n", "expansions", "max_steps", "step_tokens", "delimiter", "aggregate"),
             reads_logprobs=False)
    register("rebase", Rebase, caller=("n", "temperature", "max_steps", "step_tokens", "delimiter", "aggregate"),
             reads_logprobs=False)
    register("particle_filtering", ParticleFiltering, caller=("n", "temperature", "seed", "max_steps", "step_tokens", "delimiter", "aggregate"),
             reads_logprobs=False)
    register("mcts", MCTS, caller=("iterations", "expansions", "exploration", "max_steps", "step_tokens", "delimiter", "aggregate"),
             reads_logprobs=False)
