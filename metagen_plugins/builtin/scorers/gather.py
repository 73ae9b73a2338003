"""Concurrent calls to one batched function, merged: the runner scores many prompts' candidates
at the same time, from many worker threads; a model-backed scorer wrapped here runs them in
shared forward passes instead of one small batch per prompt.

Group commit: a caller whose items find the function idle runs it at once with everything
queued; callers arriving while it runs queue up, and the next run takes all of them. No timer:
under load the batches grow by themselves, alone a call runs immediately.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Call(Generic[T, R]):
    def __init__(self, items: Sequence[T]) -> None:
        self.items = list(items)
        self.result: list[R] | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.wake = threading.Event()  # set when finished, or when it is this caller's turn to run


class Gathered(Generic[T, R]):
    """``fn(items) -> results`` (one result per item, in order), safe to call from many threads
    at once; concurrent calls share runs of ``fn``. An exception fails every call of that run."""

    def __init__(self, fn: Callable[[list[T]], list[R]]) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._queue: list[_Call[T, R]] = []
        self._running = False

    def __call__(self, items: Sequence[T]) -> list[R]:
        call: _Call[T, R] = _Call(items)
        with self._lock:
            self._queue.append(call)
            if not self._running:
                self._running = True
                call.wake.set()  # idle: this caller runs now
        while True:
            call.wake.wait()
            if call.finished:
                break
            call.wake.clear()
            self._run()  # our turn: run everything queued (our own call among it)
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self) -> None:
        """One run of ``fn`` over every queued call; then hand the turn to the next caller."""
        with self._lock:
            batch, self._queue = self._queue, []
        flat = [item for call in batch for item in call.items]
        try:
            results = self.fn(flat)
            if len(results) != len(flat):
                raise ValueError(f"{self.fn!r} returned {len(results)} results for {len(flat)} items")
            start = 0
            for call in batch:
                call.result = list(results[start:start + len(call.items)])
                start += len(call.items)
        except BaseException as exc:  # every caller of this run sees the error
            for call in batch:
                call.error = exc
        for call in batch:
            call.finished = True
            call.wake.set()
        with self._lock:
            if self._queue:
                self._queue[0].wake.set()  # it runs the next batch, for everyone queued meanwhile
            else:
                self._running = False
