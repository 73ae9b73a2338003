"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every answer that is not a success goes through :class:`APIError`, so a client library
(``openai.BadRequestError`` and friends) shows metagen's own message.
"""

from __future__ import annotations

from typing import Any

# HTTP status -> OpenAI's error ``type`` for it.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
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
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


class ClientGone(Exception):
    """The client disconnected before its answer; nothing is sent (logged as 499)."""
