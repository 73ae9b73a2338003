"""The ``metagen`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metagen", description="Meta-generation strategies as plugins.")
    parser.add_argument("--version", action="version", version=f"metagen-plugins {__version__}")
    parser.add_argument("--plugins-dir", help="also load every *.py file of this directory as a plugin")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    plugins = commands.add_parser("plugins", help="installed plugins")
    plugins_commands = plugins.add_subparsers(dest="plugins_command", required=True)
    listing = plugins_commands.add_parser("list", help="list plugins, their status and components")
    listing.add_argument("--json", action="store_true", help="print JSON")

    run = commands.add_parser("run", help="run the configured strategy on prompts")
    run.add_argument("--config", required=True, help="a TOML configuration file")
    run.add_argument("--model", help="a local model directory or built-in name (overrides [host] model)")
    run.add_argument("--strategy", help="the strategy to run (overrides [strategy] name)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="set a strategy parameter (TOML value: n=16, answer_pattern='...'); repeatable")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    run.add_argument("--trace", metavar="FILE", help="write every candidate, score and selection as JSON lines")
    run.add_argument("prompts", nargs="+", metavar="PROMPT")

    again = commands.add_parser("reselect", help="re-run selection on a trace, without generating")
    again.add_argument("trace", metavar="TRACE")
    again.add_argument("--strategy", required=True, help="self_consistency, weighted_majority, best_of_n or mbr")
    again.add_argument("--scorer", help="rescore with a scorer that needs no model (e.g. step_checker, logprob)")
    again.add_argument("--answer-pattern", help="the regular expression whose first group is the answer")
    again.add_argument("--json", action="store_true", help="print one JSON object per prompt")

    tgi = commands.add_parser("tgi", help="TGI deployments: launcher arguments, checks")
    tgi_commands = tgi.add_subparsers(dest="tgi_command", required=True)
    launcher = tgi_commands.add_parser("launcher-args", help="print text-generation-launcher arguments "
                                       "and the docker command for a configuration")
    launcher.add_argument("--config", required=True, help="a TOML configuration with [host] name = \"tgi\"")
    tgi_check = tgi_commands.add_parser("check", help="read /info and /health; report what the "
                                        "deployment supports of a configuration")
    tgi_check.add_argument("url", metavar="URL")
    tgi_check.add_argument("--config", help="a TOML configuration to check against the deployment")

    vllm = commands.add_parser("vllm", help="vLLM deployments")
    vllm_commands = vllm.add_subparsers(dest="vllm_command", required=True)
    serve = vllm_commands.add_parser("serve-args", help="print the vLLM server command for a configuration")
    serve.add_argument("--config", required=True, help="a TOML configuration with [host] name = \"vllm\"")
    serve.add_argument("--json", action="store_true", help="print the command as a JSON list of arguments")

    args = parser.parse_args(argv)
    from .errors import MetagenError

    try:
        if args.command == "plugins":
            return _plugins_list(args)
        if args.command == "reselect":
            return _reselect(args)
        if args.command == "vllm":
            from .hosts.vllm import main_serve_args

            return main_serve_args(args.config, as_json=args.json)
        if args.command == "tgi":
            return _tgi(args)
        return _run(args)
    except MetagenError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _plugins_list(args) -> int:
    from . import get_registry

    registry = get_registry(args.plugins_dir, reload=True)
    records = list(registry.manager.records.values())
    if args.json:
        print(json.dumps([_record(r) for r in records], indent=2))
        return 0
    rows = [("NAME", "VERSION", "STATUS", "HOOKS", "COMPONENTS")]
    for r in records:
        components = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.components.items())
        rows.append((r.name, r.version or "-", r.status, ", ".join(h.removeprefix("register_") for h in r.hooks) or "-",
                     components or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    for r in records:
        if r.error:
            print(f"\n{r.name}: {r.error}")
    return 0


def _record(r) -> dict[str, Any]:
    return {"name": r.name, "distribution": r.distribution, "version": r.version, "status": r.status,
            "error": r.error, "source": r.source, "hooks": r.hooks, "components": r.components}


def _run(args) -> int:
    from . import config as config_module

    try:  # weight-loading progress bars are noise in a CLI run
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    from . import get_registry, run

    registry = get_registry(args.plugins_dir, reload=args.plugins_dir is not None)
    data = config_module.load(args.config)
    if args.model:
        data.setdefault("host", {})["model"] = args.model
    if args.strategy:
        data["strategy"] = {"name": args.strategy}  # another strategy's parameters do not carry over
    for item in args.param:
        key, value = _override(item)
        data.setdefault("strategy", {"name": "generate"})[key] = value
    cfg = config_module.validate(data, registry)
    from tqdm import tqdm

    bar = tqdm(total=len(args.prompts), desc=cfg.strategy["name"] if cfg.strategy else "generate",
               unit="prompt", delay=1.0, disable=args.quiet, file=sys.stderr)
    with bar:
        results = run(cfg, args.prompts, on_result=lambda _: bar.update())
    if args.trace:
        from . import trace

        trace.write(args.trace, results, config=data)
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict()))
            continue
        best = result.best.text if result.best else "(no candidate)"
        spent = result.budget.spent()
        print(f"prompt: {result.prompt}\n{best}\n"
              f"[strategy {result.strategy}; {spent['tokens_generated']} tokens generated, "
              f"{spent['forward_passes']} forward passes, {spent['wall_time']:.2f} s]\n")
    return 0


def _override(item: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``n=16``, ``temperature=0.7``, ``stop=["."]``); a bare
    word is a string."""
    import tomllib

    from .errors import ConfigError

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"-p {item!r}: write KEY=VALUE, e.g. -p n=16")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def _tgi(args) -> int:
    from . import get_registry
    from .config import validate
    from .hosts import tgi

    registry = get_registry(args.plugins_dir, reload=args.plugins_dir is not None)
    cfg = validate(args.config, registry) if args.config else None
    if cfg is not None and cfg.host_name != "tgi":
        from .errors import ConfigError

        raise ConfigError(f"{args.config}: [host] name is {cfg.host_name!r}; metagen tgi needs name = \"tgi\"")
    if args.tgi_command == "launcher-args":
        print(tgi.launcher_command(cfg))
        print(f"\n# or, in TGI's container:\n{tgi.docker_command(cfg)}")
        return 0
    return tgi.run_check(args.url, cfg)


def _reselect(args) -> int:
    from . import get_registry, trace
    from .config import build

    scorer = None
    if args.scorer:
        info = get_registry(args.plugins_dir, reload=args.plugins_dir is not None).get("scorers", args.scorer)
        if info.schema.context:
            from .errors import ConfigError

            raise ConfigError(f"--scorer {args.scorer} needs a model ({', '.join(info.schema.context)}); "
                              f"reselect runs offline: use a scorer that needs none")
        scorer = build(info, {}, prefix="--scorer: ")
    for traced in trace.read(args.trace):
        index, info = trace.reselect(traced, args.strategy, scorer, args.answer_pattern)
        best = traced.candidates[index] if index is not None else None
        if args.json:
            print(json.dumps({"prompt": traced.prompt, "strategy": args.strategy, "index": index,
                              "best": best.text if best else None, "was": traced.best, **info}))
        else:
            print(f"prompt: {traced.prompt}\n{best.text if best else '(no candidate)'}\n"
                  f"[{args.strategy} chose candidate {index} of {len(traced.candidates)}; "
                  f"the run had chosen {traced.best}]\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
