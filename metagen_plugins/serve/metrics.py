"""Prometheus metrics of one server (``GET /metrics``), on prometheus-client.

Each app has its own registry, so two servers in one process (tests) never share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Meta-generation runs take from milliseconds (a cached greedy answer) to minutes (a tree search).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("metagen_requests", "Requests answered, by route, profile and HTTP status",
                                ["route", "profile", "status"], registry=r)
        self.in_flight = Gauge("metagen_requests_in_flight", "Requests admitted and not yet answered (running "
                               "or queued)", ["profile"], registry=r)
        self.rejected = Counter("metagen_requests_rejected", "Requests refused with 429 (queue full)",
                                ["profile"], registry=r)
        self.cancelled = Counter("metagen_requests_cancelled", "Requests whose client went away before the "
                                 "answer, by whether their work was still queued (cancelled), running "
                                 "(finished and discarded) or streaming tokens (decoding stopped)",
                                 ["profile", "stage"], registry=r)
        self.tokens_generated = Counter("metagen_tokens_generated", "Tokens generated over all candidates",
                                        ["profile"], registry=r)
        self.prompt_tokens_computed = Counter("metagen_prompt_tokens_computed", "Prompt tokens prefilled",
                                              ["profile"], registry=r)
        self.prompt_tokens_reused = Counter("metagen_prompt_tokens_reused", "Prompt tokens reused from a "
                                            "prefix cache", ["profile"], registry=r)
        self.samples = Counter("metagen_samples", "Candidates sampled", ["profile"], registry=r)
        self.latency = Histogram("metagen_request_latency_seconds", "Time from admission to answer, by "
                                 "profile and strategy", ["profile", "strategy"], buckets=LATENCY_BUCKETS,
                                 registry=r)

    def record_run(self, profile: str, strategy: str, spent: dict, latency: float) -> None:
        self.tokens_generated.labels(profile).inc(spent["tokens_generated"])
        self.prompt_tokens_computed.labels(profile).inc(spent["prompt_tokens_computed"])
        self.prompt_tokens_reused.labels(profile).inc(spent["prompt_tokens_reused"])
        self.samples.labels(profile).inc(spent["samples"])
        self.latency.labels(profile, strategy).observe(latency)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
