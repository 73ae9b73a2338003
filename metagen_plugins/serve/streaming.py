"""Streamed answers (``"stream": true``) beyond sending a finished answer whole.

- Plain decoding streams live (:func:`live`): the runner hands the host an ``on_text``
  callback, called in the host's own thread with each new piece of text; :class:`TextFeed`
  moves the pieces onto the server's event loop. When the client goes away, the callback raises
  :class:`StreamClosed` at the next piece, which stops that request's decoding (the host fails
  it alone) instead of finishing work nobody reads.
- A search strategy with ``metagen.progress`` (:func:`progressing`) starts its stream at once
  and sends what it has spent so far as SSE comments, which standard clients skip.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from . import answer
from .errors import APIError, ClientGone
from .failures import answered

log = logging.getLogger("metagen.serve")
PROGRESS_EVERY = 1.0  # seconds between progress comments of a streamed search (metagen.progress)
PROGRESS_KEYS = ("samples", "tokens_generated", "prompt_tokens_computed", "prompt_tokens_reused", "flops")


class StreamClosed(Exception):
    """Raised into the host's thread when the streaming client has gone: its decoding stops."""


class TextFeed:
    """Text pieces from the host's thread to an asyncio queue on ``loop``; what was sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.gone = threading.Event()
        self.sent = ""

    def __call__(self, text: str) -> None:  # in the host's thread
        if self.gone.is_set():
            raise StreamClosed("the client closed the stream")
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


async def disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def response(events) -> StreamingResponse:
    """Server-sent events (an iterable or async iterable of ``data:`` blocks) as the response."""
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def live(server, request: Request, route: str, profile, config, prompt: str,
               conversation: list[dict[str, str]] | None, options: dict[str, Any],
               include_usage: bool, on_end=lambda status: None) -> StreamingResponse:
    """Plain decoding streamed as it decodes: the response starts with the first text (a
    failure before it keeps its HTTP status); a failure after it ends the stream with an error
    event; a client that goes away stops the decoding at its next token. On a host that does
    not stream, the answer is sent whole once it is ready."""
    feed = TextFeed(asyncio.get_running_loop())
    extras: dict[str, Any] = {"on_text": feed}
    if conversation:
        extras["conversation"] = conversation
    waited = asyncio.wrap_future(server.start(profile, config, prompt, **extras))
    first = asyncio.ensure_future(feed.queue.get())
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait([first, waited, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not first.done():
        first.cancel()
        if not waited.done():  # the client left before anything was decoded
            feed.gone.set()
            stage = "queued" if waited.cancel() else "running"
            server.metrics.cancelled.labels(profile.name, stage).inc()
            on_end(499)
            raise ClientGone()
        try:
            answered(waited, config)  # an error here keeps its HTTP status
        except APIError as exc:
            on_end(exc.status)
            raise
    rid = answer.response_id(route)
    stream = answer.Stream(route, rid, profile.name, include_usage)

    async def events():
        ended = False
        try:
            for event in stream.start():
                yield event
            text = first.result() if first.done() else None
            while text is not None:
                feed.sent += text
                for event in stream.text(text):
                    yield event
                getter = asyncio.ensure_future(feed.queue.get())
                await asyncio.wait([getter, waited], return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    text = getter.result()
                else:
                    getter.cancel()
                    text = feed.drain() or None
            try:
                final = answered(waited, config)
            except APIError as exc:
                ended = True
                for event in stream.error(exc.body()):
                    yield event
                return
            ext = answer.extension(final, profile.name, rid, options["candidates"])
            server.keep(rid, profile, [final])
            ended = True
            for event in [*stream.text(feed.rest(final.best.text)), *stream.end(final, ext)]:
                yield event
        finally:
            feed.gone.set()  # a client that left mid-stream stops the decoding
            if not ended:
                server.metrics.cancelled.labels(profile.name, "streaming").inc()
            on_end(200 if ended else 499)

    return response(events())


def progressing(server, route: str, profile, config, prompt: str, conversation: list[dict[str, str]] | None,
                options: dict[str, Any], include_usage: bool, on_end=lambda status: None) -> StreamingResponse:
    """A search strategy streamed with ``metagen.progress``: the stream starts at once and,
    until the answer is chosen, sends every ``PROGRESS_EVERY`` seconds what the run has spent
    so far as an SSE comment (``: metagen progress {...}``), which standard clients ignore;
    then the answer as usual. Having started, a failure is an error event, not a status."""
    future = server.start(profile, config, prompt, **({"conversation": conversation} if conversation else {}))
    waited = asyncio.wrap_future(future)
    rid = answer.response_id(route)
    stream = answer.Stream(route, rid, profile.name, include_usage)

    async def events():
        status = 499
        limit, source = server.deadline(options)
        deadline = asyncio.get_running_loop().time() + limit
        try:
            for event in stream.start():
                yield event
            while not waited.done():
                await asyncio.wait([waited], timeout=PROGRESS_EVERY)
                if not waited.done() and asyncio.get_running_loop().time() > deadline:
                    server.cancel(profile, [future], "the request's deadline passed")
                    status = 504
                    for event in stream.error(APIError(504, f"the request ran past its deadline of {limit:g} s "
                                                            f"({source}); its work was stopped",
                                                       code="deadline_exceeded").body()):
                        yield event
                    return
                if not waited.done():
                    spent = future.budget.spent()
                    yield f": metagen progress {json.dumps({k: spent[k] for k in PROGRESS_KEYS})}\n\n"
            try:
                final = answered(waited, config)
            except APIError as exc:
                status = exc.status
                for event in stream.error(exc.body()):
                    yield event
                return
            ext = answer.extension(final, profile.name, rid, options["candidates"])
            server.keep(rid, profile, [final])
            for event in [*stream.text(final.best.text), *stream.end(final, ext)]:
                yield event
            status = 200
        finally:
            if status == 499:  # the client left: its queued work never starts, its running work stops
                server.cancel(profile, [future], "the client went away")
            on_end(status)

    return response(events())
