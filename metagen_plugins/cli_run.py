"""``metagen run``: a meta-generation strategy on prompts, with its answer, vote and budget per
prompt; ``--compare`` runs greedy decoding beside it on the same prompts.

With no ``--config`` it runs the packaged configuration of the model
(``metagen_plugins/defaults/``): self-consistency with a calculator (``calculator_vote``) over
SmolLM2-135M-Instruct's chat template, or self-consistency over the demo reasoning model with
``--model demo-arith``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError


def add_arguments(run) -> None:
    run.add_argument("--config", help="a TOML configuration file (default: the packaged configuration of "
                     "the model: calculator_vote on SmolLM2-135M-Instruct; --show-config prints it)")
    run.add_argument("--model", help="smollm2-135m-instruct (the default), demo-arith, or a local model "
                     "directory (overrides [host] model)")
    run.add_argument("--strategy", help="the strategy to run (overrides [strategy] name)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="set a strategy parameter (TOML value: n=16, answer_pattern='...'); repeatable")
    run.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                     help="read prompts from FILE: JSON lines {\"prompt\": ..., \"answer\": ...} (answer "
                     "optional) or plain text, one prompt per line")
    run.add_argument("--answers", metavar="A,B,...",
                     help="the known answers of the PROMPTs, comma-separated in order (for accuracy)")
    run.add_argument("--compare", action="store_true",
                     help="also decode greedily on the same prompts; print both answers, accuracies and costs")
    run.add_argument("--show-config", action="store_true", help="print the configuration that would run, and exit")
    run.add_argument("--concurrency", type=int, metavar="N",
                     help="prompts in flight at once (overrides [run] concurrency; 1 = one at a time; "
                     "default: the host's: 64 in-process, the in-flight request limit on a server)")
    run.add_argument("--total-tokens", type=int, metavar="N",
                     help="one budget of N generated tokens for all the prompts, spent where another sample is "
                     "most likely to change an answer (a voting or best-of-N strategy; docs/adaptive.md)")
    run.add_argument("--total-flops", type=float, metavar="F",
                     help="as --total-tokens, in estimated FLOPs (2 x parameters x tokens)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print one JSON object per prompt (with --compare: "
                     "one results file, the input of `metagen plot`)")
    run.add_argument("--trace", metavar="FILE", help="write every candidate, score and selection as JSON lines")
    run.add_argument("prompts", nargs="*", metavar="PROMPT")


def execute(args) -> int:
    from . import config as config_module
    from . import evaluate, get_registry

    try:  # weight-loading progress bars are noise in a CLI run
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    data = _configuration(args)
    if args.show_config:
        _show(args, data)
        return 0
    prompts, expected = _prompts(args)
    registry = get_registry(args.plugins_dir)
    cfg = config_module.validate(data, registry)
    pattern = evaluate.answer_pattern(data)
    strategy = cfg.strategy or {"name": "generate"}
    runs = [(f"{strategy['name']}@{strategy['n']}" if "n" in strategy else strategy["name"], data)]
    validated = [cfg]
    if args.compare:
        runs.insert(0, ("greedy", evaluate.greedy(data)))
        validated.insert(0, config_module.validate(runs[0][1], registry))

    from contextlib import ExitStack

    with ExitStack() as stack:  # before the progress bar: a missing model fails here
        runners = _runners(validated, registry, args.concurrency, stack)
        return _execute(args, runs, runners, prompts, expected, pattern)


def _execute(args, runs: list, runners: list, prompts: list[str], expected: list, pattern: str) -> int:
    """Each run's prompts on its runner, with a progress bar; then the answers, trace, comparison."""
    from tqdm import tqdm

    # A progress bar once a run takes over a second, on a terminal only (not in pipes and logs).
    quiet = args.quiet or not sys.stderr.isatty()
    bar = tqdm(total=len(prompts) * len(runs), unit="prompt", delay=1.0, disable=quiet, file=sys.stderr,
               leave=False)
    outputs: list[tuple[str, list]] = []
    with bar:
        for index, ((label, _), runner) in enumerate(zip(runs, runners)):
            bar.set_description(label)
            pooled = (args.total_tokens or args.total_flops) and not (args.compare and index == 0)  # not greedy

            def show(index, result):
                if not args.compare and not args.json:  # stream each answer as it is ready
                    bar.write(_text(result, expected[index], pattern), file=sys.stdout)

            waiting = _Ordered(prompts, show)

            def done(result):
                bar.update()
                waiting.add(result)  # answers print in input order, each as soon as it can

            try:
                if pooled:
                    outputs.append((label, runner.allocate(prompts, total_tokens=args.total_tokens,
                                                           total_flops=args.total_flops, on_result=done)))
                else:
                    outputs.append((label, runner.map(prompts, on_result=done)))
            finally:
                if not quiet:  # clear the bar even when a streamed answer redrew it
                    sys.stderr.write("\r\033[K")
    if args.debug:  # re-run the first failed prompt alone: it raises, with its traceback
        from . import failed

        for (_, results), runner in zip(outputs, runners):
            lost = next((r for r in results if failed(r)), None)
            if lost is not None:
                runner.submit(lost.prompt, raise_errors=True).result()
    if args.trace:
        from . import trace

        trace.write(args.trace, [r for _, results in outputs for r in results],
                    config=[_plain(c) for _, c in runs for _ in prompts], expected=expected * len(outputs))
    if args.compare:
        _print_comparison(args, outputs, expected, pattern)
    elif args.json:
        for result, answer in zip(outputs[0][1], expected):
            print(json.dumps({**result.to_dict(), **_summary(result, answer, pattern)}))
    return _report_failures([r for _, results in outputs for r in results])


