"""The ASGI application: OpenAI's routes over the profiles' runners.

Request path: the boundary (boundary: header size, Host, Origin, JSON only) -> authenticate ->
read the body (size-capped) -> parse (schemas) -> bound the prompt's length -> refine the
profile within its allow-list (profiles, policy; 400 before any generation) -> admit (runners;
429 beyond the bound) -> ``Runner.submit`` in a worker thread -> wait for the Result, the
client's disconnect or the deadline -> answer (answer; streamed live or with progress:
streaming) or map the failure to 400/500/502/504 (failures).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from metagen_hooks import Result

from ..errors import ConfigError
from . import answer, streaming
from .boundary import Guard
from .errors import VERSIONS, APIError, ClientGone, bad_request
from .failures import answered
from .metrics import Metrics
from .profiles import Profile, refine
from .runners import Runners
from .schemas import ChatRequest, CompletionRequest, parse

log = logging.getLogger("metagen.serve")
MAX_BODY_BYTES = 1 << 20
MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_PROMPT_CHARS = 131072  # characters of one request's prompts and messages, before tokenization
REQUEST_TIMEOUT = 600.0  # seconds a request may run before it is cancelled (504)


class Server:
    """What the routes share: profiles, runners, metrics, the API key, recent traces."""

    def __init__(self, profiles: dict[str, Profile], registry, *, api_key: str | None = None,
                 concurrency: int | None = None, max_queue: int = 256, max_body_bytes: int = MAX_BODY_BYTES,
                 keep_traces: int = 1000, objects: dict[str, Any] | None = None,
                 max_prompt_chars: int = MAX_PROMPT_CHARS, request_timeout: float = REQUEST_TIMEOUT) -> None:
        if not profiles:
            raise ValueError("no profiles to serve")
        self.profiles = profiles
        self.registry = registry
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes
        self.max_prompt_chars = max_prompt_chars
        self.request_timeout = request_timeout
        self.keep_traces = keep_traces
        self.metrics = Metrics()
        self.traces: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.runners = Runners(profiles, registry, concurrency=concurrency, max_queue=max_queue, objects=objects)

    # -- the steps of a request ------------------------------------------------------------

    def authenticate(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api-key or METAGEN_API_KEY)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is over the server's limit of {self.max_body_bytes} bytes "
                             f"(--max-body-bytes)", code="body_too_large")

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise APIError(404, f"model {name!r} is not served here; the models (profiles) are "
                                f"{', '.join(sorted(self.profiles))} (GET /v1/models)",
                           param="model", code="model_not_found")
        return self.profiles[name]

    def start(self, profile: Profile, config, prompt: str, **extras: Any) -> Future:
        """Admit (or 429) and start one prompt on its profile's runner; ``extras`` go to
        ``Runner.submit`` (conversation, on_text)."""
        try:
            lane, future = self.runners.submit(profile, config, prompt, **extras)
        except APIError as exc:
            if exc.status == 429:
                self.metrics.rejected.labels(profile.name).inc()
            raise
        except ConfigError as exc:  # e.g. a conversation on a host that cannot format one
            raise bad_request(str(exc), param="messages" if "conversation" in extras else None) from None
        self.metrics.in_flight.labels(profile.name).inc()
        future.add_done_callback(self._finisher(lane, profile, config, time.perf_counter()))
        return future

    def deadline(self, options: dict[str, Any]) -> tuple[float, str]:
        """A request's time limit in seconds and what sets it: the caller's ``metagen.timeout``
        when it is shorter than the server's ``--request-timeout``."""
        own = options.get("timeout")
        if own is not None and own < self.request_timeout:
            return own, "metagen.timeout"
        return self.request_timeout, "--request-timeout"

    async def run(self, request: Request, route: str, profile: Profile, config, prompts: list[str],
                  conversation: list[dict[str, str]] | None = None, timeout: float | None = None) -> list[Result]:
        """Every prompt's Result; raises the APIError of the first failure. A client that goes
        away cancels its queued prompts; running ones finish and are discarded. ``timeout``: the
        request's own deadline, if shorter than the server's."""
        limit, source = self.deadline({"timeout": timeout})
        futures: list[Future] = []
        extras = {"conversation": conversation} if conversation else {}
        try:
            for prompt in prompts:
                futures.append(self.start(profile, config, prompt, **extras))
        except APIError:
            for future in futures:
                future.cancel()
            raise
        waiting = [asyncio.wrap_future(f) for f in futures]
        gone = asyncio.ensure_future(streaming.disconnected(request))
        try:
            await asyncio.wait([gone, asyncio.gather(*waiting, return_exceptions=True)],
                               timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not all(w.done() for w in waiting):  # the client is gone, or the deadline passed
            late = not gone.done() or gone.cancelled()
            self.cancel(profile, futures, "the request's deadline passed" if late else "the client went away")
            if late:
                raise APIError(504, f"the request ran past its deadline of {limit:g} s ({source}); its work "
                                    f"was stopped", code="deadline_exceeded")
            raise ClientGone()
        return [answered(waited, config) for waited in waiting]

    def cancel(self, profile: Profile, futures: list[Future], reason: str) -> None:
        """Stop prompts nobody waits for: a queued one never starts; a running one's budget is
        cancelled, so its strategy ends at its next request for generation."""
        for future in futures:
            if future.done():
                continue
            stage = "queued" if future.cancel() else "running"
            if stage == "running":
                future.budget.cancel(reason)
            self.metrics.cancelled.labels(profile.name, stage).inc()

    def _finisher(self, lane, profile: Profile, config, started: float):
        def finished(future: Future) -> None:
            latency = time.perf_counter() - started
            lane.release(None if future.cancelled() else latency)
            self.metrics.in_flight.labels(profile.name).dec()
            if not future.cancelled() and future.exception() is None:
                result = future.result()
                self.metrics.record_run(profile.name, result.strategy, result.budget.spent(), latency)
        return finished

    def keep(self, trace_id: str, profile: Profile, results: list[Result]) -> None:
        if self.keep_traces <= 0:
            return
        self.traces[trace_id] = {"id": trace_id, "profile": profile.name,
                                 "results": [r.to_dict() for r in results]}
        while len(self.traces) > self.keep_traces:
            self.traces.popitem(last=False)

    def close(self) -> None:
        self.runners.close()


def chat_prompt(messages) -> tuple[str, list[dict[str, str]]]:
    """The prompt of a chat request, its last message (a user's), and the conversation before
    it (system, user and assistant turns; ``developer`` is a system message), which the host
    formats with the model's chat template before the prompt. The strategy and its scorers see
    the prompt: the question being answered."""
    if not messages or messages[-1].role != "user":
        roles = ", ".join(m.role for m in messages) or "none"
        raise bad_request(f"messages: the last message must be the user's question for the strategy to answer; "
                          f"got [{roles}]", param="messages", code="invalid_conversation")
    conversation = []
    for index, message in enumerate(messages[:-1]):
        if message.role == "tool":
            raise bad_request(f"messages[{index}]: tool messages are not supported (metagen serve runs no "
                              f"tools); send the conversation without tool turns",
                              param=f"messages[{index}].role", code="unsupported_conversation")
        conversation.append({"role": "system" if message.role == "developer" else message.role,
                             "content": message.text()})
    return messages[-1].text(), conversation


def create_app(server: Server, hosts: set[str] | None = None) -> FastAPI:
    """The FastAPI application of ``server`` (which owns the loaded runners); ``hosts``: the
    ``Host`` names it answers to (``None``: any; see :class:`.boundary.Guard`)."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, server.close)

    app = FastAPI(title="metagen serve", description="Meta-generation strategies behind OpenAI's API",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(Guard, hosts=hosts)
    for record in getattr(server.registry.manager, "records", {}).values():  # kept out of client errors
        if getattr(record, "distribution", None) and getattr(record, "version", None):
            VERSIONS.add(f"{record.distribution} {record.version}")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        if exc.status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = (f"no route {request.method} {request.url.path}; the routes are POST /v1/chat/completions, "
                   f"POST /v1/completions, GET /v1/models, GET /health, GET /metrics"
                   if exc.status_code in (404, 405) else str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        error_id = uuid.uuid4().hex[:12]
        log.exception("error %s: unexpected in %s %s", error_id, request.method, request.url.path)
        error = APIError(500, f"metagen serve failed unexpectedly with {type(exc).__name__} (error id {error_id} in "
                              f"the server's log); this is a bug in metagen serve (the server goes on)",
                         code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(server.profiles)}

    @app.get("/metrics")
    async def metrics(request: Request):
        server.authenticate(request)
        data, content_type = server.metrics.exposition()
        return Response(data, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        server.authenticate(request)
        return {"object": "list", "data": [_model_card(p) for p in server.profiles.values()]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request):
        server.authenticate(request)
        return _model_card(server.profile(name))

    @app.get("/v1/metagen/traces/{trace_id}")
    async def trace(trace_id: str, request: Request):
        server.authenticate(request)
        if trace_id not in server.traces:
            raise APIError(404, f"no trace {trace_id!r}: the server keeps the last {server.keep_traces} "
                                f"requests' traces (--keep-traces)", param="trace_id", code="trace_not_found")
        return server.traces[trace_id]

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(request, "completions")

    async def _complete(request: Request, route: str):
        status: int | None = 500
        name = "-"

        def count(status: int) -> None:
            server.metrics.requests.labels(route, name if name in server.profiles else "-", str(status)).inc()

        try:
            server.authenticate(request)
            raw = await server.body(request)
            body = parse(ChatRequest if route == "chat" else CompletionRequest, raw)
            name = body.model
            profile = server.profile(body.model)
            conversation: list[dict[str, str]] = []
            if route == "chat":
                prompt, conversation = chat_prompt(body.messages)
                prompts = [prompt]
            else:
                prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
                if not prompts or len(prompts) > MAX_PROMPTS:
                    raise bad_request(f"prompt: give one prompt or a list of 1 to {MAX_PROMPTS}", param="prompt")
                if body.stream and len(prompts) > 1:
                    raise bad_request("stream: a streamed completion takes one prompt", param="prompt")
            for prompt in prompts:
                if not prompt.strip():
                    raise bad_request("the prompt is empty; give the text to complete", param="prompt")
            size = sum(map(len, prompts)) + sum(len(m["content"]) for m in conversation)
            if size > server.max_prompt_chars:
                raise bad_request(f"the request's text is {size} characters; this server takes at most "
                                  f"{server.max_prompt_chars} per request (--max-prompt-chars)",
                                  param="messages" if route == "chat" else "prompt", code="prompt_too_long")
            config, options = refine(profile, body, server.registry)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            if body.stream and (config.strategy or {"name": "generate"})["name"] == "generate":
                status = None  # the stream counts itself when it ends (200, or 499 if the client left)
                return await streaming.live(server, request, route, profile, config, prompts[0],
                                            conversation, options, include_usage, on_end=count)
            if body.stream and options["progress"]:
                status = None
                return streaming.progressing(server, route, profile, config, prompts[0], conversation, options,
                                             include_usage, on_end=count)
            results = await server.run(request, route, profile, config, prompts, conversation,
                                       timeout=options["timeout"])
            rid = answer.response_id(route)
            exts = [answer.extension(r, profile.name, rid, options["candidates"]) for r in results]
            server.keep(rid, profile, results)
            status = 200
            if body.stream:
                chunks = answer.Stream(route, rid, profile.name, include_usage).whole(results[0], exts[0])
                return streaming.response(iter(chunks))
            if route == "chat":
                return answer.chat_completion(rid, profile.name, results[0], exts[0])
            return answer.completion(rid, profile.name, results, exts)
        except APIError as exc:
            status = exc.status
            raise
        except ClientGone:
            status = 499
            raise
        finally:
            if status is not None:
                count(status)

    return app


def _model_card(profile: Profile) -> dict[str, Any]:
    config = profile.config
    return {"id": profile.name, "object": "model", "created": 0, "owned_by": "metagen",
            "metagen": {"host": config.host_name, "model": config.host.get("model") or config.host.get("model_id"),
                        "strategy": (config.strategy or {"name": "generate"}), "scorer": config.scorer,
                        "budget": config.budget}}
