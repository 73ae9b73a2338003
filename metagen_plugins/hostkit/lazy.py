"""An engine's host and command registered without importing them.

Registering must be cheap: every run and every ``metagen`` command line registers every installed
plugin, while a host's module imports its engine's client and a command's module its tooling.
:func:`lazy_host` and :func:`lazy_command` stand for them in a registration and import them when
they are used: the host when a run creates it, the command when the command line builds it. So
an engine's registration is declarative::

    @hookimpl
    def register_hosts(register):
        register("echo", lazy_host("metagen_echo.host:EchoHost", install="metagen-echo[client]",
                                   doc="An echo server."),
                 settings=SETTINGS, capabilities=Capabilities(stop_strings=True))

    @hookimpl
    def register_commands(register):
        register("echo", *lazy_command("metagen_echo.deploy"), help="echo deployments: ...")
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from metagen_hooks import HostError, PluginError


def lazy_host(target: str, *, doc: str = "", install: str | None = None) -> Callable[..., Any]:
    """A host factory for ``register_hosts`` standing for ``target``, ``"module:attribute"`` (the
    host's class, or any factory taking ``(config, registry, model=None, tokenizer=None)``),
    imported when a run creates the host.

    When that import fails for want of a package (the engine's client is not installed), the run
    stops with a :class:`~metagen_hooks.HostError` naming the host, the missing module and, with
    ``install``, the fix (``pip install '<install>'``). ``doc`` is the host's description
    (``metagen plugins list``; default: the target's path)."""
    module, _, attribute = target.partition(":")
    if not module or not attribute.isidentifier():
        raise PluginError(f"lazy_host({target!r}): give the host's factory as 'module:attribute', "
                          f"e.g. lazy_host('metagen_echo.host:EchoHost')")

    def create(config, registry, model=None, tokenizer=None):
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            if getattr(exc, "name", None) == module:
                raise PluginError(f"lazy_host({target!r}): there is no module {module!r}") from None
            hint = f"; install what it needs with pip install '{install}'" if install else ""
            raise HostError(f"the {config.host_name} host cannot start: {exc}{hint}") from None
        try:
            factory = getattr(imported, attribute)
        except AttributeError:
            raise PluginError(f"lazy_host({target!r}): module {module!r} has no {attribute!r}") from None
        return factory(config, registry, model=model, tokenizer=tokenizer)

    create.__doc__ = doc or f"{module}.{attribute}, imported when a run creates the host."
    create.__qualname__ = create.__name__ = f"lazy_host({target!r})"
    return create


class Command(NamedTuple):
    """A command's two functions, as ``register_commands``' ``register`` takes them."""

    add_arguments: Callable[[Any], None]
    main: Callable[[Any, Any], int]


def lazy_command(module: str) -> Command:
    """``add_arguments(parser)`` and ``main(args, registry)`` for ``register_commands``, standing
    for the functions of those names in ``module`` (the command's tooling), imported when the
    command line builds the command. Give ``register`` its ``help=``: the module is not imported
    to read it."""
    if not all(part.isidentifier() for part in module.split(".")):
        raise PluginError(f"lazy_command({module!r}): give the module path of the command's tooling, "
                          f"e.g. lazy_command('metagen_echo.deploy')")

    def add_arguments(parser) -> None:
        importlib.import_module(module).add_arguments(parser)

    def main(args, registry) -> int:
        return importlib.import_module(module).main(args, registry)

    add_arguments.__qualname__ = add_arguments.__name__ = f"lazy_command({module!r}).add_arguments"
    main.__qualname__ = main.__name__ = f"lazy_command({module!r}).main"
    return Command(add_arguments, main)
