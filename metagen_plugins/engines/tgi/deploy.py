"""TGI deployments: launcher arguments for a configuration, and checks of a running deployment.

``metagen tgi launcher-args`` and ``metagen tgi check``.

:func:`launcher_args` builds the ``text-generation-launcher`` arguments (and the equivalent
``docker run``); :func:`check_deployment` reads a running deployment's ``/info`` and ``/health``
and says which limits and configured components it supports. The runtime host that talks to the
deployment is :mod:`.host`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...errors import ConfigError, HostError
from .host import (DEFAULT_MAX_BEST_OF, DEFAULT_MAX_STOP_SEQUENCES, DEFAULT_MAX_TOP_N_TOKENS, TGIHost,
                   check_settings, classify)

IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"


def launcher_args(config, registry) -> list[str]:
    """The ``text-generation-launcher`` arguments a deployment needs to serve ``config`` (a
    validated TGI configuration; ``registry`` the one it was validated against)."""
    check_settings(config, registry, launching=True)
    host = config.host
    if "model_id" not in host:
        raise ConfigError("set [host] model_id (the Hub id or local path TGI serves) to build the "
                          "launcher arguments")
    args = ["--model-id", host["model_id"]]
    if host.get("speculate"):
        args += ["--speculate", str(host["speculate"])]
    if "kv_cache" in host:
        args += ["--kv-cache-dtype", host["kv_cache"]]
    if "quantize" in host:
        args += ["--quantize", host["quantize"]]
    best_of = max(host.get("max_best_of", 0), host.get("best_of", 1))
    if best_of > DEFAULT_MAX_BEST_OF or "max_best_of" in host:
        args += ["--max-best-of", str(best_of)]
    stops = sum(len(e.get("stop", [])) for e in config.stopping if e["name"] == "stop_strings")
    stops = max(stops, host.get("max_stop_sequences", 0))
    if stops > DEFAULT_MAX_STOP_SEQUENCES or "max_stop_sequences" in host:
        args += ["--max-stop-sequences", str(stops)]
    top_n = max(host.get("max_top_n_tokens", 0), host.get("top_n_tokens", 0))
    if top_n > DEFAULT_MAX_TOP_N_TOKENS or "max_top_n_tokens" in host:
        args += ["--max-top-n-tokens", str(top_n)]
    for entry in config.processors:
        if entry["name"] == "watermark":  # per request TGI only switches it on; these are global
            args += ["--watermark-gamma", f"{entry.get('greenlist_ratio', 0.25):g}",
                     "--watermark-delta", f"{entry.get('bias', 2.0):g}"]
    return args


def launcher_command(config, registry) -> str:
    """``text-generation-launcher`` with :func:`launcher_args`, quoted for a POSIX shell."""
    return shlex.join(["text-generation-launcher", *launcher_args(config, registry)])


def docker_command(config, registry, image: str = IMAGE) -> str:
    """The equivalent ``docker run`` of TGI's container, publishing the port of ``[host] url``."""
    args = launcher_args(config, registry)
    port = urlsplit(config.host["url"]).port if "url" in config.host else None
    return (f"docker run --gpus all --shm-size 1g -p {port or 8080}:80 -v \"$PWD/data:/data\" "
            f"{shlex.quote(image)} {shlex.join(args)}")


# -- checking a deployment ---------------------------------------------------------------------


@dataclass
class CheckLine:
    status: str  # ok, FAIL or note
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.subject}: {self.detail}"


