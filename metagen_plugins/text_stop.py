"""Stop strings as a transformers stopping criterion.

Shared by the built-in ``stop_strings`` component and the transformers host, which realises a
Generator's ``stop=`` argument with it; both import it from here, so neither imports the other.
transformers is imported only when a criterion is built.
"""

from __future__ import annotations


def stop_strings(stop: list[str], tokenizer=None):
    """Stop a row when its continuation reaches any of ``stop``: transformers' StopStringCriteria
    (which matches across token boundaries), or, for a tokenizer it cannot index (one that cannot
    spell its probe text, such as a digits-only vocabulary), metagen's text-matching criterion."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    if not stop or not all(isinstance(s, str) and s for s in stop):
        raise ValueError("stop must be a non-empty list of non-empty strings")
    try:
        return StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop))
    except ValueError:
        return TextStop(list(stop), tokenizer)


class TextCriterion:
    """Base for criteria that look at each row's decoded continuation."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.prompt_length: int | None = None

    def continuations(self, input_ids) -> list[str]:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1] - 1
        return self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)

    def done(self, text: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.tensor([self.done(t) for t in self.continuations(input_ids)],
                            dtype=torch.bool, device=input_ids.device)


class TextStop(TextCriterion):
    """Stop a row once its decoded continuation contains any of ``stops``."""

    def __init__(self, stops: list[str], tokenizer) -> None:
        super().__init__(tokenizer)
        self.stops = list(stops)

    def done(self, text: str) -> bool:
        return any(s in text for s in self.stops)
