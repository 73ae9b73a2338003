"""A fixture plugin registering as metagen's engines do, with the host kit's ``lazy_host`` and
``lazy_command``: its host's module (``lazy_echo_host``) and its command's
(``lazy_echo_command``) are imported only when used. Besides, a host whose module needs a package
that is not installed, and two registrations naming what is not there."""

from metagen_hooks import hookimpl
from metagen_plugins.hostkit import lazy_command, lazy_host


@hookimpl
def register_hosts(register):
    register("lazy_echo", lazy_host("lazy_echo_host:EchoHost", doc="Echo, imported when a run creates it."),
             settings={"reply": str})
    register("lazy_unmet", lazy_host("lazy_unmet_host:Host", install="metagen-lazy-engine[client]"), settings={})
    register("lazy_nowhere", lazy_host("lazy_no_such_module:Host"), settings={})
    register("lazy_typo", lazy_host("lazy_echo_host:EchoHots"), settings={})


@hookimpl
def register_commands(register):
    register("lazy-echo", *lazy_command("lazy_echo_command"), help="echo the words back")
