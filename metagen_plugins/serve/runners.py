"""The runners behind the profiles, and the bound on work each takes.

Profiles whose ``[host]`` tables are equal share one :class:`~metagen_plugins.runner.Runner`
(one loaded model or one engine client), so concurrent clients of different profiles batch
together; each request passes its (refined) configuration to ``Runner.submit``, on every host.

Each runner admits at most ``concurrency + max_queue`` requests (running or queued), whatever
their refinements; beyond that a request gets 429 with ``Retry-After``, the expected wait from
recent latencies.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from ..config import SECTIONS, Config
from ..runner import Runner
from .errors import APIError
from .profiles import Profile


def config_key(config: Config) -> str:
    return json.dumps({k: getattr(config, k) for k in SECTIONS}, sort_keys=True, default=repr)


class Lane:
    """One runner and its admission count: at most ``limit`` requests in it at once."""

    def __init__(self, runner: Runner, max_queue: int) -> None:
        self.runner = runner
        self.limit = runner.concurrency + max_queue
        self.pending = 0
        self.latencies: deque[float] = deque(maxlen=64)
        self._lock = threading.Lock()

    def admit(self) -> None:
        with self._lock:
            if self.pending >= self.limit:
                raise APIError(429, f"the server is at its limit of {self.limit} requests in progress for this "
                                    f"model ({self.runner.concurrency} running, the rest queued); retry after "
                                    f"{self.retry_after()} s", code="queue_full",
                               headers={"Retry-After": str(self.retry_after())})
            self.pending += 1

    def release(self, latency: float | None = None) -> None:
        with self._lock:
            self.pending -= 1
            if latency is not None:
                self.latencies.append(latency)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead over the workers, at the mean
        recent latency (at least 1, at most 60)."""
        mean = sum(self.latencies) / len(self.latencies) if self.latencies else 1.0
        return max(1, min(60, math.ceil(mean * (self.pending - self.runner.concurrency + 1)
                                        / self.runner.concurrency)))


class Runners:
    """Every profile's lane; ``submit`` admits, then starts a request on the right runner."""

    def __init__(self, profiles: dict[str, Profile], registry, *, concurrency: int | None = None,
                 max_queue: int = 256, objects: dict[str, Any] | None = None) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.lanes: dict[str, Lane] = {}
        try:
            for profile in profiles.values():
                key = profile.host_key
                if key not in self.lanes:
                    same = [p.config.run.get("concurrency") for p in profiles.values() if p.host_key == profile.host_key]
                    workers = concurrency or max([c for c in same if c] or [0]) or None
                    runner = Runner(profile.config, concurrency=workers, registry=registry, **(objects or {}))
                    self.lanes[key] = Lane(runner, max_queue)
                profile.lane_key = key
        except BaseException:
            self.close()
            raise

    def lane(self, profile: Profile, config: Config) -> tuple[Lane, Config | None]:
        """The lane for ``profile`` run with ``config``, and the config to pass to submit (None:
        the runner's own)."""
        lane = self.lanes[profile.lane_key]
        if config is lane.runner.config or config_key(config) == config_key(lane.runner.config):
            return lane, None
        return lane, config

    def submit(self, profile: Profile, config: Config, prompt: str, **extras: Any) -> tuple[Lane, "Future"]:
        """Admit (or 429) and start ``prompt`` (``extras``: ``Runner.submit``'s conversation and
        on_text); the caller must ``lane.release()`` when done."""
        lane, per_prompt = self.lane(profile, config)
        lane.admit()
        try:
            return lane, lane.runner.submit(prompt, config=per_prompt, raise_errors=True, **extras)
        except BaseException:
            lane.release()
            raise

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.runner.close()

