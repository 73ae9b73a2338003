"""Echo deployments: the ``deploy=`` module of the fixture host plugin ``echo_host`` (what
``metagen echo ...`` runs; tests/test_host_plugins.py)."""


def add_arguments(parser):
    parser.add_argument("--shout", action="store_true")


def main(args, registry):
    print("ECHO" if args.shout else "echo", registry.host("echo").plugin)
    return 0
