"""The host kit: what a host talking to a serving engine builds on, public and versioned with
the contract (docs/host-kit.md). Its engine-free half is in the contract
(:mod:`metagen_hooks.hosting`: capabilities, the budget protocol, seeded streams; the errors in
:mod:`metagen_hooks.errors`); this half needs an event loop and an HTTP client:

- :mod:`.remote` and :mod:`.generator`: :class:`RemoteHost` and :class:`RemoteGenerator`, the
  remote-host base (fan-out of a call's samples as requests, per-request timeouts, retries,
  partial failures, budget charging, seeds, conversations and streaming); a subclass says how one
  request is made;
- :mod:`.replicas`: one in-flight limit over an engine's replicas, failover and cool-down;
- :mod:`.completions`: OpenAI's ``/v1/completions`` protocol (request body, answers, streamed
  chunks, error answers) as :class:`CompletionsGenerator`;
- :mod:`.chat`: prompts through a model's chat template;
- :mod:`.remote_watch`: samples watched and cancelled while their requests stream;
- :mod:`.retrying`: which failures are worth another attempt, and how long to wait;
- :mod:`.event_loop`: an asyncio loop in a thread, for synchronous callers;
- :mod:`.lazy`: :func:`lazy_host` and :func:`lazy_command`, an engine's host and command
  registered without importing them (its registration stays cheap).

Also here, from metagen's core, the rules every host follows: :func:`sampling` (whether a
configuration samples), :func:`reads_logprobs` (whether a component of the run reads the
samples' log-probabilities, so whether to ask the engine for them) and :func:`realised` (the
configured components as an engine's request parameters). Importing the kit imports no HTTP client: each is imported where a request is made.
"""

from __future__ import annotations

from ..components import reads_logprobs, realised, sampling
from .chat import chat_enabled, chat_format
from .completions import INCLUDE_STOP, CompletionsGenerator, request_body, samples, status_failure
from .event_loop import EventLoopThread
from .generator import Failure, RemoteError, RemoteGenerator, Sample
from .lazy import Command, lazy_command, lazy_host
from .remote import REMOTE_SETTINGS, RemoteHost, chat_template
from .remote_watch import Stream, Watching
from .replicas import Replica, Replicas, replica_urls
from .retrying import RETRYABLE, delay, retry_after, status_kind

__all__ = [
    "Command",
    "CompletionsGenerator",
    "EventLoopThread",
    "Failure",
    "INCLUDE_STOP",
    "REMOTE_SETTINGS",
    "RETRYABLE",
    "RemoteError",
    "RemoteGenerator",
    "RemoteHost",
    "Replica",
    "Replicas",
    "Sample",
    "Stream",
    "Watching",
    "chat_enabled",
    "chat_format",
    "chat_template",
    "delay",
    "lazy_command",
    "lazy_host",
    "reads_logprobs",
    "realised",
    "replica_urls",
    "request_body",
    "retry_after",
    "samples",
    "sampling",
    "status_failure",
    "status_kind",
]