class _Ordered:
    """Results arrive as prompts finish; ``emit(index, result)`` runs in input order, for each
    result as soon as every earlier prompt's has arrived."""

    def __init__(self, prompts: list[str], emit) -> None:
        self.emit = emit
        self.slots: dict[str, list[int]] = {}
        for index, prompt in enumerate(prompts):
            self.slots.setdefault(prompt, []).append(index)
        self.ready: dict[int, Any] = {}
        self.next = 0

    def add(self, result) -> None:
        self.ready[self.slots[result.prompt].pop(0)] = result  # a repeated prompt: first free slot
        while self.next in self.ready:
            self.emit(self.next, self.ready.pop(self.next))
            self.next += 1


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_source"}


def _configuration(args) -> dict[str, Any]:
    from . import config as config_module
    from . import evaluate

    if args.config:
        try:
            data = config_module.load(args.config)
        except ConfigError as exc:
            raise ConfigError(f"{exc}. Check the path (and that the file is UTF-8 TOML), or leave out "
                              f"--config to run the packaged default (calculator_vote on "
                              f"SmolLM2-135M-Instruct; `metagen run --show-config` prints it).") from None
        if args.model:
            data.setdefault("host", {})["model"] = args.model
    else:
        data = evaluate.default_config(args.model)
    if args.strategy:
        data["strategy"] = {"name": args.strategy, **_carried(data.get("strategy") or {}, args.strategy)}
    for item in args.param:
        key, value = override(item)
        data.setdefault("strategy", {"name": "generate"})[key] = value
    return data


def _carried(previous: dict[str, Any], name: str) -> dict[str, Any]:
    """The previous strategy's parameters that ``name`` also takes (an ``answer_pattern`` for a
    voting strategy, say); the rest belonged to the other strategy and are dropped."""
    from . import get_registry
    from .errors import ConfigError

    try:
        accepted = get_registry().get("strategies", name).schema.params
    except ConfigError:  # an unknown name: validation names it and the valid ones
        return {}
    return {k: v for k, v in previous.items() if k != "name" and k in accepted}


def _show(args, data: dict[str, Any]) -> None:
    from importlib import resources

    defaults = resources.files("metagen_plugins") / "defaults"
    if args.config or args.strategy or args.param or (args.model and not (defaults / f"{args.model}.toml").is_file()):
        shown = {k: v for k, v in data.items() if k != "_source"}
        print(f"# {data.get('_source', 'configuration')} with the command line's overrides\n"
              + json.dumps(shown, indent=2))
        return
    source = defaults / f"{(data.get('host') or {}).get('model', '')}.toml"
    print(f"# {source}\n" + source.read_text(encoding="utf-8"), end="")


