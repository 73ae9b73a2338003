"""The attacks of issue #20 replayed against real `metagen serve` subprocesses on loopback (no
API key, the demo model), each with the answer it gets; /health latency under a pattern attack
and under saturation; the server's RSS after a burst of over-long prompts; admission on the
vLLM host with distinct seeds (when the vLLM environment is there).

    python bench/attacks.py [--quick]

The closing JSON line has the figures: /health max and p95 in ms, RSS before and after in MiB,
the admitted and refused counts. tests/serve/test_serve_security.py asserts each answer.
"""

from __future__ import annotations

from _common import arguments, finish, table

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_helpers import free_port

PROFILES = """[profiles.demo.host]
model = "demo-arith"
[profiles.demo.generation]
max_new_tokens = 48
[profiles.open.host]
model = "demo-arith"
[profiles.open.generation]
max_new_tokens = 48
[profiles.open.serve]
components = ["regex", "code_tests", "served_outcome_reward_model", "grammar"]
[profiles.vote.host]
model = "demo-arith"
[profiles.vote.generation]
max_new_tokens = 48
[[profiles.vote.processors]]
name = "temperature"
temperature = 0.8
[profiles.vote.strategy]
name = "self_consistency"
n = 16
[profiles.vote.budget]      # room for the long search whose stream the client closes
max_samples = 2048
max_tokens = 1000000
"""


class Server:
    """`metagen serve` in a subprocess on a free loopback port."""

    def __init__(self, config: Path, work: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.process = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "metagen_plugins.cli", "serve", "--config", str(config), "--port",
             str(self.port), "--log-level", "warning", *extra], env=env, stdout=subprocess.DEVNULL,
            stderr=open(work / f"server-{self.port}.log", "w"))
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"metagen serve did not start (see {work})")
                time.sleep(0.2)

    def get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()

    def post(self, body, headers: dict | None = None) -> tuple[int, str]:
        """(status, "code: message") of one POST /v1/completions."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", "/v1/completions", body=data,
                           headers={"Content-Type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        text = answer.read().decode("utf-8", "replace")
        try:
            error = json.loads(text).get("error") or {}
        except ValueError:
            error = {"message": text}
        said = f"{error.get('code')}: {error.get('message')}" if error else "ok"
        return answer.status, said

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def health_during(server: Server, work) -> tuple[list[float], object]:
    """/health latencies (s) measured while ``work()`` runs, and what it returned."""
    latencies, done = [], threading.Event()

    def probe():
        while not done.is_set():
            start = time.perf_counter()
            server.get("/health")
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result = work()
    finally:
        done.set()
        thread.join()
    return sorted(latencies), result


def header_attack(port: int, size: int) -> str:
    """An ``size``-byte header, sent until the server stops reading; the status line it got."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < size:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        try:
            reply = sock.recv(200).split(b"\r\n")[0].decode()
        except OSError as exc:
            reply = type(exc).__name__
    return f"{reply} after {sent // 1024} KiB sent"


