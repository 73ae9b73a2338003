"""Running its_hub's side (bench/its_hub_side.py) from a metagen bench: in its own venv, against a
vLLM server that answers its chat requests the way metagen's completions are answered.

its_hub speaks only ``/v1/chat/completions``; the demo model has no chat template, so the server
is started with one that passes the message through (:func:`chat_template_args`): the same token
ids as metagen's raw prompt on ``/v1/completions``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

SIDE = Path(__file__).with_name("its_hub_side.py")
DEFAULT_PYTHON = "/work/its_hub_venv/bin/python"  # python3 -m venv ... && pip install 'its-hub[lm]==1.2.0'
PASS_THROUGH = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


class Stalled(RuntimeError):
    """its_hub did not finish within the time given (it has stalled on this machine before)."""


def chat_template_args(folder: Path) -> tuple[str, str]:
    """The server arguments for the pass-through chat template, written into ``folder``."""
    template = Path(folder) / "raw.jinja"
    template.write_text(PASS_THROUGH)
    return "--chat-template", str(template)


def run(python: str, server, problems: list[tuple[str, object]], algorithm: str, max_samples: int,
        timeout: float = 600.0, **options) -> dict:
    """its_hub's ``algorithm`` over ``problems`` ((prompt, answer) pairs) on ``server`` (a
    tests/fakes VLLMServer): the summary bench/its_hub_side.py writes (``wall_seconds``: the
    ``asyncio.gather`` over every prompt alone, not the interpreter's start). ``options``:
    its_hub_side flags, e.g. ``temperature=0.8``, ``max_tokens=48``. Raises :class:`Stalled`
    after ``timeout`` seconds."""
    folder = Path(tempfile.mkdtemp())
    prompts = folder / "problems.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": str(a)}) + "\n" for p, a in problems))
    out = folder / "its_hub.json"
    command = [python, str(SIDE), "--base-url", f"{server.url}/v1", "--model", server.host["model"],
               "--prompts", str(prompts), "--out", str(out), "--max-samples", str(max_samples),
               "--algorithm", algorithm]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    try:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Stalled(f"its_hub {algorithm} (n={max_samples}) did not finish in {timeout:g} s") from None
    return json.loads(out.read_text())["summary"]
