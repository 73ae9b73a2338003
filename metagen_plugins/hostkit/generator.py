"""The remote Generator of the host kit: a call's samples as HTTP requests to a serving engine.

A subclass says how one request is made (:meth:`RemoteGenerator.request`, to the replica it is
given) and how many samples one request may carry (vLLM takes ``n``; TGI one per request). This
module sends requests through the host's :class:`~.replicas.Replicas`: one in-flight limit
(``[host] concurrency``) shared by every generator of the host, so many prompts at once keep the
engine's batch full without overloading it, each request to the replica with the fewest in
flight. It applies the per-request timeout, retries what is worth retrying (connection errors,
timeouts, 5xx, 429 honouring ``Retry-After``): at once on another replica when one is up (a
replica that failed cools down for ``[host] cooldown`` seconds), else on the same one after an
exponential backoff with jitter. It keeps every sample that succeeded when others fail: the
failures are recorded in :attr:`RemoteGenerator.failures` (and so in ``Result.failures``), and
only a call in which a prompt got no sample at all raises :class:`RemoteError`. The budget is
charged for delivered samples only, once, whichever replica delivered them; each request of a
seeded run gets its own seed (:class:`metagen_hooks.Seeds`).

Requests run on the host's event loop, in a background thread (:mod:`.remote`), so the
synchronous Generator interface works the same inside a notebook's running loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from metagen_hooks import Budget, BudgetExceeded, Candidate, Watch
from metagen_hooks.hosting import DEFAULT_MAX_NEW_TOKENS, Seeds

from ..errors import HostError
from .replicas import Replica, Replicas
from .retrying import RETRYABLE, delay


class RemoteError(HostError):
    """A request (or all requests for a prompt) failed; ``failures`` says which and why."""

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


CANCEL_POLL = 0.05  # seconds between checks of a run's cancellation while its requests are out

@dataclass
class Failure(Exception):
    """A classified request failure. ``kind`` is one of connection, timeout, server, rate_limit,
    invalid (the engine rejected the request: retrying cannot help) or protocol (a malformed
    answer); ``retry_after`` is the server's hint in seconds, if it gave one; ``url`` the replica
    the request went to."""

    kind: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    url: str | None = None  # the replica that failed it

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.kind}{status}: {self.message}"


@dataclass
class Sample:
    """One completion as an engine returns it."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0  # prompt tokens the engine computed for this request, if it says
    prompt_tokens_reused: int = 0  # prompt tokens it took from its prefix cache instead, if it says
    completion_tokens: int = 0  # tokens it generated (when token_ids are not returned)
    meta: dict[str, Any] = field(default_factory=dict)


class _Stopped(Exception):
    """Raised through a streaming request when its on_text callback raised (the cause)."""


