"""A fixture plugin: a command of its own, ``metagen echo-tools ...`` (register_commands)."""

from metagen_hooks import ConfigError, hookimpl


def add_arguments(parser):
    parser.add_argument("words", nargs="+")
    parser.add_argument("--shout", action="store_true")


def main(args, registry):
    """Echo the words back (and the installed hosts)."""
    if args.words == ["fail"]:
        raise ConfigError("echo-tools: 'fail' is not a word to echo")
    text = " ".join(args.words)
    print(text.upper() if args.shout else text, "|", ", ".join(registry.hosts))
    return 0


@hookimpl
def register_commands(register):
    register("echo-tools", add_arguments, main)