def main() -> None:
    args = arguments(__doc__)
    work = Path(tempfile.mkdtemp(prefix="metagen-bench-attacks-"))
    (work / "profiles.toml").write_text(PROFILES)
    rows, figures = [], {}

    def record(attack: str, answer: tuple[int, str] | str) -> None:
        status, said = answer if isinstance(answer, tuple) else ("-", answer)
        rows.append({"attack": attack, "status": status, "answer": said[:110]})

    server = Server(work / "profiles.toml", work)
    try:
        marker = work / "pwned"
        code = {"model": "demo", "prompt": "Q: 1+1=? A:", "max_tokens": 8, "metagen": {
            "scorer": {"name": "code_tests", "setup": f"import os; os.system('id > {marker}')", "isolation": "limits",
                       "tests": ["assert True"]}, "processors": [{"name": "grammar", "regex": "import os.*"}]}}
        record("1 code_tests setup + isolation=limits (profile without it)", server.post(code))
        record("1 the same on a profile offering code_tests", server.post({**code, "model": "open"}))
        record("1 the same body as text/plain, no key", server.post(json.dumps(code).encode(),
                                                                   {"Content-Type": "text/plain"}))
        plain = {"model": "demo", "prompt": "Q: 1+1=? A:", "max_tokens": 4}
        record("1 Origin: https://evil.example", server.post(plain, {"Origin": "https://evil.example"}))
        record("1 Host: evil.example (DNS rebinding)", server.post(plain, {"Host": "evil.example"}))
        figures["code_ran"] = marker.exists()

        regex = {"model": "open", "prompt": "Q: 37+48-19=? A:", "max_tokens": 48,
                 "metagen": {"stopping": [{"name": "regex", "pattern": "(.|.)*§"}]}}
        latencies, answer = health_during(server, lambda: server.post(regex))
        record("2 stopping regex (.|.)*§, max_tokens 48", answer)
        figures["health_max_ms_pattern_attack"] = round(max(latencies) * 1000, 1)
        record("2 the same on a profile not offering regex", server.post({**regex, "model": "demo"}))
        record("2 a 30,000-group pattern", server.post({**regex, "metagen": {"stopping": [
            {"name": "regex", "pattern": "(a)" * 30000}]}}))
        record("3 served reward model url from the request", server.post({"model": "open", "prompt": "Q: 1+1=? A:",
               "metagen": {"scorer": {"name": "served_outcome_reward_model", "url": "http://169.254.169.254/",
                                      "served_model": "x"}}}))
        record("5 invalid pattern '('", server.post({**regex, "metagen": {"stopping": [
            {"name": "regex", "pattern": "("}]}}))
        record("5 JSON nested 1000 deep", server.post(b"[" * 1000 + b"]" * 1000))
        record("5 JSON nested 480 deep inside metagen", server.post(
            b'{"model": "demo", "prompt": "x", "metagen": ' + b"[" * 480 + b"]" * 480 + b"}"))
        record("6 an 8 MiB header", header_attack(server.port, 8 << 20))
        long_prompt = {"model": "demo", "prompt": "Q: 1+1=? " * 111112}
        before = server.rss_mib()
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: server.post(long_prompt), range(12)))
        figures["rss_mib_before"], figures["rss_mib_after"] = round(before), round(server.rss_mib())
        record("6 12 concurrent 1e6-character prompts", answers[0])

        count = 32 if args.quick else 96
        latencies, statuses = health_during(server, lambda: list(ThreadPoolExecutor(count).map(
            lambda i: server.post({"model": "vote", "prompt": f"Q: {i}+{i + 7}-3=? A:"})[0], range(count))))
        record(f"- {count} concurrent self-consistency@16 requests (saturation)",
               (sorted(set(statuses)), f"/health p95 {latencies[int(0.95 * len(latencies))] * 1000:.1f} ms, max "
                                      f"{latencies[-1] * 1000:.1f} ms over {len(latencies)} probes"))
        figures["health_p95_ms_saturated"] = round(latencies[int(0.95 * len(latencies))] * 1000, 1)
        figures["health_max_ms_saturated"] = round(latencies[-1] * 1000, 1)

        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/v1/completions", body=json.dumps({
            "model": "vote", "prompt": "Q: 1+1=? A:", "stream": True,
            "metagen": {"progress": True, "strategy": {"n": 1024}}, "max_tokens": 48}),
            headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.fp.readline()
        response.close()
        connection.close()  # the client goes away while the search runs
        deadline, metrics = time.monotonic() + 60, []
        while time.monotonic() < deadline and len(metrics) < 2:
            time.sleep(0.5)
            metrics = [line for line in server.get("/metrics")[1].splitlines()
                       if line.startswith(("metagen_requests_total{", "metagen_requests_cancelled_total{"))
                       and 'profile="vote"' in line and ('status="200"' not in line)]
        record("7 a progress stream closed by its client", "; ".join(metrics) or "not counted within 60 s")
    finally:
        server.stop()

    from vllm_server import DEMO, VLLMServer, available

    if available():
        engine = VLLMServer(DEMO, work / "vllm.log")
        try:
            engine.wait()
            (work / "v.toml").write_text("[host]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in engine.host.items())
                                         + "[generation]\nmax_new_tokens = 48\n")
            remote = Server(work / "v.toml", work, "--concurrency", "1", "--max-queue", "1")
            try:
                with ThreadPoolExecutor(40) as pool:
                    statuses = list(pool.map(lambda seed: remote.post(
                        {"model": "v", "prompt": "Q: 1+1=? A:", "seed": seed})[0], range(40)))
            finally:
                remote.stop()
            figures["vllm_admitted"], figures["vllm_refused_429"] = statuses.count(200), statuses.count(429)
            record("4 vLLM host, --concurrency 1 --max-queue 1, 40 distinct seeds",
                   f"{statuses.count(200)} x 200, {statuses.count(429)} x 429, "
                   f"others {[s for s in statuses if s not in (200, 429)]}")
        finally:
            engine.stop()
    table(rows, ["attack", "status", "answer"])
    finish("attacks", figures)


if __name__ == "__main__":
    main()
