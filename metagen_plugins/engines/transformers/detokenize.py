"""Incremental detokenization, for streaming the text of tokens as they are decoded."""

from __future__ import annotations

from typing import Callable


class TextDeltas:
    """The new text of each token, released only where it cannot change: the text of all ids
    but the last (the last token's text may still change with the next one: merged spaces, a
    character split across byte tokens), never ending in an incomplete character. So every
    piece is part of the final text, ``tokenizer.decode(ids, skip_special_tokens=True)``;
    :meth:`finish` sends the rest."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = ""

    def finish(self) -> None:
        """Release the rest: the text of every id, once no token will follow."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            delta, self.sent = text[len(self.sent):], text
            self.on_text(delta)

    def __call__(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids[:-1], skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent) or len(text) == len(self.sent):
            return
        delta, self.sent = text[len(self.sent):], text
        self.on_text(delta)
