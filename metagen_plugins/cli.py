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

    run = commands.add_parser("run", help="run a strategy on prompts (default: self-consistency on "
                              "SmolLM2-135M-Instruct); --compare runs greedy beside it")
    from . import cli_run

    cli_run.add_arguments(run)

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

    serving = commands.add_parser("serve", help="serve profiles (strategies) behind an OpenAI-compatible API")
    from . import serve as serve_module

    serve_module.add_arguments(serving)

    draw = commands.add_parser("plot", help="draw accuracy vs compute from a results file or a trace")
    draw.add_argument("source", metavar="TRACE_OR_RESULTS",
                      help="a results file (metagen run --json --compare > results.json) or a trace (--trace)")
    draw.add_argument("-o", "--output", help="the PNG, SVG or PDF to write (default: SOURCE with .png)")
    draw.add_argument("--title", help="the plot's title")

    new = commands.add_parser("new-plugin", help="write a ready-to-install plugin distribution")
    new.add_argument("name", metavar="NAME", help="the plugin's name, e.g. shout (-> metagen-shout, metagen_shout)")
    new.add_argument("--dir", default=".", help="where to create metagen-NAME/ (default: here)")

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
        if args.command == "serve":
            return serve_module.main(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "new-plugin":
            from .templates import new_plugin

            return new_plugin(args.name, args.dir)
        return _run(args)
    except MetagenError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, in metagen or a plugin: one paragraph, the traceback on request
        if args.debug:
            raise
        print(f"error: metagen {args.command} failed unexpectedly with {type(exc).__name__}: {exc}. This is "
              f"a bug in metagen or in a plugin it loaded; run again with --debug for the traceback and "
              f"report it (metagen plugins list shows what is loaded).", file=sys.stderr)
        return 1


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
    from . import cli_run

    return cli_run.execute(args)


def _plot(args) -> int:
    from pathlib import Path

    from .plot import load, plot

    out = Path(args.output) if args.output else Path(args.source).with_suffix(".png")
    written = plot(load(args.source), out, title=args.title)
    print(f"wrote {written}")
    return 0


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