def check_deployment(url: str, config=None, timeout: float = 10.0) -> tuple[dict[str, Any], list[CheckLine]]:
    """Read ``/info`` and ``/health`` of the deployment at ``url``; say which limits and which
    configured components it supports. Returns the /info document and the report lines."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=url.rstrip("/"), provider="hf-inference", timeout=timeout,
                             token=config.host.get("api_key") if config is not None else None)
    try:
        info = client.get_endpoint_info()
        healthy = client.health_check()
    except Exception as exc:
        failure = classify(exc)
        raise HostError(f"cannot read {url.rstrip('/')}/info: {failure}") from None
    lines = [CheckLine("ok" if healthy else "FAIL", "health", "GET /health answered 200" if healthy
                       else "GET /health did not answer 200: the model is not ready")]
    lines.append(CheckLine("note", "model", f"{info.get('model_id')} (TGI {info.get('version')}, "
                                            f"router {info.get('router')})"))
    for key in ("max_input_tokens", "max_total_tokens", "max_concurrent_requests", "max_client_batch_size",
                "max_best_of", "max_stop_sequences"):
        if key in info:
            lines.append(CheckLine("note", key, str(info[key])))
    if config is None:
        return info, lines
    lines += _config_lines(info, config)
    return info, lines


def _config_lines(info: dict[str, Any], config) -> list[CheckLine]:
    host, out = config.host, []
    if "model_id" in host and info.get("model_id") not in (None, host["model_id"]):
        out.append(CheckLine("FAIL", "model_id", f"configured {host['model_id']!r}, the server serves "
                                                 f"{info.get('model_id')!r}"))
    best_of = host.get("best_of", 1)
    if best_of > 1:
        ok = best_of <= info.get("max_best_of", DEFAULT_MAX_BEST_OF)
        out.append(CheckLine("ok" if ok else "FAIL", "best_of", f"{best_of} (server max_best_of "
                             f"{info.get('max_best_of')}){'' if ok else ': relaunch with --max-best-of'}"))
    for key in ("max_best_of", "max_stop_sequences"):
        if key in host and key in info and host[key] != info[key]:
            out.append(CheckLine("FAIL", key, f"configured {host[key]}, the server says {info[key]}: "
                                              f"set [host] {key} = {info[key]}"))
    cap = info.get("max_stop_sequences", DEFAULT_MAX_STOP_SEQUENCES)
    for key, default in (("max_best_of", DEFAULT_MAX_BEST_OF), ("max_stop_sequences", DEFAULT_MAX_STOP_SEQUENCES)):
        if key not in host and info.get(key, default) > default:
            out.append(CheckLine("note", key, f"the server allows {info[key]}; set [host] {key} = {info[key]} "
                                              f"to use them (metagen assumes TGI's default {default})"))
    for entry in config.processors + config.stopping:
        name = entry["name"]
        if name == "stop_strings" and len(entry.get("stop", [])) > cap:
            out.append(CheckLine("ok", name, f"{len(entry['stop'])} stop strings, server takes {cap}: "
                                             f"the rest are enforced client-side over /generate_stream"))
        elif name == "watermark":
            out.append(CheckLine("note", name, "supported (watermark=true); /info does not show the "
                                               "server's --watermark-gamma/--watermark-delta"))
        else:
            out.append(CheckLine("ok", name, "supported as request parameters"))
    if "top_n_tokens" in host:
        out.append(CheckLine("note", "top_n_tokens", f"{host['top_n_tokens']}: /info does not report "
                             f"--max-top-n-tokens (default {DEFAULT_MAX_TOP_N_TOKENS})"))
    for key in ("speculate", "kv_cache", "quantize"):
        if key in host:
            out.append(CheckLine("note", key, f"{host[key]}: a launcher setting /info does not report"))
    if host.get("concurrency", TGIHost.requests_per_replica) > info.get("max_concurrent_requests", 1 << 30):
        out.append(CheckLine("FAIL", "concurrency", f"[host] concurrency {host.get('concurrency', TGIHost.requests_per_replica)} exceeds "
                             f"max_concurrent_requests {info['max_concurrent_requests']}: requests would "
                             f"be refused with 429"))
    budget = info.get("max_total_tokens", 0) - info.get("max_input_tokens", 0)
    wanted = config.generation.get("max_new_tokens")
    if wanted and budget > 0 and wanted > budget:
        out.append(CheckLine("FAIL", "max_new_tokens", f"{wanted} > max_total_tokens - max_input_tokens "
                                                      f"({budget}): TGI rejects such requests"))
    return out


def run_check(url: str, config=None) -> int:
    """`metagen tgi check`: print the report; 1 if anything failed."""
    _, lines = check_deployment(url, config)
    for line in lines:
        print(line)
    return 1 if any(line.status == "FAIL" for line in lines) else 0




def add_arguments(parser) -> None:
    """``metagen tgi ...``: this host's subcommands."""
    commands = parser.add_subparsers(dest="tgi_command", required=True)
    launcher = commands.add_parser("launcher-args", help="print text-generation-launcher arguments "
                                   "and the docker command for a configuration")
    launcher.add_argument("--config", required=True, help="a TOML configuration with [host] name = \"tgi\"")
    check = commands.add_parser("check", help="read /info and /health; report what the "
                                "deployment supports of a configuration")
    check.add_argument("url", metavar="URL")
    check.add_argument("--config", help="a TOML configuration to check against the deployment")


def main(args, registry) -> int:
    from ...config import validate

    cfg = validate(args.config, registry) if args.config else None
    if cfg is not None and cfg.host_name != "tgi":
        raise ConfigError(f"{args.config}: [host] name is {cfg.host_name!r}; metagen tgi needs name = \"tgi\"")
    if args.tgi_command == "launcher-args":
        print(launcher_command(cfg, registry))
        print(f"\n# or, in TGI's container:\n{docker_command(cfg, registry)}")
        return 0
    return run_check(args.url, cfg)
