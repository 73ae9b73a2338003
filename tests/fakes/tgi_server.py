"""A loopback stand-in for a TGI deployment, for the TGI host's tests (TGI cannot run here).

It answers ``/`` (the route huggingface_hub posts to), ``/generate``, ``/generate_stream`` (SSE),
``/info`` and ``/health`` the way TGI's router does, applies TGI's own request validation rules
(422 with TGI's messages), and checks every request body it receives and every response body it
sends against TGI's OpenAPI document (``contract_errors``). What it generates comes from a
responder: by default a synthetic solver of the demo arithmetic task (so answer extraction and the
step checker work), or a recorded TGI response (``snapshot``). Faults are injected per request
(``faults``): an HTTP error with TGI's error body, a delay, a dropped connection, malformed JSON.
It records peak in-flight generation requests, and how far each stream got before the client
closed it.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "tgi"
EOS = (2, "</s>")
INFO = {"model_id": "metagen/demo-arith", "model_sha": None, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": 1024,
        "max_total_tokens": 2048, "validation_workers": 2, "max_client_batch_size": 4,
        "router": "text-generation-router", "version": "3.3.6-dev0", "sha": None, "docker_label": None}


# -- the OpenAPI contract ----------------------------------------------------------------------


def spec_validator():
    """``check(schema_name, instance) -> [error, ...]`` against TGI's OpenAPI document (OpenAPI
    3.0: ``nullable`` honoured by openapi-schema-validator; ``$ref``s resolved in the document).
    ``discriminator`` is dropped: TGI's points at inline schemas, which OpenAPI's implicit mapping
    cannot name; the ``oneOf`` it annotates is still validated in full."""
    from openapi_schema_validator import OAS30Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    spec = _without(json.loads((DATA / "openapi.json").read_text()), "discriminator")
    registry = Registry().with_resource("tgi", Resource.from_contents(spec, default_specification=DRAFT4))

    def check(name: str, instance) -> list[str]:
        validator = OAS30Validator({"$ref": f"tgi#/components/schemas/{name}"}, registry=registry)
        return [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]

    return check


def _without(node, key):
    if isinstance(node, dict):
        return {k: _without(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_without(v, key) for v in node]
    return node


def snapshot(name: str) -> dict:
    """A recorded TGI response with the client-side ``null``s TGI never sends removed."""
    data = json.loads((DATA / "snapshots" / f"{name}.json").read_text())
    if isinstance(data, dict) and data.get("details") and data["details"].get("top_tokens") is None:
        data["details"].pop("top_tokens", None)
    return data


# -- what the "model" writes -------------------------------------------------------------------


@dataclass
class Token:
    id: int
    text: str
    logprob: float
    special: bool = False

    def as_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


def tokenize(text: str, logprob: float = -0.5) -> list[Token]:
    """Numbers are one token (id 1000 + value), every other character its own (id = code point)."""
    return [Token(1000 + int(p) if p.isdigit() else ord(p), p, logprob) for p in re.findall(r"\d+|.", text, re.S)]


QUESTION = re.compile(r"Q: (\d+(?:[+-]\d+)*)=\? A:")
STEP = re.compile(r" ?(\d+)([+-])(\d+)=(-?\d+)\. ")


def arithmetic(inputs: str, rng: random.Random, error_rate: float = 0.3) -> tuple[list[Token], bool]:
    """Continue the demo task's solution of the last question in ``inputs`` from where its text
    stops: steps ``a+b=c. `` (each wrong with ``error_rate``, wrong numbers less likely), then
    ``#### answer``. Returns the tokens and whether the answer ended (EOS follows)."""
    found = list(QUESTION.finditer(inputs))
    if not found:
        return tokenize(" I can only do arithmetic."), True
    numbers = [int(x) for x in re.findall(r"\d+", found[-1].group(1))]
    operators = re.findall(r"[+-]", found[-1].group(1))
    written = inputs[found[-1].end():]
    if not re.fullmatch(r"( ?\d+[+-]\d+=-?\d+\. )*", written):
        written = ""  # not a continuation in this format (e.g. a revision prompt): start over
    steps = STEP.findall(written)
    value = int(steps[-1][3]) if steps else numbers[0]
    tokens: list[Token] = [] if written else [Token(ord(" "), " ", -0.1)]
    for op, x in zip(operators[len(steps):], numbers[len(steps) + 1:]):
        right = value + x if op == "+" else value - x
        result = right + rng.choice([-10, -1, 1, 2]) if rng.random() < error_rate else right
        sure = -0.05 - 0.2 * rng.random() if result == right else -2.0 - rng.random()
        tokens += tokenize(f"{value}{op}{x}=", -0.1) + [Token(1000 + abs(result), str(result), sure)]
        tokens += tokenize(". ", -0.05)
        value = result
    tokens += tokenize("#### ", -0.05) + [Token(1000 + abs(value), str(value), -0.1)]
    return tokens, True


