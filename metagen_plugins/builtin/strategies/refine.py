"""Refinement: improve a candidate with feedback from a scorer (survey sec. 4.3)."""

from __future__ import annotations

from metagen_hooks import BudgetExceeded, Candidate, Result

from metagen_hooks import selection
from metagen_hooks.run import Run


class SelfRepair:
    """Self-repair with a process verifier's feedback (after Chen et al., 2024; Olausson et al.,
    2024): sample; if the scorer marks a step wrong, cut the candidate back to before its first
    wrong step and regenerate from there, up to ``rounds`` times. Without step scores, a
    rejected candidate is regenerated from scratch."""

    def __init__(self, rounds: int = 3, threshold: float = 1.0, delimiter: str = ". ",
                 max_new_tokens: int | None = None) -> None:
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        self.rounds, self.threshold, self.delimiter = rounds, threshold, delimiter
        self.max_new_tokens = max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("self_repair", prompt, generator, scorer, budget)
        drawn = run.sample(1, self.max_new_tokens, round=0)
        candidates, scores = list(drawn), run.score(drawn)
        for attempt in range(1, self.rounds + 1):
            if not candidates or scores[-1] >= self.threshold:
                break
            prefix = self._correct_prefix(run, candidates[-1])
            run.trace.append({"event": "repair", "round": attempt, "kept_text": prefix.text})
            if prefix.text:
                [drawn] = run.sample(1, self.max_new_tokens, prefixes=[prefix], round=attempt)
            else:
                drawn = run.sample(1, self.max_new_tokens, round=attempt)
            if not drawn:
                break
            candidates += drawn
            scores += run.score(drawn, round=attempt)
        return run.result(candidates[selection.argmax(scores)] if candidates else None, candidates, scores,
                          rule="first accepted, else best")

    def _correct_prefix(self, run: Run, candidate: Candidate) -> Candidate:
        """The candidate's text up to (not including) its first wrong step; the Generator
        tokenizes a prefix given as text only."""
        empty = Candidate(prompt=candidate.prompt, text="")
        if not hasattr(run.scorer, "score_steps"):
            return empty
        [steps] = run.scorer.score_steps(run.prompt, [candidate])
        good = next((i for i, s in enumerate(steps) if s < self.threshold), len(steps))
        pieces = candidate.text.split(self.delimiter)
        if good == 0 or good >= len(pieces):
            return empty
        return Candidate(prompt=candidate.prompt, text=self.delimiter.join(pieces[:good]) + self.delimiter)


class SelfRefine:
    """Self-refine (Madaan et al., 2023): ask the model to revise its answer given feedback.
    Each round the scorer's verdict fills ``template`` (fields ``{prompt}``, ``{answer}``,
    ``{score}``) and the revision is scored in turn; stops at ``threshold`` or after ``rounds``.
    For instruction-following models."""

    def __init__(self, rounds: int = 2, threshold: float = 1.0,
                 template: str = ("{prompt}\n\nA previous answer was:\n{answer}\n\nA checker scored it "
                                  "{score:.2f} out of 1. Write an improved answer."),
                 max_new_tokens: int | None = None) -> None:
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        try:
            template.format(prompt="", answer="", score=0.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may use only {{prompt}}, {{answer}} and {{score}}: {exc}") from None
        self.rounds, self.threshold, self.template = rounds, threshold, template
        self.max_new_tokens = max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("self_refine", prompt, generator, scorer, budget)
        candidates = run.sample(1, self.max_new_tokens, round=0)
        scores = run.score(candidates)
        for attempt in range(1, self.rounds + 1):
            if not candidates or scores[-1] >= self.threshold:
                break
            revision_prompt = self.template.format(prompt=prompt, answer=candidates[-1].text, score=scores[-1])
            try:
                [[revised]] = generator.sample([revision_prompt], 1, max_new_tokens=self.max_new_tokens)
            except BudgetExceeded as exc:  # keep what we have
                run.trace.append({"event": "stopped", "reason": str(exc)})
                break
            revised = Candidate(prompt=prompt, text=revised.text, token_ids=revised.token_ids,
                                logprobs=revised.logprobs, finish_reason=revised.finish_reason,
                                meta={"revision_prompt": revision_prompt})
            run.trace.append({"event": "candidate", "round": attempt, "candidate": revised.to_dict()})
            candidates.append(revised)
            scores += run.score([revised], round=attempt)
        return run.result(candidates[selection.argmax(scores)] if candidates else None, candidates, scores,
                          rule="best scored revision")


def register_all(register) -> None:
    register("self_repair", SelfRepair, caller=("rounds", "threshold", "delimiter", "max_new_tokens"), reads_logprobs=False)
    register("self_refine", SelfRefine, caller=("rounds", "threshold", "max_new_tokens"), reads_logprobs=False)
