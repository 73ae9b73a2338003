"""What every serving-engine host shares: a Generator whose samples are HTTP requests.

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
charged for delivered samples only, once, whichever replica delivered them.

Requests run on one event loop per host, in a background thread, so the synchronous Generator
interface works the same inside a notebook's running loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from metagen_hooks import Budget, BudgetExceeded, Candidate, Watch

from ..components import realised
from ..errors import HostError
from ..event_loop import EventLoopThread
from ..retrying import RETRYABLE, delay
from .chat import chat_enabled, chat_format
from .replicas import Replica, Replicas, check_limits, replica_urls


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
        self.conversation = [dict(m) for m in conversation]  # earlier chat turns every prompt continues
        self._on_text = on_text if self.stream_request is not None else None  # the first one-sample request's
        self.failures: list[dict[str, Any]] = []
        self._requests = 0  # numbers seeds so each request of a seeded run draws its own samples

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

    def classify(self, exc: BaseException) -> Failure:
        """Turn a client library's exception into a :class:`Failure`."""
        return Failure("connection", f"{type(exc).__name__}: {exc}")

    def default_max_new_tokens(self) -> int:
        return self.host.config.generation.get("max_new_tokens", 64)

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
        if self.seed is None:
            return None
        self._requests += 1
        return self.seed + self._requests - 1

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
        """The returned candidate holds the whole continuation; token ids and log-probs are kept
        only when both the parent's and the engine's are known, so they always align."""
        parent = parent or Candidate(prompt=prompt, text="")
        aligned = (len(parent.token_ids) == len(parent.logprobs) and bool(parent.token_ids) == bool(parent.text)
                   and len(sample.token_ids) == len(sample.logprobs))
        return Candidate(prompt=prompt, text=parent.text + sample.text,
                         token_ids=list(parent.token_ids) + sample.token_ids if aligned else [],
                         logprobs=list(parent.logprobs) + sample.logprobs if aligned else [],
                         finish_reason=sample.finish_reason, meta=dict(sample.meta))


def chat_template(settings: dict[str, Any], host: str) -> tuple[Any, bool]:
    """``[host] tokenizer`` (loaded) and whether prompts go through its chat template:
    ``chat_template`` "auto" (the default) when it has one; true without a tokenizer is an
    error, as there is no template to apply."""
    wanted = settings.get("chat_template", "auto")
    if "tokenizer" not in settings:
        if wanted is True:
            raise HostError(f"[host] chat_template = true on the {host} host needs [host] tokenizer: the served "
                            f"model's tokenizer (a local path or a built-in model name), whose chat template "
                            f"formats the prompts here")
        return None, False
    from ..models import load_tokenizer, resolve

    try:
        tokenizer = load_tokenizer(resolve(settings["tokenizer"], what="[host] tokenizer"))
    except ImportError as exc:
        raise HostError(f"[host] tokenizer needs transformers ({exc}): pip install 'metagen-plugins[transformers]'") from None
    if wanted is True and not chat_enabled("auto", tokenizer):
        raise HostError(f"[host] chat_template = true, but the tokenizer {settings['tokenizer']!r} has no chat template")
    return tokenizer, chat_enabled(wanted, tokenizer)


