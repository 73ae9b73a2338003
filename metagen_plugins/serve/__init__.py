"""``metagen serve``: meta-generation strategies behind an OpenAI-compatible HTTP API.

    metagen serve --config profiles.toml --port 8000 --api-key "$KEY"

Any OpenAI client (the ``openai`` SDK, LangChain, chat UIs, evaluation harnesses) then picks a
profile with ``model="NAME"`` and gets the strategy's chosen answer, with ``usage`` counting
every candidate. Built on FastAPI and uvicorn (the stack vLLM's own OpenAI server runs on).

Modules: ``profiles`` (named configurations, request refinement, caps), ``schemas`` (request
bodies), ``runners`` (runners shared per host, admission and 429), ``answer`` (responses and
SSE chunks), ``failures`` (a failed run's HTTP status), ``metrics`` (Prometheus), ``app`` (the
routes and authentication).
"""

from __future__ import annotations

import os
import sys
from typing import Any

API_KEY_ENV = "METAGEN_API_KEY"


def build_app(config: Any = None, *, registry=None, api_key: str | None = None, concurrency: int | None = None,
              max_queue: int = 256, max_body_bytes: int | None = None, keep_traces: int = 1000,
              objects: dict[str, Any] | None = None):
    """A ready FastAPI app serving ``config`` (a file path of one profile or a ``[profiles]``
    table; ``None``: the packaged default). Loads every profile's host now."""
    from .. import get_registry
    from .app import MAX_BODY_BYTES, Server, create_app
    from .profiles import load_profiles

    registry = registry or get_registry()
    profiles = load_profiles(config, registry)
    server = Server(profiles, registry, api_key=api_key, concurrency=concurrency, max_queue=max_queue,
                    max_body_bytes=max_body_bytes or MAX_BODY_BYTES, keep_traces=keep_traces, objects=objects)
    return create_app(server)


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
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def main(args) -> int:
    """Run the server until interrupted."""
    import uvicorn

    from .. import get_registry
    from ..errors import ConfigError

    for flag, value, least in (("--concurrency", args.concurrency, 1), ("--max-queue", args.max_queue, 0),
                               ("--max-body-bytes", args.max_body_bytes, 1), ("--port", args.port, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:  # weight-loading progress bars are noise in a server's log (as in metagen run)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    registry = get_registry(args.plugins_dir, reload=args.plugins_dir is not None)
    app = build_app(args.config, registry=registry, api_key=api_key, concurrency=args.concurrency,
                    max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, keep_traces=args.keep_traces)
    names = ", ".join(sorted(app.state.server.profiles))
    print(f"metagen serve: models {names} on http://{args.host}:{args.port}/v1"
          + ("" if api_key else " (no API key)"), file=sys.stderr)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"metagen serve: {args.host} is reachable from other machines and no API key is set: anyone who "
              f"can connect can spend this machine's compute (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
