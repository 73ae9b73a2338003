"""The hook specification: four register-callback hooks, one per kind of component, a fifth,
:func:`register_hosts`, for the hosts components run on, and a sixth, :func:`register_commands`,
for a plugin's own ``metagen <command>`` (a serving engine's deployment tooling).

Each hook receives ``register(name, factory, **metadata)``. Calling it makes a component
*available* under ``name``; nothing is applied until a configuration names it. The factory is
called later with the configuration's parameters as keyword arguments (and with ``model``,
``tokenizer`` or ``generator`` when its signature asks for them). Its annotations are the
parameter schema: metagen checks names and types against them before any model loads.

Metadata, all optional:

``transformers=False``
    the factory cannot run in-process (it exists only as an engine request parameter).
``vllm=`` / ``tgi=`` (any installed host's realiser key)
    a callable taking the same parameters and returning the engine's request parameters
    (e.g. ``lambda top_p: {"top_p": top_p}``): how the component is realised on that host.
    ``host=False`` keeps a scorer or strategy off a host.
``stop_strings=``
    a callable taking the same parameters and returning the stop strings the component amounts to
    (``lambda stop: stop``): it then runs, with no realiser of its own, on every host declaring
    ``Capabilities(stop_strings=True)``, as the Generator's own ``stop``.
``sampling=True``
    a logits processor that only makes sense when sampling (a warper): a configuration that
    uses one turns sampling on.
``constraint=True``
    a logits processor that is a hard constraint (a grammar, banned tokens): metagen applies the
    constraints first, in their listed order, then the other processors, as transformers applies
    its processors before its warpers, so a truncation warper (top-k, min-p) can never leave
    only tokens a constraint then bans.
``caller=("n", "temperature")``
    the parameters a caller of ``metagen serve`` may set in a request (its ``metagen`` object):
    values that only shape sampling or selection within the operator's budget caps. Every other
    parameter is the operator's (set in the configuration file); a component that declares
    nothing is configured by the operator alone. Never declare a parameter that runs code, names a
    file, a model or a URL, changes a sandbox, or formats text with ``str.format`` (docs/security.md).
``runs_code=True``
    the component executes programs (as ``code_tests`` and ``program_aided`` do, in metagen's
    sandbox): ``metagen serve`` refuses to start a profile using it unless it runs with full
    isolation, or the operator opts out explicitly.
``reads_logprobs=False``
    a scorer or strategy that never reads the samples' per-token log-probabilities (a
    candidate's ``logprobs``, an in-flight sample's ``logprobs``): a remote host then asks its
    server for none when no component of the run reads them (they cost a vLLM server CPU time
    per token). ``True`` declares that it reads them; a callable taking the component's
    parameters returns either, for a component whose reading depends on them; it may also ask
    for ``registry``, whose ``reads_logprobs(kind, entry)`` answers for a nested component's
    table (as the built-in ``compose`` asks of its inner and outer strategies). A scorer or
    strategy that declares nothing is taken to read them, as every one did before this existed.
    Processors and stopping criteria declare nothing: they see logits, never samples. Top
    log-probabilities are asked for separately (``Watch(top_logprobs=k)``).
``doc``
    a description, when the factory's docstring is not the one to show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from . import hookspec

if TYPE_CHECKING:
    from .hosting import Capabilities


class Register(Protocol):
    """The ``register`` callback every hook receives."""

    def __call__(self, name: str, factory: Callable[..., Any], **metadata: Any) -> None: ...


@hookspec
def register_logits_processors(register: Register) -> None:
    """Register logits processors.

    The factory returns a callable ``(input_ids, scores) -> scores`` over a batch, like a
    transformers ``LogitsProcessor``. Processors apply in the order the configuration lists them.

    Example::

        @hookimpl
        def register_logits_processors(register):
            register("ban_token", BanToken)
    """


@hookspec
def register_stopping_criteria(register: Register) -> None:
    """Register stopping criteria.

    The factory returns a callable ``(input_ids, scores) -> BoolTensor[batch]`` like a
    transformers ``StoppingCriteria``: True for each row that is done. Other rows keep going.

    Example::

        @hookimpl
        def register_stopping_criteria(register):
            register("max_lines", MaxLines)
    """


@hookspec
def register_scorers(register: Register) -> None:
    """Register scorers: verifiers, reward models and utilities.

    The factory returns an object satisfying :class:`metagen_hooks.Scorer` (and optionally
    :class:`~metagen_hooks.StepScorer` for process rewards or
    :class:`~metagen_hooks.PairwiseUtility` for MBR).

    Example::

        @hookimpl
        def register_scorers(register):
            register("length", lambda: LengthScorer())
    """


@hookspec
def register_strategies(register: Register) -> None:
    """Register meta-generation strategies.

    The factory returns an object satisfying :class:`metagen_hooks.Strategy`: it runs one prompt
    against a :class:`~metagen_hooks.Generator` and returns a :class:`~metagen_hooks.Result`.

    Example::

        @hookimpl
        def register_strategies(register):
            register("first_of_n", FirstOfN)
    """


class RegisterHost(Protocol):
    """The ``register`` callback :func:`register_hosts` receives."""

    def __call__(self, name: str, factory: Callable[..., Any], *, settings: dict[str, Any],
                 realiser: str | None = None, fallback: tuple[str, ...] = (),
                 capabilities: "Capabilities | None" = None,
                 realisations: dict[str, dict[str, Callable[..., dict]]] | None = None,
                 in_process: bool = False, deploy: str | None = None, doc: str = "") -> None: ...


@hookspec
def register_hosts(register: RegisterHost) -> None:
    """Register hosts: where a configuration's components run and its strategy samples.

    ``register(name, factory, settings=..., ...)``:

    ``name``
        what ``[host] name`` selects.
    ``factory(config, registry, model=None, tokenizer=None)``
        returns the host object (:class:`metagen_hooks.Host`) for a validated configuration;
        called once per run, so import the engine's client inside it.
    ``settings``
        the ``[host]`` settings it accepts, name -> type (``str``, ``int``, ``float | None``,
        ``list[str]``, ``Literal[...]``): checked like component parameters before anything loads.
    ``realiser``
        the component metadata key this host reads (default: ``name``): a component registered
        with ``<realiser>=callable`` runs here as the request parameters that callable returns.
    ``fallback``
        realiser keys read, in order, for a component with none for ``realiser`` (the
        ``openai`` host of metagen-openai falls back to ``("vllm",)``: vLLM's completions API is
        OpenAI's plus extensions); ``<realiser>=False`` on a component keeps it off all the same.
    ``capabilities``
        what the host realises natively, a :class:`metagen_hooks.Capabilities`: ``in_process``
        (it calls component factories itself: a processor or stopping criterion runs there
        unless registered with ``<realiser>=False``), ``stop_strings`` (its Generator honours
        ``stop=``, so the components registered with ``stop_strings=`` run there),
        ``streaming``, ``conversations`` and its default ``concurrency``. metagen asks this
        declaration, never the host's name. Default: nothing native.
    ``realisations``
        how components registered by any plugin run on this host, by configuration section and
        component name: ``{"processors": {"top_k": lambda top_k, min_tokens_to_keep=1: {"top_k":
        top_k}}, "stopping": {...}}``, so an engine package holds its realisations of the built-in
        components (each a realiser under this host's ``realiser`` key). A component's own
        ``<realiser>=`` wins over the host's; ``<realiser>=False`` keeps it off.
    ``in_process=True``
        the same as ``capabilities=Capabilities(in_process=True)`` (kept for hosts written before
        capabilities existed).
    ``deploy``
        the module path of the host's deployment tooling, if any: it defines
        ``add_arguments(parser)`` and ``main(args, registry) -> int``, and the command line offers it
        as ``metagen <name> ...``. Kept for plugins written before :func:`register_commands`,
        which a new plugin uses instead.

    Scorers and strategies run client-side, so they run on every host. Writing a host:
    docs/host-tutorial.md; the kit it builds on: docs/host-kit.md.

    Example::

        @hookimpl
        def register_hosts(register):
            register("echo", EchoHost, settings={"url": str, "timeout": float},
                     capabilities=Capabilities(stop_strings=True))
    """


class RegisterCommand(Protocol):
    """The ``register`` callback :func:`register_commands` receives."""

    def __call__(self, name: str, add_arguments: Callable[[Any], None], main: Callable[[Any, Any], int], *,
                 help: str = "") -> None: ...


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Register commands: ``metagen <name> ...`` on the command line, as a serving engine's
    deployment tooling (``metagen vllm serve-args``, ``metagen tgi launcher-args``).

    ``register(name, add_arguments, main, help="")``:

    ``name``
        the subcommand (an identifier-like word; not one of metagen's own commands).
    ``add_arguments(parser)``
        adds the command's arguments (and subcommands) to its ``argparse`` parser.
    ``main(args, registry) -> int``
        runs it with the parsed arguments and the plugin registry the command line loaded (with
        ``--plugins-dir``'s plugins); returns the exit status. A ``metagen_hooks.errors`` error it
        raises is printed as ``error: ...`` (exit status 2).
    ``help``
        the line ``metagen --help`` shows (default: the first line of ``main``'s docstring).

    Commands are collected when the command line starts; importing them must be cheap.

    Example::

        @hookimpl
        def register_commands(register):
            register("echo", add_arguments, main, help="talk to the echo server")
    """
