"""Live streaming of plain decoding: the text the host decodes, while it decodes it.

The runner hands the host an ``on_text`` callback, called in the host's own thread with each
new piece of text; :class:`TextFeed` moves the pieces onto the server's event loop. When the
client goes away, the callback raises :class:`ClientGone` at the next piece, which stops that
request's decoding (the host fails it alone) instead of finishing work nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("metagen.serve")


class ClientGone(Exception):
    """The streaming client disconnected: its decoding stops."""


class TextFeed:
    """Text pieces from the host's thread to an asyncio queue on ``loop``; what was sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.gone = threading.Event()
        self.sent = ""

    def __call__(self, text: str) -> None:  # in the host's thread
        if self.gone.is_set():
            raise ClientGone("the client closed the stream")
        self.loop.call_soon_threadsafe(self.queue.put_nowait, text)

    def drain(self) -> str:
        pieces = []
        while not self.queue.empty():
            pieces.append(self.queue.get_nowait())
        return "".join(pieces)

    def rest(self, final: str) -> str:
        """What remains of the chosen answer's text after what was sent (normally nothing)."""
        if final.startswith(self.sent):
            return final[len(self.sent):]
        log.warning("the streamed text %r is not a prefix of the answer %r; sending nothing more",
                    self.sent[-40:], final[:80])
        return ""
