"""Echo deployments: the ``deploy=`` module of the fixture host plugin ``echo_host`` (what
``metagen echo ...`` runs; tests/cli/test_plugin_commands.py)."""


def add_arguments(parser):
    parser.add_argument("--shout", action="store_true")


def main(args, registry):
    print("ECHO" if args.shout else "echo", registry.host("echo").plugin)
    return 0
