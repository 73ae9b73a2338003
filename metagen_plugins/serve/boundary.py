"""The network boundary: what the server refuses before a request reaches a route.

- **Header size** (:class:`BoundedHeaders`): uvicorn's httptools parser reads headers of any
  size; this protocol answers 431 once a request's line and headers pass ``--max-header-bytes``
  and stops reading.
- **Browser drive-by** (:class:`Guard`, an ASGI middleware): a web page the operator opens can
  POST to a server on localhost without a CORS preflight when the body is ``text/plain``, and
  can reach it under its own domain name by DNS rebinding. So every route but ``/health``
  refuses a request whose ``Host`` is not one the server answers to (421), whose ``Origin`` is
  another site's or whose ``Sec-Fetch-Site`` says ``cross-site``/``same-site`` (403); and a POST
  whose body is not ``application/json`` (415), which no browser sends cross-site unasked.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from .errors import APIError

MAX_HEADER_BYTES = 32 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")
OPEN_PATHS = ("/health",)  # load balancers probe it with their own Host


def bounded_headers_protocol(limit: int = MAX_HEADER_BYTES):
    """uvicorn's httptools protocol with a cap of ``limit`` bytes on a request's line and
    headers (431 beyond it); ``None`` when httptools is not installed (uvicorn's h11 then
    applies its own cap through ``h11_max_incomplete_event_size``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class BoundedHeaders(HttpToolsProtocol):
        """Counts the bytes received while a request's headers are incomplete (the parser
        buffers a header's value until its line ends, so the count is kept here, as it arrives)."""

        max_header_bytes = limit
        _in_headers, _header_bytes = True, 0

        def on_message_begin(self) -> None:
            self._in_headers = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_headers, self._header_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_headers = True  # the next request on this connection starts with its headers
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
                body = json.dumps(APIError(431, f"the request's headers are over the server's limit of "
                                                f"{self.max_header_bytes} bytes (--max-header-bytes)",
                                           code="headers_too_large").body()).encode()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
                                     b"application/json\r\ncontent-length: " + str(len(body)).encode()
                                     + b"\r\nconnection: close\r\n\r\n" + body)
                self.transport.close()

    return BoundedHeaders


class Guard:
    """ASGI middleware refusing requests from outside the server's trust boundary (see the
    module docstring). ``hosts``: the ``Host`` names the server answers to (``None``: any, for a
    server bound to every interface with an API key and no ``--allowed-host``)."""

    def __init__(self, app, hosts: set[str] | None) -> None:
        self.app = app
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        error = self.refusal(scope["method"], headers)
        if error is None:
            return await self.app(scope, receive, send)
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, method: str, headers: dict[str, str]) -> APIError | None:
        host = _hostname(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return APIError(421, f"this server does not answer to the host name {host[:80]!r} (a page reaching it "
                                 f"by DNS rebinding sends that); it answers to {', '.join(sorted(self.hosts))}: the "
                                 f"operator adds names with --allowed-host", code="unexpected_host")
        fetch_site = headers.get("sec-fetch-site", "").lower()
        if fetch_site in ("cross-site", "same-site"):
            return APIError(403, "a browser sent this request from another site (Sec-Fetch-Site: "
                                 f"{fetch_site}); metagen serve takes no cross-site requests", code="cross_site")
        origin = headers.get("origin")
        if origin is not None and not self.same_origin(origin, headers.get("host", "")):
            return APIError(403, f"a browser sent this request from the page of another origin ({origin[:80]}); "
                                 f"metagen serve takes no cross-site requests", code="cross_site")
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return APIError(415, f"the request body must be JSON sent as Content-Type: application/json, got "
                                     f"{media[:60] or 'no Content-Type'!r}", code="unsupported_media_type")
        return None


    def same_origin(self, origin: str, host: str) -> bool:
        """Whether a browser's ``Origin`` is this server's own: a name it answers to (or, when it
        answers to any, the very ``Host`` the request was sent to)."""
        if origin == "null":
            return False
        netloc = urlsplit(origin).netloc
        return netloc == host if self.hosts is None else _hostname(netloc) in self.hosts


def _hostname(netloc: str) -> str:
    """The host part of a ``Host`` header or URL authority, lower case, without the port."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
