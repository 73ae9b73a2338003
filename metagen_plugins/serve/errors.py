"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every answer that is not a success goes through :class:`APIError`, so a client library
(``openai.BadRequestError`` and friends) shows metagen's own message.
"""

from __future__ import annotations

import re
from typing import Any

# HTTP status -> OpenAI's error ``type`` for it.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "invalid_request_error", 415: "invalid_request_error",
         421: "invalid_request_error", 429: "rate_limit_error", 431: "invalid_request_error", 500: "server_error",
         502: "upstream_error", 503: "server_error", 504: "upstream_timeout"}


class APIError(Exception):
    """A request's failure: HTTP ``status``, a message saying what and how to fix it, the
    request field at fault (``param``, dotted) and a short machine-readable ``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": public(self.message), "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


# What a client never sees (the server's log keeps it): where code lives, and which versions of
# which packages run here, so an error body is no map of the server's software.
_INTERNAL = (
    (re.compile(r"(?:[A-Za-z]:)?[\w./\\-]*[/\\](?:site-packages|dist-packages|lib/python[\d.]+)[/\\]"
                r"[^\s'\",)]*"), "<internal>"),
    (re.compile(r"\b[\w.-]+\.py(?::\d+)?\b"), "<internal>"),
    (re.compile(r"\b(?:at|in) <internal>"), ""),
)
VERSIONS: set[str] = set()  # "distribution version" strings of the installed plugins (set by the app)


def public(message: str) -> str:
    """``message`` without internal file paths, ``file.py:line`` or installed package versions."""
    for versioned in VERSIONS:
        message = message.replace(versioned, versioned.rsplit(" ", 1)[0])
    for pattern, replacement in _INTERNAL:
        message = pattern.sub(replacement, message)
    return message


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


class ClientGone(Exception):
    """The client disconnected before its answer; nothing is sent (logged as 499)."""
