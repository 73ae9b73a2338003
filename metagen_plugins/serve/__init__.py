"""``metagen serve``: meta-generation strategies behind an OpenAI-compatible HTTP API.

    metagen serve --config profiles.toml --port 8000 --api-key "$KEY"

Any OpenAI client (the ``openai`` SDK, LangChain, chat UIs, evaluation harnesses) then picks a
profile with ``model="NAME"`` and gets the strategy's chosen answer, with ``usage`` counting
every candidate. Built on FastAPI and uvicorn (the stack vLLM's own OpenAI server runs on).

Modules: ``boundary`` (header size, Host, Origin, JSON only), ``profiles`` (named
configurations, request refinement, caps), ``policy`` (what a caller may change), ``schemas``
(request bodies), ``runners`` (runners shared per host, admission and 429), ``answer``
(responses and SSE chunks), ``failures`` (a failed run's HTTP status), ``metrics``
(Prometheus), ``app`` (the routes and authentication). The trust boundary they keep is
docs/security.md.
"""

from __future__ import annotations

import os
import sys
from typing import Any

API_KEY_ENV = "METAGEN_API_KEY"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def build_app(config: Any = None, *, registry=None, api_key: str | None = None, concurrency: int | None = None,
              max_queue: int = 256, max_body_bytes: int | None = None, keep_traces: int = 1000,
              objects: dict[str, Any] | None = None, hosts: set[str] | None = LOOPBACK_HOSTS,
              max_prompt_chars: int | None = None, request_timeout: float | None = None,
              unisolated_code: bool = False):
    """A ready FastAPI app serving ``config`` (a file path of one profile or a ``[profiles]``
    table; ``None``: the packaged default). Loads every profile's host now. ``hosts``: the
    ``Host`` header names it answers to (default: loopback's; ``None``: any)."""
    from .. import get_registry
    from .app import MAX_BODY_BYTES, MAX_PROMPT_CHARS, REQUEST_TIMEOUT, Server, create_app
    from .profiles import load_profiles

    registry = registry or get_registry()
    profiles = load_profiles(config, registry, unisolated_code=unisolated_code)
    server = Server(profiles, registry, api_key=api_key, concurrency=concurrency, max_queue=max_queue,
                    max_body_bytes=max_body_bytes or MAX_BODY_BYTES, keep_traces=keep_traces, objects=objects,
                    max_prompt_chars=max_prompt_chars or MAX_PROMPT_CHARS,
                    request_timeout=request_timeout or REQUEST_TIMEOUT)
    return create_app(server, hosts=set(hosts) if hosts is not None else None)


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, *, max_header_bytes: int | None = None,
                   **options: Any):
    """The uvicorn configuration ``metagen serve`` runs ``app`` with: its HTTP protocol caps a
    request's headers at ``max_header_bytes`` (431 beyond; see :mod:`.boundary`)."""
    import uvicorn

    from .boundary import MAX_HEADER_BYTES, bounded_headers_protocol

    limit = max_header_bytes or MAX_HEADER_BYTES
    protocol = bounded_headers_protocol(limit)
    if protocol is None:
        options.update(http="h11", h11_max_incomplete_event_size=limit)
    else:
        options["http"] = protocol
    return uvicorn.Config(app, host=host, port=port, **options)


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="a TOML configuration (served as one profile named after the file) or a "
                        "file of [profiles.NAME] tables; default: the packaged configuration of `metagen run`")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 exposes the server to the network: set an API key)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every route but /health "
                        f"(default: ${API_KEY_ENV} when set)")
    parser.add_argument("--concurrency", type=int, help="prompts run at once per host (default: [run] "
                        "concurrency, else the host's default)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests queued per host beyond those "
                        "running before new ones get 429 (default 256)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    parser.add_argument("--keep-traces", type=int, default=1000, help="recent requests whose trace "
                        "GET /v1/metagen/traces/ID returns (default 1000)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host header name the server answers to besides loopback's and the bound address "
                        "(repeatable; the name clients use behind a proxy). Others get 421: a web page cannot reach "
                        "the server through DNS rebinding")
    parser.add_argument("--max-header-bytes", type=int, default=32 * 1024, help="largest request line and "
                        "headers (default 32 KiB; beyond: 431)")
    parser.add_argument("--max-prompt-chars", type=int, default=131072, help="characters of one request's prompts "
                        "and messages, checked before tokenization (default 131072)")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may run before "
                        "its work is stopped and it gets 504 (default 600)")
    parser.add_argument("--allow-unisolated-code", action="store_true", help="serve profiles whose components run "
                        "code without full sandbox isolation (by default the server refuses to start: a caller "
                        "could reach the host through generated code)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def main(args) -> int:
    """Run the server until interrupted."""
    import uvicorn

    from .. import get_registry
    from ..errors import ConfigError

    for flag, value, least in (("--concurrency", args.concurrency, 1), ("--max-queue", args.max_queue, 0),
                               ("--max-body-bytes", args.max_body_bytes, 1), ("--port", args.port, 0),
                               ("--max-header-bytes", args.max_header_bytes, 1024),
                               ("--max-prompt-chars", args.max_prompt_chars, 1),
                               ("--request-timeout", args.request_timeout, 0.001)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    loopback = args.host in LOOPBACK_HOSTS or args.host.startswith("127.")
    if api_key is None and not loopback:
        raise ConfigError(f"--host {args.host} would let other machines reach a server without an API key, and "
                          f"anyone who can connect could spend this machine's compute: set --api-key (or "
                          f"${API_KEY_ENV}), or bind 127.0.0.1")
    # the Host names answered: loopback's, the bound address, --allowed-host; any, when bound to
    # every interface with a key and no --allowed-host (clients then use names the server cannot know)
    everywhere = args.host in ("0.0.0.0", "::", "")
    hosts = None if everywhere and not args.allowed_host else {*LOOPBACK_HOSTS, args.host, *args.allowed_host}
    if args.allow_unisolated_code:
        print("metagen serve: --allow-unisolated-code: components that run code may run without full sandbox "
              "isolation", file=sys.stderr)
    try:  # weight-loading progress bars are noise in a server's log (as in metagen run)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    registry = get_registry(args.plugins_dir, reload=args.plugins_dir is not None)
    app = build_app(args.config, registry=registry, api_key=api_key, concurrency=args.concurrency,
                    max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, keep_traces=args.keep_traces,
                    hosts=hosts, max_prompt_chars=args.max_prompt_chars, request_timeout=args.request_timeout,
                    unisolated_code=args.allow_unisolated_code)
    names = ", ".join(sorted(app.state.server.profiles))
    print(f"metagen serve: models {names} on http://{args.host}:{args.port}/v1"
          + ("" if api_key else " (no API key)"), file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, max_header_bytes=args.max_header_bytes,
                                  log_level=args.log_level)).run()
    return 0
