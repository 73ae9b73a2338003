"""The runner: a configuration's strategy over many prompts at once, on one host.

Strategies are plain synchronous code that runs one prompt. The runner runs many of them at
the same time, each prompt's strategy in its own worker thread, all sharing one host; the host
gathers what they ask for (the transformers host decodes every pending sequence in one batched
loop; the remote hosts keep one in-flight limit across prompts). A prompt that fails, fails
alone: its Result carries the failure and the others go on.

    with Runner(config) as runner:             # loads the model once
        future = runner.submit("2 + 2 = ?")    # -> concurrent.futures.Future[Result]
        results = runner.map(prompts, on_result=print)
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

from metagen_hooks import Budget, Result

from .components import build, component_of, params
from .config import Config, validate
from .errors import ConfigError
from .registry import get_registry

# Prompts in flight at once when neither [run] concurrency nor concurrency= says, for a host that
# names no default of its own (``host.default_concurrency``: a remote host's is its in-flight
# request limit, so a serving engine's queue stays full; else its declared
# ``Capabilities.concurrency``): enough to fill an in-process batch.
DEFAULT_CONCURRENCY = 64


class Runner:
    """One host (model loaded once) and a pool of workers that run prompts' strategies on it.

    ``concurrency`` is how many prompts run at once (1 = one after another); ``None`` takes
    ``[run] concurrency`` from the configuration, else the host's default. ``registry`` is the
    plugin registry to resolve names in (the installed plugins' when ``None``).
    """

    def __init__(self, config: Any, *, model=None, tokenizer=None, concurrency: int | None = None,
                 registry=None) -> None:
        if registry is None:
            registry = get_registry()
        self.registry = registry
        self.config = config if isinstance(config, Config) else validate(config, registry)
        _concurrency(concurrency, self.config)  # a bad value fails before the model loads
        self._scorers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._check_before_loading(self.config)
        self.host = registry.create_host(self.config, model=model, tokenizer=tokenizer)
        try:  # a scorer that needs the host's model fails here, once, not in every prompt
            self._scorer(self.config, self.host)
        except BaseException:
            self._close_host()
            raise
        self.capabilities = registry.host(self.config.host_name).capabilities  # what the host declared
        self.concurrency = _concurrency(concurrency, self.config, self.host, self.capabilities.concurrency)
        # (threads start as prompts arrive: a few prompts never start the whole pool)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="metagen-prompt")
        self._held: dict[int, threading.Event] = {}  # map()'s gate, by the thread submitting
        self._closed = False

    # -- running prompts -------------------------------------------------------------------

    def submit(self, prompt: str, *, config: Config | None = None, raise_errors: bool = False,
               conversation: Sequence[dict[str, str]] = (),
               on_text: Callable[[str], None] | None = None) -> "Future[Result]":
        """Start ``prompt``'s strategy; the future holds its Result. ``config`` (validated, same
        host) replaces the runner's strategy, scorer, components and budget for this prompt.
        A failing prompt's Result lists the failure, unless ``raise_errors`` (then the future
        raises it, with a note naming the component).

        ``conversation``: earlier chat turns (``{"role", "content"}``: a system message, user
        and assistant turns) that ``prompt``, the last user message, continues; the host formats
        them with the model's chat template (hosts whose ``conversations`` is true).
        ``on_text``: for plain decoding, called (in the host's own thread; keep it quick) with
        each new piece of the text of the strategy's first one-sample request as it is decoded,
        on hosts whose ``streams`` is true (see :attr:`streams`); the pieces add up to that
        candidate's text, and raising from it stops that request. A strategy that samples more
        than one candidate streams nothing useful: give it only for ``generate``.

        The future's ``budget`` is the prompt's Budget, live: what it has spent so far."""
        if self._closed:
            raise RuntimeError("this Runner is closed")
        check_prompt(0, prompt)
        cfg = config or self.config
        if cfg.host != self.config.host:
            raise ConfigError("a per-prompt configuration must keep the runner's [host] settings")
        extras: dict[str, Any] = {}
        if conversation:
            if not getattr(self.host, "conversations", self.capabilities.conversations):
                raise ConfigError(f"the {cfg.host_name} host applies no chat template here, so it cannot format "
                                  f"a conversation of several messages: send one message, or give the host a "
                                  f"chat template (on a remote host: [host] tokenizer = the served model's "
                                  f"tokenizer)")
            extras["conversation"] = [{"role": m["role"], "content": m["content"]} for m in conversation]
        if on_text is not None and self.streams:
            extras["on_text"] = on_text
        budget = Budget(**cfg.budget)
        future = self._pool.submit(self._run_one, prompt, cfg, raise_errors, extras,
                                   self._held.get(threading.get_ident()), budget)
        future.budget = budget
        return future

    @property
    def streams(self) -> bool:
        """Whether ``submit(on_text=...)`` streams text live on this runner's host: its ``streams``
        attribute (per configuration), else its declared ``Capabilities.streaming``."""
        return bool(getattr(self.host, "streams", self.capabilities.streaming))

    def map(self, prompts: Sequence[str], *, on_result: Callable[[Result], None] | None = None,
            raise_errors: bool = False) -> list[Result]:
        """Every prompt's Result, in input order; ``on_result`` is called (in this thread) with
        each one as soon as it is done, in the order they finish."""
        for index, prompt in enumerate(prompts):
            check_prompt(index, prompt)
        # The workers wait until every prompt is submitted, then start together: starting a
        # thread waits for it to run, and one already at work holds the GIL, so without the
        # gate the first requests went out ~3 ms apart per prompt (100 ms for 32), too spread
        # for an engine to batch them in one step.
        gate = self._held[threading.get_ident()] = threading.Event()
        try:
            futures = [self.submit(p, raise_errors=raise_errors) for p in prompts]
        finally:
            del self._held[threading.get_ident()]
            gate.set()
        if on_result is not None:
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                if future.exception() is None:
                    on_result(future.result())
        return [f.result() for f in futures]

    def allocate(self, prompts: Sequence[str], *, total_tokens: int | None = None, total_flops: float | None = None,
                 on_result: Callable[[Result], None] | None = None, **options) -> list[Result]:
        """One budget across ``prompts`` (``metagen_plugins.allocate``): a first round for every
        prompt, the rest where another sample is most likely to change the answer."""
        from .allocate import allocate

        for index, prompt in enumerate(prompts):
            check_prompt(index, prompt)
        return allocate(self, prompts, total_tokens=total_tokens, total_flops=total_flops, on_result=on_result,
                        **options)

    def describe(self, exc: BaseException) -> dict[str, Any]:
        """The ``Result.failures`` entry for an exception that ended a prompt's run."""
        return describe_failure(exc, self.config, self.host)

    def _run_one(self, prompt: str, cfg: Config, raise_errors: bool, extras: dict[str, Any],
                 gate: threading.Event | None, budget: Budget) -> Result:
        if gate is not None:
            gate.wait()
        strategy_entry = cfg.strategy or {"name": "generate"}
        if cfg is not self.config:
            extras = {"config": cfg, **extras}
        generator = self.host.generator(budget, **extras)
        budget.start()
        try:
            strategy = build(self.registry.get("strategies", strategy_entry["name"]), params(strategy_entry),
                             prefix="[strategy]: ")  # one per prompt: a strategy may keep state on self
            result = strategy.run(prompt, generator, self._scorer(cfg, self.host), budget)
        except Exception as exc:  # this prompt failed; the others go on
            failure = describe_failure(exc, cfg, self.host)
            if raise_errors:
                if failure["kind"] == "component":
                    exc.add_note(failure["message"])
                raise
            result = Result(prompt=prompt, best=None, budget=budget, trace=[{"event": "failed", **failure}],
                            failures=[failure])  # the generator's own failures follow
        finally:
            budget.stop()
        result.strategy = result.strategy or strategy_entry["name"]
        result.failures.extend(getattr(generator, "failures", []))
        return result

    def _check_before_loading(self, cfg: Config) -> None:
        """Build the strategy, and a scorer that needs no model, before any model loads, so a bad
        parameter fails fast (the scorer is kept)."""
        entry = cfg.strategy or {"name": "generate"}
        build(self.registry.get("strategies", entry["name"]), params(entry), prefix="[strategy]: ")
        if cfg.scorer and not self.registry.get("scorers", cfg.scorer["name"]).schema.context:
            self._scorer(cfg, host=None)  # needs no host

    def _scorer(self, cfg: Config, host: Any):
        """The configured scorer, built once per distinct configuration and shared by prompts
        (``host`` supplies the model or tokenizer it asks for)."""
        if not cfg.scorer:
            return None
        import json

        key = json.dumps(cfg.scorer, sort_keys=True, default=repr)
        with self._lock:
            if key not in self._scorers:
                info = self.registry.get("scorers", cfg.scorer["name"])
                context = host.context() if info.schema.context and host is not None else None
                self._scorers[key] = build(info, params(cfg.scorer), context=context, prefix="[scorer]: ")
            return self._scorers[key]

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for running prompts, then close the host (a remote host's clients and loop)."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._close_host()

    def _close_host(self) -> None:
        if hasattr(self.host, "close"):
            self.host.close()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run(config: Any, prompt_or_prompts: str | Sequence[str], *, model=None, tokenizer=None,
        on_result: Callable[[Result], None] | None = None, concurrency: int | None = None, registry=None,
        total_tokens: int | None = None, total_flops: float | None = None):
    """Run the configured strategy (default ``generate``) on one prompt or a list of prompts.

    Returns a Result for a str, a list of them (in input order) for a list. ``concurrency`` is
    how many prompts run at once (default: ``[run] concurrency``, else the host's default).
    A single prompt's failure raises; in a list it fails alone (see ``Result.failures``).

    ``total_tokens`` (or ``total_flops``): one budget for all the prompts, spent where another
    sample is most likely to change an answer (:meth:`Runner.allocate`; a pooled strategy).
    """
    if isinstance(prompt_or_prompts, (bytes, bytearray)):
        raise ConfigError("the prompt is bytes, not str: decode it first (e.g. data.decode('utf-8'))")
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    if not prompts:
        raise ConfigError("no prompts given")
    for index, prompt in enumerate(prompts):
        check_prompt(index, prompt)
    if registry is None:
        registry = get_registry()
    cfg = config if isinstance(config, Config) else validate(config, registry)
    with Runner(cfg, model=model, tokenizer=tokenizer, concurrency=concurrency, registry=registry) as runner:
        if total_tokens is not None or total_flops is not None:
            results = runner.allocate(prompts, total_tokens=total_tokens, total_flops=total_flops,
                                      on_result=on_result)
            return results[0] if single else results
        if single:
            return runner.submit(prompts[0], raise_errors=True).result()
        return runner.map(prompts, on_result=on_result)


def _concurrency(requested: int | None, cfg: Config, host: Any = None, declared: int | None = None) -> int:
    """Prompts in flight: the caller's, else ``[run] concurrency``, else the host object's
    ``default_concurrency``, else its declared ``Capabilities.concurrency``, else 64."""
    value = requested if requested is not None else cfg.run.get("concurrency")
    if value is None:
        return getattr(host, "default_concurrency", None) or declared or DEFAULT_CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"concurrency must be an int >= 1 (1 runs prompts one at a time), got {value!r}")
    return value


def check_prompt(index: int, prompt: Any) -> None:
    """A prompt is text that encodes as UTF-8 (no lone surrogates from undecodable bytes)."""
    if not isinstance(prompt, str):
        hint = " (decode bytes first, e.g. data.decode('utf-8'))" if isinstance(prompt, (bytes, bytearray)) else ""
        raise ConfigError(f"prompt {index} is {type(prompt).__name__}, not str{hint}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"prompt {index} is not valid Unicode text: {prompt[exc.start]!r} at character "
                          f"{exc.start} is a lone surrogate (bytes that were not UTF-8?); decode the "
                          f"input as UTF-8 with errors='replace', or fix its encoding") from None


def failed(result: Result) -> bool:
    """Whether a prompt's run failed as a whole (``run`` kept going with the other prompts)."""
    return any(f.get("kind") in ("component", "host") for f in result.failures) and result.best is None


# Where hosts' code lives in metagen-plugins: the built-in hosts, the host kit and the engines.
HOST_CODE = tuple(f"{__package__}.{room}" for room in ("hosts", "hostkit", "engines"))


def describe_failure(exc: BaseException, cfg: Config, host: Any = None) -> dict[str, Any]:
    """A ``Result.failures`` entry for an exception that ended a prompt's run: which component
    (and plugin, distribution) raised it, or the host (an exception raised in host code: the
    built-in hosts', the host kit's, or the package of ``host``, the host object); what and where."""
    import traceback
    from pathlib import Path

    frames = list(traceback.walk_tb(exc.__traceback__))
    where = ""
    if frames:
        code = frames[-1][0].f_code
        where = f"{Path(code.co_filename).name}:{frames[-1][1]}"
    error = f"{type(exc).__name__}: {exc}"
    info = getattr(exc, "component", None)
    code = HOST_CODE
    if host is not None:
        module = type(host).__module__
        code += (module.rpartition(".")[0] or module,)
    raised_in = frames[-1][0].f_globals.get("__name__", "") if frames else ""
    raised_in_host = any(raised_in == c or raised_in.startswith(c + ".") for c in code)
    if info is None and frames:
        info = component_of(frames[-1][0])  # a component living beside its host (one plugin module)
    if info is None and not raised_in_host:
        for frame, _ in reversed(frames):  # the innermost frame running a component's code
            info = component_of(frame)
            if info is not None:
                break
    if info is None:
        return {"kind": "host", "component": f"{cfg.host_name} host", "error": error, "where": where,
                "message": f"the {cfg.host_name} host failed: {error}" + (f" (at {where})" if where else "")}
    return {"kind": "component", "component": info.label(), "component_kind": info.kind, "name": info.name,
            "plugin": info.plugin, "distribution": info.distribution, "version": info.version,
            "error": error, "where": where,
            "message": f"{info.label()} raised {error}" + (f" at {where}" if where else "")}
