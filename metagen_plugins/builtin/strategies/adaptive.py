"""Adaptive compute inside one prompt: strategies that watch their samples decode and stop the
ones not worth finishing (``metagen_hooks.inflight``). On a host that streams (transformers,
vLLM, the OpenAI-compatible host) a cancelled sample stops within a step and frees its slot; on
one that does not, the same rules run on finished samples and save only what comes after.

- ``esc``: early-stopping self-consistency (Li et al., 2024, "Escape Sky-high Cost"), in flight;
- ``deepconf``: DeepConf (Fu et al., 2025, "Deep Think with Confidence"), online and offline;
- ``early_rejection``: best-of-N that drops a branch as soon as a process verifier scores one
  of its steps low.
"""

from __future__ import annotations

import math
from collections import Counter

from metagen_hooks import Candidate, Result, ScorerNeeded, Watch, answers, selection
from metagen_hooks.inflight import InFlight, completed, live
from metagen_hooks.run import Run
from metagen_hooks.search import finished as _done  # a branch ended otherwise than at a step delimiter


class EarlyStoppingSelfConsistency:
    """Self-consistency that stops as soon as more samples cannot matter.

    Samples are drawn in windows of ``window`` (at most ``n`` in all), each window decoding
    together. The run ends after a window whose answers all agree (ESC's rule), and, in flight,
    cancels whatever still decodes once the vote cannot change: the leader is ahead of the
    runner-up by more than the samples left to come, or (with ``confidence``) it beats the
    runner-up with that probability under a Beta posterior (Aggarwal et al., 2023)."""

    def __init__(self, n: int = 16, window: int = 4, confidence: float | None = 0.95,
                 answer_pattern: str = answers.DEFAULT_PATTERN, max_new_tokens: int | None = None) -> None:
        _positive(n=n, window=window)
        if confidence is not None and not 0.5 < confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1) or None, got {confidence}")
        self.n, self.window, self.confidence = n, window, confidence
        self.pattern, self.max_new_tokens = answers.checked_pattern(answer_pattern), max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("esc", prompt, generator, scorer, budget)
        kept: list[Candidate] = []
        counts: Counter = Counter()
        launched, cancelled, why = 0, 0, None
        while launched < self.n and why is None:
            size = min(self.window, self.n - launched)
            after = self.n - launched - size  # samples later windows could still add

            def watch(samples, before=Counter(counts), after=after):
                nonlocal why
                votes = before + Counter(self._answers(s for s in samples if s.finished and not s.cancelled))
                running = live(samples)
                reason = self._settled(votes, len(running) + after)
                if reason and running:
                    why = reason
                    for s in running:
                        s.cancel(reason)

            drawn = run.sample(size, self.max_new_tokens, watch=Watch(watch), round=launched // self.window)
            if not drawn:
                break
            launched += size
            done = completed(drawn)
            cancelled += len(drawn) - len(done)
            kept += done
            window_answers = self._answers(done)
            counts.update(window_answers)
            if why is None and len(window_answers) == size and len(set(window_answers)) == 1:
                why = "a whole window agreed"
            elif why is None and self._settled(counts, self.n - launched):
                why = self._settled(counts, self.n - launched)
        index, votes = selection.majority(kept, self.pattern)
        return run.result(None if index is None else kept[index], kept, [], rule="majority", votes=votes,
                          stopped_because=why, samples=len(kept), cancelled=cancelled)

    def _answers(self, samples) -> list[str]:
        return [a for a in (answers.extract(s.text, self.pattern) for s in samples) if a is not None]

    def _settled(self, votes: Counter, left: int) -> str | None:
        ranked = votes.most_common(2) + [(None, 0)] * 2
        (_, first), (_, second) = ranked[0], ranked[1]
        if first and first - second > left:
            return "the vote cannot change"
        if self.confidence is not None and first and selection.vote_settled(votes, self.confidence):
            return f"the leader wins with probability >= {self.confidence}"
        return None


class DeepConf:
    """DeepConf: vote with the traces the model was confident in, and stop the others early.

    A trace's confidence is its lowest *group confidence*: the mean, over a sliding window of
    ``group`` tokens, of each token's confidence (minus the mean of the top-``top_k``
    log-probabilities at that step; high when the model was sure). With no top log-probabilities
    from the host, a token's own log-probability stands in.

    ``mode="offline"``: draw ``n`` traces, keep the most confident ``keep`` fraction, and vote
    with each one's confidence as its weight. ``mode="online"``: ``warmup`` traces first; the
    threshold is their confidence at the ``1 - keep`` quantile; the other traces are drawn
    ``batch`` at a time and a trace stops as soon as a window's confidence falls below the
    threshold; drawing stops once the leading answer holds ``consensus`` of the vote weight."""

    def __init__(self, n: int = 16, mode: str = "online", warmup: int = 4, keep: float = 0.9, group: int = 16,
                 top_k: int = 20, batch: int = 4, consensus: float = 0.95,
                 answer_pattern: str = answers.DEFAULT_PATTERN, max_new_tokens: int | None = None) -> None:
        _positive(n=n, warmup=warmup, group=group, top_k=top_k, batch=batch)
        if mode not in ("online", "offline"):
            raise ValueError(f"mode must be 'online' or 'offline', got {mode!r}")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        if not 0.5 < consensus <= 1:
            raise ValueError(f"consensus must be in (0.5, 1], got {consensus}")
        self.n, self.mode, self.warmup, self.keep, self.group = n, mode, min(warmup, n), keep, group
        self.top_k, self.batch, self.consensus = top_k, batch, consensus
        self.pattern, self.max_new_tokens = answers.checked_pattern(answer_pattern), max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("deepconf", prompt, generator, scorer, budget)
        if self.mode == "offline":
            traces = self._draw(run, self.n, None, 0)
            confident = _top(traces, self.keep)
            return self._vote(run, traces, confident, mode="offline")
        traces = self._draw(run, self.warmup, None, 0)
        threshold = _quantile([c.meta["confidence"] for c in traces], 1 - self.keep)
        stopped = 0
        while len(traces) < self.n and not self._agreed(traces, threshold):
            drawn = self._draw(run, min(self.batch, self.n - len(traces)), threshold, len(traces))
            if not drawn:
                break
            stopped += sum(c.finish_reason == "cancelled" for c in drawn)
            traces += drawn
        voters = [c for c in traces if c.finish_reason != "cancelled" and c.meta["confidence"] >= threshold]
        return self._vote(run, traces, voters, mode="online", threshold=threshold, stopped=stopped)

    def _draw(self, run: Run, size: int, threshold: float | None, start: int) -> list[Candidate]:
        """``size`` traces, each with its confidence in ``meta``; with a threshold, a trace whose
        latest group falls below it is cancelled as it decodes."""
        seen: dict[int, InFlight] = {}

        def watch(samples):
            for s in samples:
                seen[s.index] = s
                if threshold is not None and s.finish_reason is None and len(s.token_ids) >= self.group:
                    if _group_confidence(s, self.group, last_only=True) < threshold:
                        s.cancel("its confidence fell below the threshold")

        drawn = run.sample(size, self.max_new_tokens, watch=Watch(watch, top_logprobs=self.top_k),
                           round=start // self.batch)
        for i, c in enumerate(drawn):
            view = seen.get(i)
            c.meta["confidence"] = _group_confidence(view, self.group) if view is not None else _fallback(c, self.group)
        return drawn

    def _agreed(self, traces: list[Candidate], threshold: float) -> bool:
        weights = Counter()
        for c in traces:
            answer = answers.extract(c.text, self.pattern)
            if c.finish_reason != "cancelled" and answer is not None and c.meta["confidence"] >= threshold:
                weights[answer] += _weight(c)
        total = sum(weights.values())
        return bool(total) and max(weights.values()) / total >= self.consensus

    def _vote(self, run: Run, traces, voters, **info) -> Result:
        voters = voters or completed(traces)
        index, votes = selection.majority(voters, self.pattern, weights=[_weight(c) for c in voters])
        best = None if index is None else voters[index]
        kept = completed(traces)
        return run.result(best, kept, [c.meta["confidence"] for c in kept], rule="confidence-weighted majority",
                          votes=votes, voters=len(voters), **info)


class EarlyRejection:
    """Best-of-N with early rejection: ``n`` branches grow one step at a
    time (``delimiter`` ends a step, as in the step-level searches); after each step a process
    verifier scores every branch and those whose latest step scores below ``threshold`` are
    dropped, at most down to ``min_keep`` branches; the best finished branch by its score wins.
    A step is at most ``step_tokens`` tokens; ``max_steps`` bounds the depth."""

    def __init__(self, n: int = 8, threshold: float = 0.5, min_keep: int = 1, delimiter: str = ". ",
                 max_steps: int = 8, step_tokens: int = 32) -> None:
        _positive(n=n, min_keep=min_keep, max_steps=max_steps, step_tokens=step_tokens)
        self.n, self.threshold, self.min_keep = n, threshold, min_keep
        self.delimiter, self.max_steps, self.max_step_tokens = delimiter, max_steps, step_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        if scorer is None:
            raise ScorerNeeded("strategy 'early_rejection' needs a [scorer] (a process verifier scores each step)")
        run = Run("early_rejection", prompt, generator, scorer, budget)
        branches = run.sample(self.n, self.max_step_tokens, stop=[self.delimiter], depth=0)
        finished: list[tuple[Candidate, float]] = []
        rejected = 0
        for depth in range(1, self.max_steps + 1):
            if not branches:
                break
            scores = run.step_scores(branches, aggregate="last", depth=depth)
            ranked = sorted(zip(branches, scores), key=lambda pair: -pair[1])
            keep = [pair for pair in ranked if pair[1] >= self.threshold]
            if len(keep) < self.min_keep:
                keep = ranked[:self.min_keep]
            rejected += len(ranked) - len(keep)
            growing = []
            for branch, score in keep:
                (finished if _done(branch, self.delimiter) or depth == self.max_steps else growing).append(
                    (branch, score))
            if not growing or budget.exhausted():
                break
            groups = run.sample(1, self.max_step_tokens, stop=[self.delimiter],
                                prefixes=[b for b, _ in growing], depth=depth)
            branches = [group[0] for group in groups if group]
        if not finished:
            finished = [(b, s) for b, s in zip(branches, run.step_scores(branches))] if branches else []
        candidates = [c for c, _ in finished]
        scores = [s for _, s in finished]
        index = selection.argmax(scores)
        return run.result(None if index is None else candidates[index], candidates, scores, rule="argmax",
                          rejected=rejected)


def _group_confidence(view: InFlight, group: int, last_only: bool = False) -> float:
    """The lowest mean token confidence over windows of ``group`` tokens (only the latest window
    with ``last_only``); a trace shorter than a window is one window."""
    per_token = [-sum(top) / len(top) for top in view.top_logprobs if top]
    if len(per_token) < len(view.token_ids):  # no top log-probs from the host: the token's own
        per_token = list(view.logprobs)
    return _lowest_window(per_token, group, last_only)


def _fallback(candidate: Candidate, group: int) -> float:
    return _lowest_window(list(candidate.logprobs), group, False)


def _lowest_window(values: list[float], group: int, last_only: bool) -> float:
    if not values:
        return -math.inf
    if len(values) <= group:
        return sum(values) / len(values)
    if last_only:
        return sum(values[-group:]) / group
    window = sum(values[:group])
    lowest = window
    for i in range(group, len(values)):
        window += values[i] - values[i - group]
        lowest = min(lowest, window)
    return lowest / group


def _quantile(values: list[float], q: float) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return -math.inf
    position = q * (len(finite) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(finite) - 1)
    return finite[low] + (finite[high] - finite[low]) * (position - low)


def _top(traces: list[Candidate], keep: float) -> list[Candidate]:
    done = completed(traces)
    count = max(1, math.ceil(keep * len(done))) if done else 0
    return sorted(done, key=lambda c: -c.meta["confidence"])[:count]


def _weight(candidate: Candidate) -> float:
    """A vote's weight: its confidence, shifted so every weight is positive (log-prob-based
    confidences are negative)."""
    value = candidate.meta["confidence"]
    return math.exp(value) if value <= 0 else 1.0 + value


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def register_all(register) -> None:
    register("esc", EarlyStoppingSelfConsistency,
             caller=("n", "window", "confidence", "answer_pattern", "max_new_tokens"), reads_logprobs=False)
    register("deepconf", DeepConf, caller=("n", "mode", "warmup", "keep", "group", "top_k", "batch", "consensus",
                                           "answer_pattern", "max_new_tokens"), reads_logprobs=True)
    register("early_rejection", EarlyRejection,
             caller=("n", "threshold", "min_keep", "delimiter", "max_steps", "step_tokens"), reads_logprobs=False)