# -- the server --------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected outcome for one generation request: ``status`` with TGI's error body (and
    ``headers``; or a proxy's ``page``), a ``delay`` before answering, ``drop`` the connection,
    or ``malformed`` JSON."""

    status: int | None = None
    error: str = ""
    error_type: str = ""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    malformed: bool = False
    page: bytes | None = None  # a non-TGI error page (a proxy's) instead of TGI's error body


class TGIServer:
    def __init__(self, responder=None, info=None, validate: bool = True) -> None:
        self.responder = responder or (lambda body, rng: arithmetic(body["inputs"], rng))
        self.info = dict(INFO, **(info or {}))
        self.check = spec_validator() if validate else None
        self.healthy = True
        self.faults: list[Fault] = []
        self.replies: list[dict] = []  # recorded answers to send verbatim, one per request
        self.delay = 0.0  # before each generation answer
        self.token_delay = 0.0  # between streamed events
        self.requests: list[tuple[str, dict]] = []
        self.arrivals: list[float] = []  # when each POST arrived (monotonic seconds)
        self.contract_errors: list[str] = []
        self.streams: list[dict] = []  # per stream: events sent, total, closed_by_client
        self.in_flight = self.peak = 0
        self._lock = threading.Lock()
        self._counter = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "TGIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def finished_streams(self, timeout: float = 10.0) -> list[dict]:
        """The stream records, once the server has finished writing (or lost) every stream."""
        for record in self.streams:
            record["done"].wait(timeout)
        return [{k: v for k, v in r.items() if k != "done"} for r in self.streams]

    def gaps(self) -> list[float]:
        """Seconds between consecutive POSTs (a retry's wait, seen from the server)."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    # -- generation ---------------------------------------------------------------------------

    def validation_error(self, params: dict, stream: bool) -> str | None:
        """TGI's router validation (router/src/validation.rs), with its messages."""
        best_of = params.get("best_of") or 1
        if best_of > 1:
            if best_of > self.info["max_best_of"]:
                return f"`best_of` must be > 0 and <= {self.info['max_best_of']}. Given: {best_of}"
            if params.get("seed") is not None:
                return "`seed` must not be set when `best_of` > 1"
            if stream:
                return "`best_of` != 1 is not allowed for this endpoint"
            if not (params.get("do_sample") or params.get("temperature") or params.get("top_p")
                    or params.get("top_k") or params.get("typical_p")):
                return "you must use sampling when `best_of` is > 1"
        stops = params.get("stop") or []
        if len(stops) > self.info["max_stop_sequences"]:
            return f"`stop` supports up to {self.info['max_stop_sequences']} stop sequences. Given: {len(stops)}"
        if (params.get("top_n_tokens") or 0) > 5:
            return f"`top_n_tokens` must be >= 0 and <= 5. Given: {params['top_n_tokens']}"
        for key in ("top_p", "typical_p"):
            if params.get(key) is not None and not 0.0 < params[key] < 1.0:
                return f"`{key}` must be > 0.0 and < 1.0"
        if params.get("temperature") is not None and params["temperature"] <= 0:
            return "`temperature` must be strictly positive"
        if params.get("repetition_penalty") is not None and params["repetition_penalty"] <= 0:
            return "`repetition_penalty` must be strictly positive"
        return None

    def generate(self, body: dict) -> tuple[list[Token], str, int | None]:
        """The tokens of one sequence (EOS included when it ended), finish reason, and seed."""
        params = body.get("parameters") or {}
        with self._lock:
            self._counter += 1
            seed = params.get("seed") if params.get("seed") is not None else 10_000 + self._counter
        tokens, ended = self.responder(body, random.Random(f"{body['inputs']}|{seed}"))
        limit = params.get("max_new_tokens") or 100
        stops = params.get("stop") or []
        text, out = "", []
        for token in tokens + ([Token(*EOS, -0.01, True)] if ended else []):
            if len(out) == limit:
                return out, "length", seed
            out.append(token)
            if token.special:
                return out, "eos_token", seed
            text += token.text
            if any(text.endswith(s) for s in stops):  # TGI matches stop sequences at the end
                return out, "stop_sequence", seed
        return out, "length", seed

    def response(self, body: dict) -> dict:
        params = body.get("parameters") or {}
        candidates = [self.generate(body) for _ in range(params.get("best_of") or 1)]
        if len(candidates) > 1:  # TGI keeps the highest mean token log-probability
            candidates.sort(key=lambda c: -sum(t.logprob for t in c[0]) / max(1, len(c[0])))
        tokens, finish, seed = candidates[0]
        details = {"finish_reason": finish, "generated_tokens": len(tokens), "seed": seed,
                   "prefill": self.prefill(body), "tokens": [t.as_dict() for t in tokens]}
        if params.get("top_n_tokens"):
            details["top_tokens"] = [self.top(t, params["top_n_tokens"]) for t in tokens]
        if len(candidates) > 1:
            details["best_of_sequences"] = [
                {"generated_text": _text(t), "finish_reason": f, "generated_tokens": len(t), "seed": s,
                 "prefill": [], "tokens": [x.as_dict() for x in t]} for t, f, s in candidates[1:]]
        answer = {"generated_text": _text(tokens)}
        if params.get("details", True):
            answer["details"] = details
        return answer

    @staticmethod
    def prefill(body: dict) -> list[dict]:
        if not (body.get("parameters") or {}).get("decoder_input_details"):
            return []
        tokens = tokenize(body["inputs"], -1.5)
        return [{"id": t.id, "text": t.text, "logprob": None if i == 0 else t.logprob} for i, t in enumerate(tokens)]

    @staticmethod
    def top(token: Token, n: int) -> list[dict]:
        others = [Token(token.id + k, f"<{token.id + k}>", token.logprob - k) for k in range(1, n)]
        return [t.as_dict() for t in [token, *others]]

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == "/info":
                    server._contract("Info", server.info)
                    return self._json(200, server.info)
                if self.path == "/health":
                    if server.healthy:
                        return self._json(200, None)
                    return self._json(503, {"error": "unhealthy", "error_type": "healthcheck"})
                self._json(404, {"error": "not found", "error_type": "not_found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw)
                path = self.path
                server.requests.append((path, body))
                server.arrivals.append(time.monotonic())
                if path not in ("/", "/generate", "/generate_stream"):
                    return self._json(404, {"error": "not found", "error_type": "not_found"})
                server._contract("CompatGenerateRequest" if path == "/" else "GenerateRequest", body)
                stream = path == "/generate_stream" or (path == "/" and body.get("stream") is True)
                with server._lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    self._generate(path, body, stream)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _generate(self, path, body, stream):
                fault = server.faults.pop(0) if server.faults else Fault()
                time.sleep(fault.delay or server.delay)
                if fault.drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault.malformed:
                    return self._raw(200, b'{"generated_text": "unterminated', "application/json")
                if fault.status and fault.page is not None:
                    return self._raw(fault.status, fault.page, "text/html", fault.headers)
                if fault.status:
                    error = {"error": fault.error or "injected", "error_type": fault.error_type or "generation"}
                    return self._json(fault.status, error, fault.headers)
                message = server.validation_error(body.get("parameters") or {}, stream)
                if message:
                    return self._json(422, {"error": message, "error_type": "validation"})
                if stream:
                    return self._stream(body)
                answer = server.replies.pop(0) if server.replies else server.response(body)
                server._contract("GenerateResponse", answer)
                self._json(200, [answer] if path == "/" else answer)

            def _stream(self, body):
                params = body.get("parameters") or {}
                tokens, finish, seed = server.generate(body)
                record = {"sent": 0, "total": len(tokens), "closed_by_client": False, "done": threading.Event()}
                server.streams.append(record)
                try:
                    self._events(body, params, tokens, finish, seed, record)
                finally:
                    record["done"].set()

            def _events(self, body, params, tokens, finish, seed, record):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for i, token in enumerate(tokens):
                    # TGI writes "details": null mid-stream, but the document's `nullable` beside
                    # `allOf` does not allow null (OpenAPI 3.0.3), so absent keys stand for it here.
                    event = {"index": i, "token": token.as_dict(),
                             "top_tokens": server.top(token, params["top_n_tokens"]) if params.get("top_n_tokens") else []}
                    if i == len(tokens) - 1:
                        event["generated_text"] = _text(tokens)
                        event["details"] = {"finish_reason": finish, "generated_tokens": len(tokens), "seed": seed,
                                            "input_length": len(tokenize(body["inputs"]))}
                    server._contract("StreamResponse", event)
                    try:
                        self.wfile.write(b"data:" + json.dumps(event).encode() + b"\n\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        record["closed_by_client"] = True
                        return
                    record["sent"] += 1
                    time.sleep(server.token_delay)

            def _json(self, status, payload, headers=None):
                self._raw(status, b"" if payload is None else json.dumps(payload).encode(), "application/json",
                          headers)
                if payload is not None and status >= 400:
                    server._contract("ErrorResponse", payload)

            def _raw(self, status, data, content_type, headers=None):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _contract(self, schema: str, instance) -> None:
        if self.check is not None:
            self.contract_errors += self.check(schema, instance)


def _text(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens if not t.special)
