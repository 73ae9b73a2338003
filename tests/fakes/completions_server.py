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
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tgi_server import EOS, arithmetic, tokenize


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # listen backlog: a burst of connections is accepted, not SYN-retried
    daemon_threads = True


class CompletionsServer:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
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

    def answer(self, body: dict) -> dict:
        prompt, n = body["prompt"], body.get("n", 1)
        limit, stops = body.get("max_tokens", 16), body.get("stop") or []
        choices = []
        for index in range(n):
            rng = random.Random(f"{prompt}|{body.get('seed')}|{index}")
            tokens, ended = arithmetic(prompt, rng)
            ids, logprobs, text, finish, reason = [], [], "", "length", None
            for token in tokens + ([None] if ended else []):
                if len(ids) == limit:
                    break
                if token is None:  # end of sequence: its id is reported, its text is not
                    ids.append(EOS[0])
                    logprobs.append(-0.01)
                    finish = "stop"
                    break
                ids.append(token.id)
                logprobs.append(token.logprob)
                text += token.text
                hit = next((s for s in stops if s in text), None)
                if hit is not None:
                    finish, reason = "stop", hit
                    break
            choices.append({"index": index, "text": text, "token_ids": ids, "finish_reason": finish,
                            "stop_reason": reason,
                            "logprobs": {"token_logprobs": logprobs} if body.get("logprobs") is not None else None})
        generated = sum(len(c["token_ids"]) for c in choices)
        return {"id": "cmpl-standin", "object": "text_completion", "model": body.get("model", "standin"),
                "choices": choices, "usage": {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": generated}}

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
                    answer = server.answer(body)
                    with server._lock:
                        server.answered += 1
                    self._json(200, answer)
                finally:
                    with server._lock:
                        server.in_flight -= 1

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