class RemoteGenerator:
    """The Generator protocol over an engine's HTTP API. Subclasses implement :meth:`request`
    and :meth:`classify`, and set :attr:`samples_per_request`."""

    samples_per_request: int = 1  # how many of a prompt's n samples one request may carry
    watches = False  # sample/extend take watch= (metagen_hooks.inflight): see .remote_watch.Watching

    def __init__(self, host, budget: Budget, *, timeout: float = 60.0, concurrency: int | None = None,
                 retries: int = 2, backoff: float = 0.5, seed: int | None = None,
                 conversation: Sequence[dict[str, str]] = (), on_text: Callable[[str], None] | None = None) -> None:
        # ``concurrency`` caps this generator's own requests below the host's limit (None: only
        # the host-wide ``[host] concurrency`` applies, which is what the host's generator() does).
        if concurrency is not None and concurrency < 1:
            raise HostError(f"concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise HostError(f"[host] timeout must be > 0 seconds, got {timeout}")
        self.host = host
        self.budget = budget
        self.timeout = timeout
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.seed = seed
        self.seeds = Seeds(seed)  # each request of a seeded run draws its own samples
        self.conversation = [dict(m) for m in conversation]  # earlier chat turns every prompt continues
        self._on_text = on_text if self.stream_request is not None else None  # the first one-sample request's
        self.failures: list[dict[str, Any]] = []

    # -- what a subclass provides --------------------------------------------------------------

    async def request(self, text: str, n: int, max_new_tokens: int, stop: list[str],
                      seed: int | None, replica: Replica) -> list[Sample]:
        """Send one request for ``n`` continuations of ``text`` to ``replica`` (its ``url``; the
        host keeps a client per replica); raise :class:`Failure` on error."""
        raise NotImplementedError

    # Optional: ``async stream_request(text, max_new_tokens, stop, seed, replica, on_text)``, one
    # sample streamed, ``on_text`` called with each new piece of its text; the same Samples as
    # request(). A host whose generator has it streams plain decoding live (host.streams).
    stream_request = None

    def classify(self, exc: BaseException, url: str | None = None) -> Failure:
        """Turn a client library's exception into a :class:`Failure`: the kit's HTTP client's
        (``host.http_client``: a timeout, a connection that failed, a malformed answer) by kind;
        anything else as a connection failure. A host using another client overrides this."""
        try:
            import httpx2
        except ImportError:  # pragma: no cover - the kit's client is not installed
            httpx2 = None
        if httpx2 is not None and isinstance(exc, httpx2.TimeoutException):
            return Failure("timeout", f"{type(exc).__name__}: {exc or 'no answer in time'}")
        if httpx2 is not None and isinstance(exc, (httpx2.ConnectError, httpx2.NetworkError,
                                                   httpx2.RemoteProtocolError)):
            server = getattr(self.host, "server", None) or f"{self.host.name} server"
            return Failure("connection", f"{type(exc).__name__}: {exc or 'the connection failed'} "
                                         f"(is the {server} at {url or self.host.url} running?)")
        if httpx2 is not None and isinstance(exc, httpx2.HTTPError):
            return Failure("protocol", f"{type(exc).__name__}: {exc}")
        return Failure("connection", f"{type(exc).__name__}: {exc}")  # e.g. an OSError the client let through

    def default_max_new_tokens(self) -> int:
        return self.host.config.generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)

    # -- the Generator protocol ----------------------------------------------------------------

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        return self._fan_out([(p, self._format(p), None) for p in prompts], n, max_new_tokens, stop, watch)

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        return self._fan_out([(p.prompt, self._format(p.prompt) + p.text, p) for p in prefixes],
                             n, max_new_tokens, stop, watch)

    def _format(self, prompt: str) -> str:
        # a host written before conversations existed overrides format(prompt) alone
        return self.host.format(prompt, self.conversation) if self.conversation else self.host.format(prompt)

    # -- fan-out, retries, partial failure -----------------------------------------------------

    def _fan_out(self, jobs, n: int, max_new_tokens: int | None, stop, watch=None) -> list[list[Candidate]]:
        if watch is not None:
            return self._watched(jobs, n, max_new_tokens, list(stop or []), watch)
        requests = self._plan(jobs, n, max_new_tokens)
        stream = None
        if self._on_text is not None and len(requests) == 1 and requests[0][1] == 1:
            stream, self._on_text = self._on_text, None  # only the first one-sample request streams
        results = self.host.loop.run(self._gather(jobs, requests, list(stop or []), stream))
        return self._collect(jobs, requests, results)

    def _plan(self, jobs, n: int, max_new_tokens: int | None) -> list[tuple[int, int, int, int | None]]:
        """The requests of a call, ``(job index, samples, max_new_tokens, seed)``: each prompt's
        ``n`` samples as the budget allows them (charged as samples now), ``samples_per_request``
        at most per request, each request with the next seed."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        limit = max_new_tokens if max_new_tokens is not None else self.default_max_new_tokens()
        per_prompt = []
        for _ in jobs:  # the budget shrinks each prompt's request before anything is sent
            per_prompt.append(self.budget.allow(n, limit))
            self.budget.charge(samples=per_prompt[-1][0])
        requests = []
        for index, (count, tokens) in enumerate(per_prompt):
            while count > 0:
                take = min(count, self.samples_per_request)
                requests.append((index, take, tokens, self._next_seed()))
                count -= take
        return requests

    def _watched(self, jobs, n: int, max_new_tokens: int | None, stop: list[str],
                 watch: Watch) -> list[list[Candidate]]:
        """``watch``ed samples: a generator with ``watches = True`` has them (.remote_watch.Watching)."""
        raise HostError(f"the {self.host.name} host does not watch samples as they decode: call "
                        f"metagen_hooks.inflight.sample(generator, ...), which draws them whole")

    def _collect(self, jobs, requests, results) -> list[list[Candidate]]:
        """Each prompt's candidates from the requests' outcomes; failures recorded (and their
        samples given back to the budget); :class:`RemoteError` when a prompt got none."""
        grouped: list[list[Candidate]] = [[] for _ in jobs]
        for (index, take, _, _), outcome in zip(requests, results):
            prompt, _, parent = jobs[index]
            if isinstance(outcome, Failure):
                self.failures.append({"prompt": prompt, "samples": take, "kind": outcome.kind,
                                      "status": outcome.status, "error": outcome.message,
                                      "url": outcome.url})
                self.budget.samples -= take  # not delivered, so not spent against max_samples
                continue
            for sample in outcome:
                grouped[index].append(self._candidate(prompt, parent, sample))
        empty = [jobs[i][0] for i, group in enumerate(grouped) if not group]
        if empty:
            reasons = "; ".join(sorted({f"{f['kind']}: {f['error']}" for f in self.failures[-len(requests):]}))
            raise RemoteError(f"the {self.host.name} {self.host.where()} returned no sample for "
                              f"{len(empty)} of {len(jobs)} prompt(s): {reasons}", list(self.failures))
        return grouped

    def _next_seed(self) -> int | None:
        return self.seeds.next()

    async def _gather(self, jobs, requests, stop: list[str], stream=None) -> list[list[Sample] | Failure]:
        own = asyncio.Semaphore(self.concurrency) if self.concurrency is not None else None

        async def one(index, take, tokens, seed):
            if own is None:
                return await self._with_retries(jobs[index][1], take, tokens, stop, seed, stream)
            async with own:
                return await self._with_retries(jobs[index][1], take, tokens, stop, seed, stream)

        work = asyncio.ensure_future(asyncio.gather(*(one(*r) for r in requests)))
        while True:  # until done, or the run is cancelled: then its requests are closed (vLLM aborts them)
            done, _ = await asyncio.wait([work], timeout=CANCEL_POLL)
            if done:
                return work.result()
            if self.budget.cancelled is not None:
                work.cancel()
                try:
                    await work
                except asyncio.CancelledError:
                    pass
                raise BudgetExceeded(f"the run was cancelled: {self.budget.cancelled}")

    async def _with_retries(self, text, n, max_new_tokens, stop, seed, stream=None,
                            watched=None) -> list[Sample] | Failure:
        """Send one request until it is answered or its attempts run out: ``retries + 1`` per
        replica. After a failure the request goes at once to another replica that is up; with
        none up it waits (``Retry-After``, else exponential backoff) and goes to the first to
        recover. Tokens are charged once, for the answer that is delivered. A streamed request
        (``stream``: its on_text) is not sent again once any of its text went out. A watched one
        (``watched``: its sample's :class:`~.remote_watch.Stream`) goes through
        ``watch_request``, is not sent again once a token came, and is charged by its watcher."""
        pool: Replicas = self.host.replicas
        attempts = (self.retries + 1) * len(pool.replicas)
        avoid, waits = None, 0
        streamed = []

        def on_text(piece: str) -> None:
            streamed.append(piece)
            try:
                stream(piece)
            except BaseException as exc:  # the caller stopped the stream: not the server's fault
                raise _Stopped() from exc

        for attempt in range(attempts):
            problem = None
            async with pool.slot(avoid) as replica:
                try:
                    sent = (self.watch_request(text, max_new_tokens, stop, seed, replica, watched,
                                               on_text if stream else None) if watched is not None
                            else self.stream_request(text, max_new_tokens, stop, seed, replica, on_text) if stream
                            else self.request(text, n, max_new_tokens, stop, seed, replica=replica))
                    samples = await asyncio.wait_for(sent, self.timeout)
                except Failure as failure:
                    problem = failure
                except _Stopped as stopped:
                    raise stopped.__cause__ from None
                except asyncio.TimeoutError:
                    problem = Failure("timeout", f"no answer within {self.timeout:g} s ([host] timeout)")
                except Exception as exc:  # the client library's own errors
                    problem = self.classify(exc)
            if problem is None:
                pool.succeeded(replica)
                if watched is not None:
                    return samples
                charged = sum(s.completion_tokens or len(s.token_ids) for s in samples)
                self.budget.charge(tokens_generated=charged,
                                   prompt_tokens_computed=max((s.prompt_tokens for s in samples), default=0),
                                   prompt_tokens_reused=max((s.prompt_tokens_reused for s in samples), default=0))
                return samples
            problem.url = replica.url
            pool.failed(replica, problem.kind, problem.retry_after)
            if problem.kind not in RETRYABLE or attempt == attempts - 1 or streamed or (watched and watched.started):
                if attempt:
                    problem.message += f" (after {attempt + 1} attempts)"
                return problem
            avoid = replica
            if pool.another_is_up(replica):
                continue  # fail over at once
            await asyncio.sleep(delay(self.backoff, waits, problem.retry_after))
            waits += 1
        raise AssertionError("unreachable")

    def _candidate(self, prompt: str, parent: Candidate | None, sample: Sample) -> Candidate:
        """The returned candidate holds the whole continuation; token ids are kept only when both
        the parent's and the engine's are known, and log-probs only beside them when both the
        parent's and the engine's are there (they are asked for only when a component reads
        them), so the three always align."""
        parent = parent or Candidate(prompt=prompt, text="")
        ids = bool(parent.token_ids) == bool(parent.text) and bool(sample.token_ids) == bool(sample.text)
        logprobs = ids and len(parent.token_ids) == len(parent.logprobs) and len(sample.token_ids) == len(sample.logprobs)
        return Candidate(prompt=prompt, text=parent.text + sample.text,
                         token_ids=list(parent.token_ids) + sample.token_ids if ids else [],
                         logprobs=list(parent.logprobs) + sample.logprobs if logprobs else [],
                         finish_reason=sample.finish_reason, meta=dict(sample.meta))