class RemoteHost:
    """A serving-engine deployment: where it is, what the configured components become as
    request parameters, and the event loop its requests run on. Subclasses set ``name`` and
    ``generator_class`` and may override :meth:`check`."""

    name = "remote"
    generator_class = RemoteGenerator
    # Requests in flight per replica when [host] concurrency is not set: as many as one server
    # batches at once, so its batch stays full (subclasses set their engine's figure).
    requests_per_replica = 128
    cooldown = 5.0  # seconds a failed replica is skipped, when [host] cooldown is not set
    realiser: str | None = None  # the component metadata key read for request parameters (default: name)

    def __init__(self, config, registry, model=None, tokenizer=None) -> None:
        if model is not None or tokenizer is not None:
            raise HostError(f"the {self.name} host generates on its server; model= and tokenizer= are "
                            f"for the transformers host")
        self.config = config
        self.registry = registry
        urls = replica_urls(config.host, self.name)
        self.url = urls[0]  # the first replica (the only one, with [host] url)
        concurrency = config.host.get("concurrency", self.requests_per_replica * len(urls))
        cooldown = config.host.get("cooldown", self.cooldown)
        check_limits(concurrency, cooldown)
        self.replicas = Replicas(urls, concurrency, cooldown)
        # the runner's prompts in flight when nothing says: as many as requests may be, so the
        # engine's queue stays as full as a client sending everything at once keeps it
        self.default_concurrency = concurrency
        self.tokenizer, self.chat = chat_template(config.host, self.name)
        self.parameters = self.engine_parameters()
        self.check()
        self._clients: dict[str, Any] = {}  # replica URL -> its client (see http_client)
        self.loop = EventLoopThread()

    def engine_parameters(self) -> dict[str, Any]:
        """The configured processors and stopping criteria as this engine's request parameters
        (each component's realiser for this host; validation has checked that one exists)."""
        merged: dict[str, Any] = {}
        for info, values in realised(self.config, self.registry, self.realiser or self.name):
            self._merge(merged, values, info, "")
        return merged

    def _merge(self, merged: dict[str, Any], values: dict[str, Any], info, path: str) -> None:
        """Lists concatenate (in configuration order), tables merge key by key, equal values
        agree; two components setting one parameter to different values is an error."""
        for key, value in values.items():
            if key not in merged:
                merged[key] = value
            elif isinstance(value, list) and isinstance(merged[key], list):
                merged[key] = merged[key] + value
            elif isinstance(value, dict) and isinstance(merged[key], dict):
                merged[key] = dict(merged[key])
                self._merge(merged[key], value, info, f"{path}{key}.")
            elif merged[key] != value:
                raise HostError(f"{info.label()} sets the {self.name} parameter {path + key!r} to {value!r}, "
                                f"but another component already set it to {merged[key]!r}; keep one")

    def check(self) -> None:
        """Reject, before any request, a configuration this engine cannot serve."""

    def where(self) -> str:
        """The deployment in words, for messages: "server at URL" or "servers at URL, URL"."""
        urls = self.replicas.urls
        return f"server at {urls[0]}" if len(urls) == 1 else f"servers at {', '.join(urls)}"

    def http_client(self, url: str | None = None):
        """The ``httpx2`` client of the replica at ``url`` (default: the first), made on the
        host's event loop on first use and kept for the host's life. Its connection pool is as
        large as the host's in-flight limit, so the limit, not the pool, decides how many
        requests the server sees. Sends ``[host] api_key`` as a bearer token when set."""
        url = url or self.url
        clients = self._clients
        if url not in clients:
            import httpx2

            headers = {"Authorization": f"Bearer {self.config.host['api_key']}"} if "api_key" in self.config.host else {}
            limit = self.replicas.concurrency
            clients[url] = httpx2.AsyncClient(
                base_url=url, headers=headers, timeout=httpx2.Timeout(self.config.host.get("timeout", 60.0)),
                limits=httpx2.Limits(max_connections=limit, max_keepalive_connections=limit))
        return clients[url]

    async def aclose_clients(self) -> None:
        """Close the HTTP clients this host opened (a subclass keeping other clients extends this)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def close(self) -> None:
        """Close the clients and stop the event-loop thread; ``run()`` calls this when done."""
        self.loop.run(self.aclose_clients())
        self.loop.close()

    def context(self) -> dict[str, Any]:
        return {}

    @property
    def conversations(self) -> bool:
        """Whether a conversation can be formatted: with a chat template only."""
        return self.chat

    def format(self, prompt: str, conversation: Sequence[dict[str, str]] = ()) -> str:
        """The text sent as the prompt: as it is, or, with ``[host] tokenizer`` and a chat
        template, the ``conversation``'s turns and the prompt as the last user turn, formatted
        here with the served model's template (what the engine's own chat route would do)."""
        return chat_format(self.tokenizer, self.chat, prompt, conversation,
                           f"the {self.name} host formats a conversation with a chat template, which is off "
                           f"here: set [host] tokenizer to the served model's tokenizer (a local path or a "
                           f"built-in model name) so prompts are formatted with its chat template")

    @property
    def streams(self) -> bool:
        """Whether plain decoding streams live (the generator has ``stream_request``)."""
        return self.generator_class.stream_request is not None

    def generator(self, budget: Budget, config=None, *, conversation: Sequence[dict[str, str]] = (),
                  on_text: Callable[[str], None] | None = None) -> RemoteGenerator:
        """A Generator charging ``budget``; ``config`` (same ``[host]``) gives this prompt its own
        components and generation settings, over the host's one in-flight limit and clients."""
        host = self if config is None or config is self.config else self.refined(config)
        settings = host.config.host
        return host.generator_class(host, budget, timeout=settings.get("timeout", 60.0),
                                    retries=settings.get("retries", 2), seed=host.config.generation.get("seed"),
                                    conversation=conversation, on_text=on_text)

    def refined(self, config) -> "RemoteHost":
        """This host for another configuration of the same ``[host]``: a view with that
        configuration's request parameters, sharing the replicas (so the one in-flight limit
        and failover), the clients and the event loop. Views are kept for the 64 most recent
        configurations; a configuration this engine cannot serve fails here, as at startup."""
        import copy
        import json

        if config.host != self.config.host:
            raise HostError("a per-prompt configuration must keep the host's [host] settings")
        key = json.dumps({k: getattr(config, k) for k in ("generation", "processors", "stopping", "scorer")},
                         sort_keys=True, default=repr)
        views, lock = self.__dict__.setdefault("_views", {}), self.__dict__.setdefault("_views_lock", threading.Lock())
        with lock:
            view = views.pop(key, None)
        if view is None:
            view = copy.copy(self)  # shallow: replicas, clients and loop are shared
            view.config = config
            if hasattr(self, "sampling"):
                from ..components import sampling

                view.sampling = sampling(config, self.registry)
            view.parameters = view.engine_parameters()
            view.check()
        with lock:
            while len(views) >= 64:
                views.pop(next(iter(views)))
            views[key] = view  # most recent last
        return view
