"""The ``metagen`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from . import __version__
from .host_info import OWN_COMMANDS


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

    run = commands.add_parser("run", help="run a strategy on prompts (default: calculator_vote on "
                              "SmolLM2-135M-Instruct); --compare runs greedy beside it")
    from . import cli_run

    cli_run.add_arguments(run)

    again = commands.add_parser("reselect", help="re-run selection on a trace, without generating")
    again.add_argument("trace", metavar="TRACE")
    again.add_argument("--strategy", required=True, help="self_consistency, weighted_majority, best_of_n or mbr")
    again.add_argument("--scorer", help="rescore with a scorer that needs no model (e.g. step_checker, logprob)")
    again.add_argument("--answer-pattern", help="the regular expression whose first group is the answer")
    again.add_argument("--json", action="store_true", help="print one JSON object per prompt")

    registry = _preload(argv)
    deploy = _plugin_commands(registry, commands)

    serving = commands.add_parser("serve", help="serve profiles (strategies) behind an OpenAI-compatible API")
    from . import serve as serve_module

    serve_module.add_arguments(serving)

    draw = commands.add_parser("plot", help="draw accuracy vs compute from a results file or a trace")
    draw.add_argument("source", metavar="TRACE_OR_RESULTS",
                      help="a results file (metagen run --json --compare > results.json) or a trace (--trace)")
    draw.add_argument("-o", "--output", help="the PNG, SVG or PDF to write (default: SOURCE with .png)")
    draw.add_argument("--title", help="the plot's title")
    draw.add_argument("--x", choices=("flops", "tokens", "wall"), default="flops",
                      help="the compute axis: FLOPs (default), tokens generated or wall time per prompt "
                      "(rows with tokens / wall: bench/adaptive.py writes both)")

    new = commands.add_parser("new-plugin", help="write a ready-to-install plugin distribution")
    new.add_argument("name", metavar="NAME", help="the plugin's name, e.g. shout (-> metagen-shout, metagen_shout)")
    new.add_argument("--dir", default=".", help="where to create metagen-NAME/ (default: here)")
    from .templates import KINDS

    new.add_argument("--kind", choices=tuple(KINDS), default="scorer",
                     help="what the plugin registers: a scorer (default), a logits processor, a stopping "
                          "criterion, a strategy or a host")

    args = parser.parse_args(argv)
    from .errors import MetagenError

    try:
        if args.command == "plugins":
            return _plugins_list(args)
        if args.command == "reselect":
            return _reselect(args)
        if args.command in deploy:
            return deploy[args.command](args, registry)
        if args.command == "serve":
            return serve_module.main(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "new-plugin":
            from .templates import new_plugin

            return new_plugin(args.name, args.dir, args.kind)
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


def _plugin_commands(registry, commands) -> dict[str, Any]:
    """The plugins' commands as subcommands (``register_commands``, and a host's ``deploy=``
    module, the older way): command name -> its ``main(args, registry)``. A command whose
    arguments fail to load is reported and left out; the rest of the command line works."""
    found: dict[str, Any] = {}
    for command in registry.commands.values() if registry is not None else ():
        try:
            command.add_arguments(commands.add_parser(command.name, help=command.help))
        except Exception as exc:  # a plugin's broken tooling must not take the command line down
            print(f"warning: plugin {command.plugin!r}'s command {command.name!r} failed to add its arguments: "
                  f"{type(exc).__name__}: {exc}; metagen {command.name} ... is unavailable", file=sys.stderr)
            continue
        found[command.name] = command.main
    for host in registry.hosts.values() if registry is not None else ():
        if host.deploy and host.name not in found:
            try:
                module = importlib.import_module(host.deploy)
                module.add_arguments(commands.add_parser(host.name, help=(module.__doc__ or " ").splitlines()[0]))
            except Exception as exc:
                print(f"warning: the {host.label()} declares deploy={host.deploy!r}, which failed to load: "
                      f"{type(exc).__name__}: {exc}; metagen {host.name} ... is unavailable", file=sys.stderr)
                continue
            found[host.name] = module.main
    return found


def _plugins_list(args) -> int:
    registry = _registry(args)
    records = list(registry.manager.records.values())
    if args.json:
        print(json.dumps([_record(r, registry) for r in records], indent=2))
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


def _record(r, registry) -> dict[str, Any]:
    record = {"name": r.name, "distribution": r.distribution, "version": r.version, "status": r.status,
              "error": r.error, "source": r.source, "hooks": r.hooks, "components": r.components}
    hosts = [registry.hosts[h] for h in r.components.get("hosts", ()) if h in registry.hosts]
    if hosts:  # each host's realiser keys, declared capabilities and settings
        record["hosts"] = {h.name: h.as_dict() for h in hosts}
    return record


def _run(args) -> int:
    from . import cli_run

    return cli_run.execute(args)


def _plot(args) -> int:
    from pathlib import Path

    from .plot import load, plot

    out = Path(args.output) if args.output else Path(args.source).with_suffix(".png")
    written = plot(load(args.source), out, title=args.title, x=args.x)
    print(f"wrote {written}")
    return 0


# metagen's own commands (OWN_COMMANDS); any other (or none, for --help) may be a plugin's
# (register_commands), so the registry is loaded before the command line is parsed.


def _preload(argv: list[str] | None):
    """The plugin registry, loaded before the command line is parsed when the hosts it holds may
    add the subcommand asked for (a host's tooling, or --help); ``--plugins-dir`` is read ahead
    for it. None for metagen's own commands and --version, which load it later if they need it."""
    from .registry import get_registry

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugins-dir")
    known, rest = early.parse_known_args(argv)
    command = next((a for a in rest if not a.startswith("-")), None)
    if command in OWN_COMMANDS or (command is None and "--version" in rest):
        return None
    return get_registry(known.plugins_dir, reload=known.plugins_dir is not None)


def _registry(args):
    """The registry :func:`_preload` loaded (with ``--plugins-dir``'s plugins)."""
    from .registry import get_registry

    return get_registry(args.plugins_dir)


def _reselect(args) -> int:
    from . import trace
    from .components import build

    scorer = None
    if args.scorer:
        info = _registry(args).get("scorers", args.scorer)
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
