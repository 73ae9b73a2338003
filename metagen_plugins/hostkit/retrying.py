"""When a request to a serving engine is worth sending again, and how long to wait first.

Shared by the remote hosts (``hostkit/generator.py``) and the served scorers
(``builtin/scorers/served.py``), which may not import each other (docs/architecture.md): a
connection error, a timeout, a 5xx or a 429 may pass; any other error status means the engine
rejected the request, and sending it again cannot help.
"""

from __future__ import annotations

import random

RETRYABLE = ("connection", "timeout", "server", "rate_limit")
"""The failure kinds worth another attempt."""


def status_kind(status: int | None) -> str | None:
    """The failure kind of an HTTP error status (None for no status): 429 rate_limit, 408
    timeout, 5xx server, any other error invalid (the engine rejected the request)."""
    if status is None:
        return None
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    return "server" if status >= 500 else "invalid"


def retry_after(headers) -> float | None:
    """The server's ``Retry-After`` in seconds; None when absent or an HTTP date (then the
    exponential backoff applies)."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def delay(backoff: float, waits: int, hint: float | None = None) -> float:
    """Seconds to wait before the next attempt, after ``waits`` earlier waits: the server's
    ``hint`` (Retry-After) if it gave one, else ``backoff * 2**waits``; plus up to 25% jitter, so
    clients that failed together do not all come back at the same moment."""
    base = hint if hint is not None else backoff * 2**waits
    return base * (1 + 0.25 * random.random())
