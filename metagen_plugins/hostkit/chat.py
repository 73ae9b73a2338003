"""Prompts through a model's chat template, for the hosts that apply one (the transformers host;
the remote hosts given ``[host] tokenizer``)."""

from __future__ import annotations

from typing import Sequence

from ..errors import HostError


def chat_enabled(setting: bool | str, tokenizer) -> bool:
    """``[host] chat_template``: "auto" (on when the tokenizer has a template), true or false."""
    return bool(getattr(tokenizer, "chat_template", None)) if setting == "auto" else bool(setting)


def chat_format(tokenizer, enabled: bool, prompt: str, conversation: Sequence[dict[str, str]],
                why_off: str) -> str:
    """The prompt as the last user turn after the ``conversation``'s earlier turns, through the
    chat template when ``enabled``; as it is otherwise, where a conversation is an error
    (``why_off`` says why the template is off and what to do)."""
    if not enabled:
        if conversation:
            raise HostError(why_off)
        return prompt
    return tokenizer.apply_chat_template([*conversation, {"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
