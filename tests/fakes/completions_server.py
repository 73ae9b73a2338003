"""A loopback stand-in for an OpenAI-compatible ``POST /v1/completions`` server (vLLM's answer
shape: ``n`` choices with ``token_ids``, ``logprobs.token_logprobs``, ``finish_reason`` and
``stop_reason``; ``usage``), for the replica and in-flight-limit tests, which need many fast
requests and servers that die on cue (a real vLLM server takes half a minute to start here).

What it writes comes from the TGI stand-in's synthetic solver of the demo arithmetic task, seeded
by (prompt, seed, choice index), so the same request gets the same answer from any replica. It
records every request, the peak of requests in flight, and can die: ``die_after = k`` makes the
k-th request and every later one drop their connection and closes the listening socket, so new
connections are refused, as when a server process is killed mid-run. ``delay`` holds each answer;
``gather = k`` holds each request until k are in flight at once (or ``gather_timeout`` passes),
so a test can see whether a client lets k requests out together without depending on timing.

``"stream": true`` is answered with vLLM's server-sent events: a chunk per token and choice
(``token_ids`` when the request has ``return_token_ids``, ``logprobs`` with ``tokens``,
``token_logprobs`` and ``top_logprobs`` when it asks for them), the usage chunk when
``stream_options.include_usage``, then ``[DONE]``; ``token_delay`` paces the chunks, and
``streams`` records how far each stream got and whether the client closed it first.
``child_seeds = True`` seeds choice ``i`` of a request seeded ``s`` as a one-choice request
seeded ``s + i``, as vLLM seeds the samples of an ``n > 1`` request.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fakes.tgi_server import EOS, arithmetic, tokenize


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: a burst of connections is accepted, not SYN-retried
    daemon_threads = True


class CompletionsServer:
    def __init__(self, delay: float = 0.0, *, token_delay: float = 0.0, child_seeds: bool = False) -> None:
        self.delay = delay
        self.token_delay = token_delay  # between streamed chunks
        self.child_seeds = child_seeds
        self.streams: list[dict] = []  # per stream: chunks sent, total, closed_by_client
        self.requests: list[dict] = []  # bodies received, in order
        self.answered = 0  # requests answered with 200
        self.in_flight = self.peak = 0
        self.die_after: int | None = None
        self.dead = False
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with
        self.gather = 0
        self.gather_timeout = 5.0
        self.gathered = False
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "CompletionsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def kill(self) -> None:
        """Stop listening (new connections are refused) and drop every open connection."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
        threading.Thread(target=self._close, daemon=True).start()

    def _close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers ------------------------------------------------------------------------------

    def steps(self, body: dict, index: int) -> tuple[list[tuple[int, str, float]], str, str | None]:
        """Choice ``index``'s tokens (id, text, log-prob), finish reason and stop reason."""
        prompt, limit, stops = body["prompt"], body.get("max_tokens", 16), body.get("stop") or []
        seed = body.get("seed")
        if self.child_seeds and seed is not None:
            seed, index = seed + index, 0
        tokens, ended = arithmetic(prompt, random.Random(f"{prompt}|{seed}|{index}"))
        out, text = [], ""
        for token in tokens + ([None] if ended else []):
            if len(out) == limit:
                break
            if token is None:  # end of sequence: its id is reported, its text is not
                out.append((EOS[0], "", -0.01))
                return out, "stop", None
            out.append((token.id, token.text, token.logprob))
            text += token.text
            hit = next((s for s in stops if s in text), None)
            if hit is not None:
                return out, "stop", hit
        return out, "length", None

    def answer(self, body: dict) -> dict:
        prompt, n = body["prompt"], body.get("n", 1)
        choices = []
        for index in range(n):
            steps, finish, reason = self.steps(body, index)
            choices.append({"index": index, "text": "".join(t for _, t, _ in steps),
                            "token_ids": [i for i, _, _ in steps], "finish_reason": finish, "stop_reason": reason,
                            "logprobs": {"token_logprobs": [lp for _, _, lp in steps]}
                            if body.get("logprobs") is not None else None})
        generated = sum(len(c["token_ids"]) for c in choices)
        return {"id": "cmpl-standin", "object": "text_completion", "model": body.get("model", "standin"),
                "choices": choices, "usage": {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": generated}}

    def chunks(self, body: dict):
        """The stream's chunks as vLLM writes them (a token of each unfinished choice at a time)."""
        prompt, k = body["prompt"], body.get("logprobs")
        choices = [self.steps(body, index) for index in range(body.get("n", 1))]
        for step in range(max(len(steps) for steps, _, _ in choices)):
            for index, (steps, finish, reason) in enumerate(choices):
                if step >= len(steps):
                    continue
                token, text, logprob = steps[step]
                last = step == len(steps) - 1
                part = {"index": index, "text": text, "finish_reason": finish if last else None,
                        "stop_reason": reason if last else None, "logprobs": None}
                if body.get("return_token_ids"):
                    part["token_ids"] = [token]
                    if step == 0:
                        part["prompt_token_ids"] = [t.id for t in tokenize(prompt)]
                if k is not None:
                    name = f"token_id:{token}" if body.get("return_tokens_as_token_ids") else text
                    top = {name: logprob, **{f"other{j}": logprob - 1.0 - j for j in range(k)}}
                    part["logprobs"] = {"tokens": [name], "token_logprobs": [logprob], "top_logprobs": [top],
                                        "text_offset": [0]}
                yield {"id": "cmpl-standin", "object": "text_completion", "model": body.get("model", "standin"),
                       "choices": [part]}
        if (body.get("stream_options") or {}).get("include_usage"):
            generated = sum(len(steps) for steps, _, _ in choices)
            yield {"id": "cmpl-standin", "object": "text_completion", "choices": [],
                   "usage": {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": generated}}

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server's clients use it

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._json(200, {} if self.path == "/health" else {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                with server._lock:
                    server.requests.append(body)
                    count = len(server.requests)
                    if server.die_after is not None and count >= server.die_after and not server.dead:
                        server.dead = True
                        threading.Thread(target=server._close, daemon=True).start()
                    status = server.fail_next.pop(0) if server.fail_next else None
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server._arrived.notify_all()
                    if server.in_flight >= server.gather:
                        server.gathered = True  # the others may leave now, whatever comes after
                    server._arrived.wait_for(lambda: server.gathered, server.gather_timeout)
                try:
                    time.sleep(server.delay)
                    if server.dead:  # killed while this request was in flight: no answer
                        return self._drop()
                    if status is not None:
                        return self._json(status, {"error": {"message": f"injected {status}"}})
                    if body.get("stream"):
                        return self._stream(body)
                    answer = server.answer(body)
                    with server._lock:
                        server.answered += 1
                    self._json(200, answer)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _stream(self, body):
                chunks = list(server.chunks(body))
                record = {"sent": 0, "total": len(chunks), "closed_by_client": False}
                server.streams.append(record)
                self.close_connection = True  # the stream ends with the connection
                try:
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    for chunk in chunks:
                        if record["sent"]:
                            time.sleep(server.token_delay)
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        record["sent"] += 1
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    with server._lock:
                        server.answered += 1
                except (BrokenPipeError, ConnectionResetError):
                    record["closed_by_client"] = True

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_one_request(self):
                if server.dead:  # a kept-alive connection to a killed server
                    self.close_connection = True
                    return self._drop()
                return super().handle_one_request()

        return Handler
