"""A strategy watching its samples on the in-process host (``metagen_hooks.inflight``).

The decode thread fills each watched request's :class:`~.batching.Progress` step by step; the
strategy's thread, waiting for its results, wakes on that progress, calls the strategy's
callback with one :class:`InFlight` view per sample, and hands the samples it cancelled back to
the engine, which drops their rows at its next step.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable

from metagen_hooks.inflight import CANCELLED, InFlight, Watch

from .requests import Progress

POLL = 0.1  # seconds: the longest a watcher sleeps without news (a missed wake-up costs no more)


class Watcher:
    """The views of one watched ``sample``/``extend`` call, and its callback loop."""

    def __init__(self, watch: Watch, decode: Callable[[list[int]], str]) -> None:
        self.watch, self.decode = watch, decode
        self.wake = threading.Condition()
        self.views: list[InFlight] = []
        self._rows: list[tuple[Progress | None, int]] = []
        self._seen: tuple = ()

    def progress(self, prompt: str, continuation: list[int], rows: int, streamed: bool) -> Progress | None:
        """Views for one request's ``rows`` samples; their shared Progress when the request
        streams (the batched engine), else None (its views are filled when it is done)."""
        progress = Progress(rows, self.watch.top_logprobs, self.wake) if streamed else None
        for row in range(rows):
            view = InFlight(index=len(self.views), prompt=prompt,
                            _decode=lambda ids, before=list(continuation): self.decode(before + ids))
            if progress is not None:  # the decode thread appends to these very lists
                view.token_ids, view.logprobs, view.top_logprobs = (progress.tokens[row], progress.logprobs[row],
                                                                    progress.top[row])
            self.views.append(view)
            self._rows.append((progress, row))
        return progress

    def follow(self, futures: list[Future]) -> None:
        """Until every future is done: call back on news, pass cancellations to the engine."""
        for future in futures:
            future.add_done_callback(lambda _: self._notify())
        while True:
            with self.wake:
                finished = all(f.done() for f in futures)
                if not finished:
                    self.wake.wait(timeout=POLL)
            self._mark_done()
            state = tuple((len(v.token_ids), v.finish_reason) for v in self.views)
            if state != self._seen and not finished:
                self._seen = state
                self.watch.callback(self.views)
            self._forward()
            if finished:
                return

    def cancel_all(self, reason: str) -> None:
        """Cancel whatever still runs (the strategy failed, or left)."""
        for view in self.views:
            view.cancel(reason)
        self._forward()

    def finish(self, groups) -> None:
        """The results are in: each view takes its candidate's final state, cancelled candidates
        say so, and views that never streamed are shown to the callback once."""
        candidates = [c for group in groups for c in group]
        unseen = False
        for view, (progress, row), c in zip(self.views, self._rows, candidates):
            if progress is None:
                unseen = True
                view.token_ids, view.logprobs = list(c.token_ids), list(c.logprobs)
            view.finish_reason = c.finish_reason
        if unseen:
            self.watch.callback(self.views)

    def _mark_done(self) -> None:
        for view, (progress, row) in zip(self.views, self._rows):
            if progress is not None and view.finish_reason is None and progress.done[row]:
                view.finish_reason = CANCELLED if row in progress.cancel else "stop"

    def _forward(self) -> None:
        for view, (progress, row) in zip(self.views, self._rows):
            if progress is not None and view.cancelled is not None and row not in progress.cancel:
                progress.cancel[row] = view.cancelled

    def _notify(self) -> None:
        with self.wake:
            self.wake.notify_all()
