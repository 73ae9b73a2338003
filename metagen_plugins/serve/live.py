"""Live streaming of plain decoding: the tokens the host decodes, as text deltas, while it
decodes them.

The runner hands the host an ``on_tokens`` callback, called in the host's decode thread with
each new token id; :class:`TokenFeed` moves them onto the server's event loop, and
:class:`TextDeltas` turns the growing id list into text that never has to be taken back. When
the client goes away, the callback raises :class:`ClientGone` at the next token, which stops
that request's decoding (the host fails it alone) instead of finishing work nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("metagen.serve")


class ClientGone(Exception):
    """The streaming client disconnected: its decoding stops."""


class TokenFeed:
    """Token ids from the decode thread to an asyncio queue on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[list[int]] = asyncio.Queue()
        self.gone = threading.Event()

    def __call__(self, ids: list[int]) -> None:  # in the decode thread
        if self.gone.is_set():
            raise ClientGone("the client closed the stream")
        self.loop.call_soon_threadsafe(self.queue.put_nowait, list(ids))

    def drain(self) -> list[int]:
        ids: list[int] = []
        while not self.queue.empty():
            ids.extend(self.queue.get_nowait())
        return ids


class TextDeltas:
    """Incremental detokenization. The text of all ids but the last is released (the last
    token's text may still change with the next one: merged spaces, a character split across
    byte tokens), and never text ending in an incomplete character, so every delta sent is
    part of the final text."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids[:-1], skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def rest(self, final: str) -> str:
        """What remains of the chosen answer's text after what was sent."""
        if final.startswith(self.sent):
            return final[len(self.sent):]
        log.warning("the streamed text %r is not a prefix of the answer %r; sending nothing more",
                    self.sent[-40:], final[:80])
        return ""
