"""Where a remote host's requests go: one in-flight limit for the whole host, spread over the
engine's replicas by least in-flight requests, with a cool-down for a replica that fails.

Every generator of a host (one per prompt, many prompts at once under the runner) takes its
request slots from the same :class:`Replicas`, so ``[host] concurrency`` is the number of
requests in flight on the whole deployment, whatever the number of prompts or the fan-out of
one call. Each request goes to the replica with the fewest requests in flight among those that
are not cooling down; a replica whose request failed (connection refused or reset, 5xx, 429)
is skipped for ``[host] cooldown`` seconds (429: the server's ``Retry-After`` when longer) and
then tried again. When every replica is cooling down, the one that recovers first is used,
so a single-server deployment behaves exactly as before: retries with backoff on that server.

All state here is touched only from the host's event loop thread, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlsplit

from ..errors import HostError

# What makes a replica sit out a cool-down: it refused or dropped the connection, answered 5xx,
# or said it is overloaded. A timeout may be the request's own length, and an invalid request
# would fail anywhere, so neither marks the replica.
COOL_DOWN_KINDS = ("connection", "server", "rate_limit")


@dataclass
class Replica:
    """One server of the deployment, and what the host knows of it."""

    url: str
    in_flight: int = 0  # requests sent and not yet answered
    sent: int = 0  # requests sent, all told
    failed: int = 0  # requests that failed here (any kind)
    down_until: float = 0.0  # monotonic time before which it is skipped when another is up

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class Replicas:
    """The replicas of one deployment and the host-wide in-flight limit."""

    def __init__(self, urls: list[str], concurrency: int, cooldown: float) -> None:
        self.replicas = [Replica(url) for url in urls]
        self.concurrency = concurrency
        self.cooldown = cooldown
        self.peak = 0  # most requests in flight at once on the whole host
        self._gate: asyncio.Semaphore | None = None  # made on the loop that uses it

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def pick(self, avoid: Replica | None = None) -> Replica:
        """The healthy replica with the fewest requests in flight (then the fewest sent, so
        an idle deployment is used round-robin); ``avoid`` (the replica that just failed this
        request) only if no other is healthy. With none healthy, the first to recover."""
        now = time.monotonic()
        up = [r for r in self.replicas if r.healthy(now) and r is not avoid]
        if not up:
            up = [r for r in self.replicas if r.healthy(now)]
        if up:
            return min(up, key=lambda r: (r.in_flight, r.sent))
        return min(self.replicas, key=lambda r: (r is avoid, r.down_until))

    def another_is_up(self, replica: Replica) -> bool:
        """Whether a replica other than ``replica`` can take a request right now (then a failed
        request is re-sent there at once, without backing off)."""
        now = time.monotonic()
        return any(r is not replica and r.healthy(now) for r in self.replicas)

    @asynccontextmanager
    async def slot(self, avoid: Replica | None = None) -> AsyncIterator[Replica]:
        """Wait for one of the host's ``concurrency`` request slots, then hold it and a replica
        (its in-flight count raised) while the request runs."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.concurrency)
        async with self._gate:
            replica = self.pick(avoid)
            replica.in_flight += 1
            replica.sent += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                yield replica
            finally:
                replica.in_flight -= 1

    def failed(self, replica: Replica, kind: str, retry_after: float | None = None) -> None:
        """Record a failed request; a failure that says the server is unwell starts a cool-down."""
        replica.failed += 1
        if kind in COOL_DOWN_KINDS:
            wait = max(self.cooldown, retry_after or 0.0)
            replica.down_until = max(replica.down_until, time.monotonic() + wait)

    def succeeded(self, replica: Replica) -> None:
        """An answer came back: the replica is up again, whatever its cool-down said."""
        replica.down_until = 0.0

    def stats(self) -> list[dict]:
        """Per replica: url, requests sent, failed, in flight, and whether it is cooling down."""
        now = time.monotonic()
        return [{"url": r.url, "sent": r.sent, "failed": r.failed, "in_flight": r.in_flight,
                 "cooling_down": not r.healthy(now)} for r in self.replicas]


def replica_urls(settings: dict, host: str) -> list[str]:
    """The deployment's server URLs from ``[host] url`` or ``[host] urls``, checked."""
    if "url" in settings and "urls" in settings:
        raise HostError(f"[host] url and urls both set for the {host} host: keep urls (every replica, "
                        f"the first one included) and remove url")
    if "urls" in settings:
        urls, what = list(settings["urls"]), "[host] urls"
        if not urls:
            raise HostError(f"[host] urls is empty: list the {host} servers, e.g. "
                            f"urls = [\"http://gpu1:8000\", \"http://gpu2:8000\"]")
    elif "url" in settings:
        urls, what = [settings["url"]], "[host] url"
    else:
        raise HostError(f"no server: set [host] url = \"http://127.0.0.1:8000\" for the {host} host "
                        f"(or urls = [...] for several replicas of one model)")
    cleaned = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HostError(f"{what}: {url!r} is not an http(s) URL; write it as \"http://HOST:PORT\"")
        cleaned.append(url.rstrip("/"))
    repeated = sorted({u for u in cleaned if cleaned.count(u) > 1})
    if repeated:
        raise HostError(f"{what} lists {', '.join(repeated)} more than once; list each replica once")
    return cleaned


def check_limits(concurrency: int, cooldown: float) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise HostError(f"[host] concurrency (requests in flight on the whole host) must be an int >= 1, "
                        f"got {concurrency!r}")
    if cooldown < 0:
        raise HostError(f"[host] cooldown (seconds a failed replica is skipped) must be >= 0, got {cooldown}")
