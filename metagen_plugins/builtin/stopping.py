"""Stopping criteria. Each returns a per-row bool tensor: a finished row stops, the others go on.

Criteria that read generated text remember the prompt length at their first call (generate()
calls them after each new token), so only the continuation is matched, never the prompt.
"""

from __future__ import annotations

from metagen_hooks import patterns

from ..text_stop import TextCriterion, TextStop, stop_strings  # noqa: F401 (registered below)


class RegexStop(TextCriterion):
    """Stop a row once its continuation matches ``pattern`` (searched with RE2, in time linear
    in the text: see :mod:`metagen_hooks.patterns`)."""

    def __init__(self, pattern: str, tokenizer=None) -> None:
        super().__init__(tokenizer)
        self.pattern = patterns.compile(pattern, "pattern")

    def done(self, text: str) -> bool:
        return self.pattern.search(text) is not None


class StepDelimiter(TextCriterion):
    """Stop a row at the end of a reasoning step: when its continuation ends with ``delimiter``.
    The unit of step-level search (Lightman et al., 2023; Snell et al., 2024)."""

    def __init__(self, delimiter: str = "\n", tokenizer=None) -> None:
        if not delimiter:
            raise ValueError("delimiter must be a non-empty string")
        super().__init__(tokenizer)
        self.delimiter = delimiter

    def done(self, text: str) -> bool:
        return text.endswith(self.delimiter) and bool(text[: -len(self.delimiter)].strip())


class AnswerComplete(RegexStop):
    """Stop a row once it has written a complete final answer: by default ``#### <number>``
    followed by a character that cannot continue the number (GSM8K's answer format)."""

    def __init__(self, pattern: str = r"####\s*-?\d[\d,]*(?:\.\d+)?[^\d,.]", tokenizer=None) -> None:
        super().__init__(pattern, tokenizer)


class ConfidenceStop:
    """Stop weak samples early: a row whose mean log-probability over its last ``window`` tokens
    falls below ``threshold`` after ``min_tokens`` is abandoned (DeepConf, Fu et al., 2025).
    Rows stopped this way are listed in ``self.weak`` (row indices)."""

    def __init__(self, threshold: float, window: int = 8, min_tokens: int = 8) -> None:
        if window < 1 or min_tokens < 1:
            raise ValueError("window and min_tokens must be >= 1")
        self.threshold, self.window, self.min_tokens = threshold, window, min_tokens
        self.history = None
        self.weak: set[int] = set()

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        logprobs = scores.float().log_softmax(-1).gather(1, input_ids[:, -1:]).squeeze(1)
        logprobs = torch.nan_to_num(logprobs, neginf=-1e4)
        self.history = logprobs[:, None] if self.history is None else torch.cat([self.history, logprobs[:, None]], 1)
        if self.history.shape[1] < max(self.min_tokens, self.window):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = self.history[:, -self.window:].mean(1) < self.threshold
        self.weak.update(done.nonzero().flatten().tolist())
        return done.to(input_ids.device)


class TokenBudget:
    """Stop a row after ``max_tokens`` new tokens, independently of generate's own limit."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.prompt_length: int | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1] - 1
        done = input_ids.shape[1] - self.prompt_length >= self.max_tokens
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def register_all(register) -> None:
    # stop_strings=: what they amount to as the Generator's own stop strings, so every host that
    # honours them (Capabilities(stop_strings=True)) runs them with no realiser of its own; how the
    # others run on a serving engine is the engine's (metagen_plugins/engines/<engine>/realisations.py)
    register("stop_strings", stop_strings, caller=("stop",), stop_strings=lambda stop: stop)
    register("regex", RegexStop, caller=("pattern",))
    register("step_delimiter", StepDelimiter, caller=("delimiter",), stop_strings=lambda delimiter="\n": [delimiter])
    register("answer_complete", AnswerComplete, caller=("pattern",))
    register("confidence", ConfidenceStop, caller=("threshold", "window", "min_tokens"))
    register("token_budget", TokenBudget, caller=("max_tokens",))
