"""A loopback stand-in for llama.cpp's ``llama-server`` native ``POST /completion`` (its answer
shape: ``content`` without the stop string that ended it, ``stop_type`` none / eos / limit /
word, ``stopping_word``, ``tokens_predicted``, ``tokens_evaluated``, ``timings.prompt_n`` and
``timings.cache_n``), for the host tutorial's test (docs/host-tutorial.md): llama-server is not
installed here.

What it writes is the TGI stand-in's synthetic solver of the demo arithmetic task, seeded by
(prompt, seed); ``temperature <= 0`` is greedy (every step right), as in llama.cpp. Like
``cache_prompt``, a prompt it saw before counts as cached. It records every request body and
every answer; ``fail_next`` answers the next requests with those HTTP statuses (llama-server's error body).
"""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tgi_server import arithmetic, tokenize


class LlamaCppServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[dict] = []  # the 200 answers, in order
        self.fail_next: list[int] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "LlamaCppServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict) -> dict:
        prompt, limit, stops = body["prompt"], body.get("n_predict", -1), body.get("stop") or []
        greedy = body.get("temperature", 0.8) <= 0
        rng = random.Random(f"{prompt}|{body.get('seed', -1)}")
        tokens, ended = arithmetic(prompt, rng, error_rate=0.0 if greedy else 0.3)
        content, count, stop_type, word = "", 0, "eos" if ended else "none", ""
        for token in tokens:
            if count == limit:
                stop_type = "limit"
                break
            content += token.text
            count += 1
            hit = min(((content.index(s), s) for s in stops if s in content), default=None)
            if hit is not None:  # llama-server cuts the text before the stop string
                content, stop_type, word = content[:hit[0]], "word", hit[1]
                break
        prompt_tokens = len(tokenize(prompt))
        with self._lock:
            cached = prompt_tokens if body.get("cache_prompt", True) and prompt in self._seen else 0
            self._seen.add(prompt)
        return {"index": 0, "content": content, "id_slot": 0, "stop": True, "model": "demo-arith.gguf",
                "tokens_predicted": count, "tokens_evaluated": prompt_tokens, "prompt": prompt,
                "stop_type": stop_type, "stopping_word": word, "truncated": False,
                "timings": {"prompt_n": prompt_tokens - cached, "cache_n": cached, "predicted_n": count}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    status = server.fail_next.pop(0) if server.fail_next else None
                if self.path != "/completion":
                    self._send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
                elif status is not None:
                    self._send(status, {"error": {"code": status, "message": "the server is busy",
                                                  "type": "unavailable_error"}})
                elif not isinstance(body.get("prompt"), str):
                    self._send(400, {"error": {"code": 400, "message": "\"prompt\" must be provided",
                                               "type": "invalid_request_error"}})
                else:
                    answer = server.answer(body)
                    with server._lock:
                        server.answers.append(answer)
                    self._send(200, answer)

        return Handler