def override(item: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``n=16``, ``temperature=0.7``, ``stop=["."]``); a bare
    word is a string."""
    import tomllib

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"-p {item!r}: write KEY=VALUE, e.g. -p n=16")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def _prompts(args) -> tuple[list[str], list[str | None]]:
    """The prompts (positional, then ``--prompts FILE``) and their known answers (None if unknown)."""
    prompts = list(args.prompts)
    expected: list[str | None] = [None] * len(prompts)
    if args.answers is not None:
        given = [a.strip() for a in args.answers.split(",")]
        if len(given) != len(prompts):
            raise ConfigError(f"--answers has {len(given)} answer(s) for {len(prompts)} PROMPT(s); give one "
                              f"per prompt, comma-separated, in order (e.g. --answers 19,5)")
        expected = [a or None for a in given]
    if args.prompts_file:
        more = read_prompts(args.prompts_file)
        prompts += [p for p, _ in more]
        expected += [a for _, a in more]
    if not prompts:
        raise ConfigError("no prompts: give PROMPT arguments (e.g. metagen run \"What is 12 + 7? Answer "
                          "with just the number.\") or --prompts FILE")
    return prompts, expected


def read_prompts(path: str) -> list[tuple[str, str | None]]:
    """JSON lines ``{"prompt": ..., "answer": ...}`` or plain text, one prompt per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --prompts {path!r}: {getattr(exc, 'strerror', None) or exc}. Give a "
                          f"UTF-8 file of JSON lines {{\"prompt\": ..., \"answer\": ...}} or one prompt per "
                          f"line.") from None
    out: list[tuple[str, str | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--prompts {path}, line {number} looks like JSON but is not: {exc}") from None
            if not isinstance(item.get("prompt"), str):
                raise ConfigError(f"--prompts {path}, line {number} has no \"prompt\" string")
            answer = item.get("answer")
            out.append((item["prompt"], None if answer is None else str(answer)))
        else:
            out.append((line, None))
    if not out:
        raise ConfigError(f"--prompts {path} holds no prompts")
    return out


def _runners(configs: list, registry, concurrency: int | None, stack) -> list:
    """One Runner per validated configuration (the greedy baseline of --compare and the
    strategy), in order, closed with ``stack``. The first one's host loads the model; an
    in-process host hands its model and tokenizer to the others, so it loads once, and each run
    keeps a host (and prefix cache) of its own, so neither run's costs include the other's."""
    from .runner import Runner

    runners: list = []
    objects: dict[str, Any] = {}
    for cfg in configs:
        runner = stack.enter_context(Runner(cfg, concurrency=concurrency, registry=registry, **objects))
        if not objects and registry.host(cfg.host_name).in_process:
            objects = runner.host.context()
        runners.append(runner)
    return runners


def _summary(result, expected: str | None, pattern: str) -> dict[str, Any]:
    from . import evaluate

    answer = evaluate.extract(result, pattern)
    out: dict[str, Any] = {"answer": answer}
    votes = evaluate.votes(result)
    if votes is not None:
        out["votes"] = votes
    if expected is not None:
        out["expected"] = expected
        out["correct"] = answer == evaluate.normalise(expected)
    return out


def _verdict(summary: dict[str, Any]) -> str:
    if "expected" not in summary:
        return ""
    return f"  ({'correct' if summary['correct'] else 'wrong'}; expected {summary['expected']})"


def _budget(result) -> str:
    s = result.budget.spent()
    return (f"{s['tokens_generated']} tokens generated, {s['samples']} samples, {s['forward_passes']} forward "
            f"passes, {s['flops'] / 1e9:.3g} GFLOPs, {s['wall_time']:.2f} s")


def _text(result, expected: str | None, pattern: str) -> str:
    """One prompt's block: the chosen answer, the vote or scores, the budget."""
    from . import failed

    if failed(result):
        reasons = "; ".join(f["message"] for f in result.failures if "message" in f)
        return f"prompt: {result.prompt}\nFAILED: {reasons}\n"
    summary = _summary(result, expected, pattern)
    lines = [f"prompt: {result.prompt}"]
    if summary["answer"] is not None or "expected" in summary:
        lines.append(f"answer: {summary['answer'] if summary['answer'] is not None else '(none)'}{_verdict(summary)}")
    if summary.get("votes"):
        ranked = sorted(summary["votes"].items(), key=lambda kv: -kv[1])
        lines.append("votes:  " + ", ".join(f"{a} x{v:g}" for a, v in ranked))
    elif result.scores:
        lines.append("scores: " + ", ".join(f"{s:.3g}" for s in result.scores))
    best = result.best.text if result.best else "(no candidate)"
    lines.append("chosen: " + best.strip().replace("\n", "\n        "))
    lines.append(f"budget: {result.strategy}; {_budget(result)}")
    return "\n".join(lines) + "\n"


def _print_comparison(args, outputs, expected, pattern) -> None:
    from . import evaluate

    rows = [evaluate.row(label, results, expected, pattern) for label, results in outputs]
    if args.json:
        prompts = []
        for i, prompt in enumerate(outputs[0][1]):
            entry: dict[str, Any] = {"prompt": prompt.prompt, "expected": expected[i]}
            for label, results in outputs:
                r = results[i]
                entry[label] = {**_summary(r, expected[i], pattern), "text": r.best.text if r.best else None,
                                "budget": r.budget.spent(), "failures": r.failures}
            prompts.append(entry)
        model = (args.model or "") or "configured model"
        print(json.dumps(evaluate.results_file(rows, task=f"metagen run --compare ({model})",
                                               prompts=prompts), indent=2))
        return
    labels = [label for label, _ in outputs]
    width = max(len(l) for l in labels)
    for i, first in enumerate(outputs[0][1]):
        print(f"prompt: {first.prompt}")
        for label, results in outputs:
            r = results[i]
            s = _summary(r, expected[i], pattern)
            votes = s.get("votes")
            extra = ("  votes " + ", ".join(f"{a} x{v:g}" for a, v in sorted(votes.items(), key=lambda kv: -kv[1]))
                     if votes else "")
            answer = s["answer"] if s["answer"] is not None else "(none)"
            text = (r.best.text.strip().splitlines() or [""])[0][:60] if r.best else "(no candidate)"
            print(f"  {label.ljust(width)}  answer {answer}{_verdict(s)}{extra}\n  {' ' * width}  {text!r}")
        print()
    known = sum(e is not None for e in expected)
    # latency: a prompt's mean time from start to answer; prompts run at once overlap, so it is
    # not the run's wall time divided by the prompts
    header = ["strategy", "accuracy", "tokens/prompt", "GFLOPs/prompt", "latency s"]
    table = [header]
    for r in rows:
        accuracy = f"{r['correct']}/{known} ({r['accuracy']:.1%})" if r["accuracy"] is not None else "-"
        table.append([r["strategy"], accuracy, f"{r['tokens']:.1f}", f"{r['flops'] / 1e9:.3g}",
                      f"{r['wall_time']:.2f}"])
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not known:
        print("(no known answers: give --answers or --prompts FILE with \"answer\" fields for accuracy)")


def _report_failures(results) -> int:
    """Warn about partial failures; exit 1 when some prompt's run failed as a whole."""
    from . import failed

    for result in results:
        for failure in result.failures:  # partial failures: the prompt completed without them
            if "message" not in failure:
                print(f"warning: prompt {result.prompt[:60]!r}: {failure.get('kind', 'request')} failure: "
                      f"{failure.get('error')}", file=sys.stderr)
    lost = [r for r in results if failed(r)]
    if not lost:
        return 0
    first = next(f for f in lost[0].failures if "message" in f)
    who = first.get("plugin") or first.get("component", "the host")
    dist = f" (distribution {first['distribution']})" if first.get("distribution") else ""
    fix = (f"Fix or update the plugin {who!r}{dist}, remove {first.get('name', 'the component')!r} from the "
           f"configuration, or disable the plugin with METAGEN_DISABLE_PLUGINS={who}"
           if first.get("kind") == "component" else "Check the model and the host settings of the configuration")
    print(f"error: {len(lost)} of {len(results)} prompt(s) failed; the rest completed. The first failure: "
          f"{first['message']}. {fix}; run with --debug for the traceback.", file=sys.stderr)
    return 1
