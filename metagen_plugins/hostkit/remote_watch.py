"""A strategy watching its samples on a serving engine (``metagen_hooks.inflight``), for the
remote hosts whose engine streams (:class:`Watching`: the completions hosts, TGI).

A watched call sends each sample as its own streamed request (one sample per request), so one
sample can be stopped alone: the strategy's cancellation cancels that request's asyncio task,
which closes its HTTP stream, and the engine aborts a request whose client went away (vLLM and
TGI both do). The chunks fill a :class:`Stream` per sample on the host's event loop; the
strategy's own thread, waiting for the call, wakes on them, copies them into the
:class:`InFlight` views and calls the strategy's callback, as the in-process host does
(:mod:`.watching`).

Seeds: the call's requests are planned as unwatched (``RemoteGenerator._plan``: the budget's
share, ``samples_per_request``, the next seed per request), then a request of ``k`` samples
seeded ``s`` becomes ``k`` requests seeded ``s, s+1, ..., s+k-1``: vLLM's own seeds for the
children of an ``n > 1`` request (vllm/v1/engine/parallel_sampling.py), so a seeded watched
sample is the unwatched one, and later calls draw the same seeds either way.

The budget is charged what came: each sample's tokens received (a cancelled one's so far), and
each planned request's prompt once (the largest its samples report), as unwatched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from dataclasses import replace

from metagen_hooks import BudgetExceeded, Candidate, Watch
from metagen_hooks.hosting import Seeds
from metagen_hooks.inflight import CANCELLED, InFlight

from .generator import CANCEL_POLL, Failure, Sample

POLL = 0.1  # seconds: the longest the watching thread sleeps without news
FAILED = "error"  # a watched sample whose request failed (it is left out of the results)


class Stream:
    """One watched sample as its request streams: filled on the event loop (:meth:`add`), read
    by the watching thread under ``wake``, which :meth:`add` notifies."""

    def __init__(self, wake: threading.Condition, top_logprobs: int) -> None:
        self.wake, self.top_logprobs = wake, top_logprobs
        self.token_ids: list[int] = []  # the engine's ids, or 0, 1, 2, ... when it sends none
        self.logprobs: list[float] = []
        self.top: list[list[float]] = []
        self.text = ""
        self.ids_known = False
        self.generated = 0  # tokens received, an end-of-sequence token included
        self.prompt_tokens = 0
        self.finish_reason: str | None = None
        self.changes = 0

    @property
    def started(self) -> bool:
        """Whether anything came (a request that failed after this is not sent again)."""
        return self.generated > 0 or bool(self.text)

    def add(self, text: str = "", token_ids: list[int] | None = None, logprobs=(), top=(), *,
            prompt_tokens: int = 0, finish: str | None = None, drop_eos: bool = False) -> None:
        """A chunk: its text, its tokens' ids (None: the engine sends none; then one index per
        token, counted by log-probs, else one per chunk with text), log-probs and top
        log-probs; ``finish``: the sample ended ("stop", "length", :data:`CANCELLED`), its last
        token the end-of-sequence token when ``drop_eos`` (left out, as every host does)."""
        with self.wake:
            count = len(token_ids) if token_ids is not None else len(logprobs) or int(bool(text))
            if token_ids is not None:
                self.ids_known = True
                self.token_ids.extend(token_ids)
            else:
                self.token_ids.extend(range(len(self.token_ids), len(self.token_ids) + count))
            self.logprobs.extend(logprobs)
            self.top.extend(top)
            self.text += text
            self.generated += count
            self.prompt_tokens = max(self.prompt_tokens, prompt_tokens)
            if finish is not None:
                self.finish_reason = finish
                if drop_eos and self.ids_known and self.token_ids:
                    del self.token_ids[-1]
                    del self.logprobs[len(self.token_ids):], self.top[len(self.token_ids):]
            if count or text or finish is not None:  # news for the views (a prompt's ids alone are not)
                self.changes += 1
                self.wake.notify_all()

    def cancelled(self) -> Sample:
        """What came before the sample was cancelled, as :func:`.completions.samples` reads an
        answer: token ids only when the engine sent them, log-probs beside them when aligned."""
        ids, logprobs, meta = list(self.token_ids) if self.ids_known else [], list(self.logprobs), {}
        if logprobs and len(logprobs) != len(ids):
            meta["logprobs"], logprobs = logprobs, []
        return Sample(text=self.text, token_ids=ids, logprobs=logprobs, finish_reason=CANCELLED,
                      prompt_tokens=self.prompt_tokens, completion_tokens=self.generated, meta=meta)


class Watching:
    """A :class:`~.remote.RemoteGenerator` mixin: ``sample``/``extend`` with ``watch=``. The
    generator provides ``watch_request``."""

    watches = True

    async def watch_request(self, text: str, max_new_tokens: int, stop: list[str], seed: int | None, replica,
                            stream: Stream, on_text=None) -> list[Sample]:
        """One sample of ``text`` streamed from ``replica``: each chunk to ``stream.add`` as it
        comes (its text to ``on_text`` too, when set), with ``stream.top_logprobs`` top
        log-probabilities per token; the ``[Sample]`` :meth:`request` would return."""
        raise NotImplementedError

    def _watched(self, jobs, n: int, max_new_tokens: int | None, stop: list[str],
                 watch: Watch) -> list[list[Candidate]]:
        return _Call(self, jobs, self._plan(jobs, n, max_new_tokens), stop, watch).run()


class _Call:
    """One watched call: its samples' requests on the event loop, the callback in the caller's
    thread, cancellations passed from the one to the other."""

    def __init__(self, generator, jobs, planned, stop: list[str], watch: Watch) -> None:
        self.gen, self.jobs, self.stop, self.watch = generator, jobs, stop, watch
        self.planned = planned
        self.requests = [(index, 1, tokens, one) for index, take, tokens, seed in planned
                         for one in Seeds.split(seed, take)]
        self.of = [r for r, (_, take, _, _) in enumerate(planned) for _ in range(take)]  # sample -> planned request
        self.wake = threading.Condition()
        self.streams = [Stream(self.wake, watch.top_logprobs) for _ in self.requests]
        self.prefixes = [jobs[index][2].text if jobs[index][2] is not None else "" for index, *_ in self.requests]
        self.views = [InFlight(index=i, prompt=jobs[index][0]) for i, (index, *_) in enumerate(self.requests)]
        for view, prefix in zip(self.views, self.prefixes):
            view.set_text(prefix)
        self._synced = [0] * len(self.views)
        self._forwarded: set[int] = set()  # samples whose cancellation went to the loop
        self._tasks: list[asyncio.Task] = []
        self._stopping: set[int] = set()  # (on the loop) samples to cancel
        self.on_text = None
        if generator._on_text is not None and len(self.requests) == 1:
            self.on_text, generator._on_text = generator._on_text, None  # the first one-sample call streams

    # -- the caller's thread ----------------------------------------------------------------------

    def run(self) -> list[list[Candidate]]:
        loop = self.gen.host.loop.loop
        future = asyncio.run_coroutine_threadsafe(self._all(), loop)
        future.add_done_callback(lambda _: self._notify())
        try:
            seen = None
            while True:
                with self.wake:
                    if not future.done():
                        self.wake.wait(POLL)
                    finished = future.done()
                    state = self._sync()
                if state != seen and not finished:
                    seen = state
                    self.watch.callback(self.views)
                self._forward(loop)
                if finished:
                    break
            outcomes = future.result()
        except BaseException:  # the callback failed, or the run: stop what still streams
            for view in self.views:
                view.cancel("the call failed")
            self._forward(loop)
            concurrent.futures.wait([future], timeout=30)
            raise
        return self._finish(outcomes)

    def _sync(self) -> tuple[int, ...]:
        """Copy what the streams received since into the views (under ``wake``)."""
        for i, (view, stream) in enumerate(zip(self.views, self.streams)):
            if stream.changes == self._synced[i]:
                continue
            self._synced[i] = stream.changes
            for mine, theirs in ((view.token_ids, stream.token_ids), (view.logprobs, stream.logprobs),
                                 (view.top_logprobs, stream.top)):
                del mine[len(theirs):]
                mine.extend(theirs[len(mine):])
            view.set_text(self.prefixes[i] + stream.text)  # after the tokens: it records their count
            view.finish_reason = stream.finish_reason
        return tuple(self._synced)

    def _forward(self, loop) -> None:
        for i, view in enumerate(self.views):
            if view.cancelled is not None and i not in self._forwarded:
                self._forwarded.add(i)
                loop.call_soon_threadsafe(self._cancel, i)

    def _notify(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def _finish(self, outcomes) -> list[list[Candidate]]:
        """Cancelled samples as they stood, the budget charged, the views' final states."""
        results = []
        for view, stream, outcome in zip(self.views, self.streams, outcomes):
            if outcome is None:  # its task was cancelled
                outcome = [stream.cancelled()]
            elif not isinstance(outcome, Failure) and view.cancelled is not None:  # it ended first
                outcome = [replace(outcome[0], finish_reason=CANCELLED)]
            results.append(outcome)
        tokens, computed, reused = 0, [0] * len(self.planned), [0] * len(self.planned)
        for r, outcome in zip(self.of, results):
            if not isinstance(outcome, Failure):
                [sample] = outcome
                tokens += sample.completion_tokens or len(sample.token_ids)
                computed[r] = max(computed[r], sample.prompt_tokens)
                reused[r] = max(reused[r], sample.prompt_tokens_reused)
        self.gen.budget.charge(tokens_generated=tokens, prompt_tokens_computed=sum(computed),
                               prompt_tokens_reused=sum(reused))
        for view, stream, outcome in zip(self.views, self.streams, results):
            view.finish_reason = (FAILED if isinstance(outcome, Failure) else CANCELLED if view.cancelled
                                  else stream.finish_reason or ("length" if outcome[0].finish_reason == "length"
                                                                else "stop"))
        return self.gen._collect(self.jobs, self.requests, results)

    # -- the event loop -----------------------------------------------------------------------

    async def _all(self) -> list[list[Sample] | Failure | None]:
        """Every sample's request (``None``: cancelled); the run's cancellation (the budget's)
        or a request that raised closes them all."""
        gen = self.gen
        own = asyncio.Semaphore(gen.concurrency) if gen.concurrency is not None else contextlib.nullcontext()

        async def one(i: int):
            index, _, tokens, seed = self.requests[i]
            try:
                async with own:
                    return await gen._with_retries(self.jobs[index][1], 1, tokens, self.stop, seed, self.on_text,
                                                   watched=self.streams[i])
            except asyncio.CancelledError:
                self.streams[i].add(finish=CANCELLED)
                raise

        self._tasks = [asyncio.ensure_future(one(i)) for i in range(len(self.requests))]
        for i in self._stopping:
            self._tasks[i].cancel()
        pending = set(self._tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=CANCEL_POLL)
            failed = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
            if failed is not None or gen.budget.cancelled is not None:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if failed is not None:
                    raise failed
                raise BudgetExceeded(f"the run was cancelled: {gen.budget.cancelled}")
        return [None if task.cancelled() else task.result() for task in self._tasks]

    def _cancel(self, i: int) -> None:
        self._stopping.add(i)
        if self._tasks:
            self._tasks[i].cancel()
