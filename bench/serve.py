"""metagen serve's overhead: requests/s and p50/p95 latency at client concurrency 1, 8 and 32
through `metagen serve` (a subprocess on loopback, the official openai client in threads) vs
the same prompts submitted in-process to a Runner (what run() uses), same profile, same model.
Each level alternates the two paths over chunks of the prompts (in-process, server, server,
in-process, ...) so the drift of a shared machine falls on both alike.

    python bench/serve.py [--quick]

The closing JSON line has serve_overhead_ratio = server throughput / in-process throughput at
concurrency 32, and whether every answer was identical on both paths.
"""

from __future__ import annotations

from _common import arguments, finish, table

import os
import statistics
import subprocess
import sys
import tempfile
import queue
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import metagen_plugins

PROFILE = """# self-consistency over 2 samples on the demo reasoning model
[host]
model = "demo-arith"

[generation]
max_new_tokens = 12
seed = 0

[[processors]]
name = "temperature"
temperature = 0.8

[strategy]
name = "self_consistency"
n = 2
"""
LEVELS = (1, 8, 32)


def drive(concurrency: int, prompts: list[str], call) -> tuple[float, list[float], dict[str, str]]:
    """Run ``call(prompt)`` for every prompt from ``concurrency`` client threads; the wall time,
    each request's latency and each prompt's answer."""
    latencies, answers = [], {}

    def one(prompt):
        start = time.perf_counter()
        text = call(prompt)
        latencies.append(time.perf_counter() - start)
        answers[prompt] = text

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, prompts))
    return time.perf_counter() - start, latencies, answers


def row(mode: str, concurrency: int, wall: float, latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"path": mode, "clients": concurrency, "requests": len(latencies), "req/s": len(latencies) / wall,
            "p50 s": statistics.median(ordered), "p95 s": ordered[max(0, round(0.95 * len(ordered)) - 1)]}


def main() -> None:
    args = arguments(__doc__)
    per_level = 64 if args.quick else 192
    prompts = {c: [f"Q: {10 + c + i % 40}+{20 + i}-{i % 9}=? A:" for i in range(per_level)] for c in LEVELS}
    work = Path(tempfile.mkdtemp(prefix="metagen-bench-serve-"))
    config_path = work / "bench.toml"
    config_path.write_text(PROFILE)
    from tests.fakes.serve_helpers import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    server = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "metagen_plugins.cli", "serve", "--config",
                               str(config_path), "--port", str(port), "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"), env=env,
                              start_new_session=True)
    measured = {(p, c): [0.0, []] for p in ("in-process", "server") for c in LEVELS}
    answers: dict[str, dict[str, str]] = {"server": {}, "in-process": {}}
    try:
        with metagen_plugins.Runner(str(config_path)) as runner:  # loaded once, as the server does
            _wait(f"http://127.0.0.1:{port}/health", server, work / "server.log")
            from openai import OpenAI

            clients: queue.SimpleQueue = queue.SimpleQueue()  # made before timing: one costs ~100 ms
            for _ in range(max(LEVELS)):
                clients.put(OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                                   timeout=600))

            def through_server(prompt):
                client = clients.get()  # each request borrows a client (and its open connection)
                try:
                    return client.completions.create(model="bench", prompt=prompt).choices[0].text
                finally:
                    clients.put(client)

            def in_process(prompt):
                return runner.submit(prompt, raise_errors=True).result().best.text

            calls = {"in-process": in_process, "server": through_server}
            for path in calls.values():  # warm-up
                path("Q: 1+1=? A:")
            for c in LEVELS:
                # A B B A over chunks of the prompts (at least ``c`` each, so ``c`` requests are in
                # flight): the drift of a shared machine (other jobs) falls on both paths alike
                size = max(c, len(prompts[c]) // 4)
                chunks = [prompts[c][i:i + size] for i in range(0, len(prompts[c]), size)]
                for index, chunk in enumerate(chunks):
                    order = ("in-process", "server") if index % 2 == 0 else ("server", "in-process")
                    for path in order:
                        wall, latencies, got = drive(c, chunk, calls[path])
                        measured[(path, c)][0] += wall
                        measured[(path, c)][1] += latencies
                        answers[path].update(got)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = [row(p, c, wall, latencies) for (p, c), (wall, latencies) in measured.items()]
    rows.sort(key=lambda r: (r["clients"], r["path"]))
    table(rows, ["path", "clients", "requests", "req/s", "p50 s", "p95 s"])
    rate = {(r["path"], r["clients"]): r["req/s"] for r in rows}
    figures = {f"{p.replace('-', '_')}_rps_c{c}": round(rate[(p, c)], 3) for p in ("server", "in-process") for c in LEVELS}
    same = answers["server"] == answers["in-process"]
    print(f"answers identical on both paths: {same} ({len(answers['server'])} prompts)")
    finish("serve", {"requests_per_level": per_level, **figures, "answers_identical": same,
                     "serve_overhead_ratio": round(rate[("server", 32)] / rate[("in-process", 32)], 3)})


def _wait(url: str, process, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"metagen serve exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"metagen serve did not answer {url} within {timeout:g} s")


if __name__ == "__main__":
    main()
