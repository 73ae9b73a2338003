"""Plugins' commands on metagen's command line: a ``register_commands`` command, and a host
plugin's ``deploy=`` tooling, each offered as ``metagen <name> ...`` (run in this process
through ``cli.main``; the engines' own commands are tested in tests/engines/<engine>/)."""

from __future__ import annotations

from metagen_plugins.cli import main
from tests.plugins import plugins_dir, source


def test_a_host_plugins_deploy_tooling_becomes_a_subcommand(tmp_path, capsys, monkeypatch):
    """``deploy=`` names a module with add_arguments/main: the command line offers it as
    ``metagen <host> ...``; a module that fails to load is reported and leaves the rest working."""
    (tmp_path / "echo_host.py").write_text(source("echo_host").replace(
        'register("echo", EchoHost, settings={"reply": str, "times": int})',
        'register("echo", EchoHost, settings={"reply": str, "times": int}, deploy="echo_tools")\n'
        '    register("broken", EchoHost, settings={}, deploy="no_such_module_here")'))
    # deploy= is a module path, imported by name: here a module of the user's on sys.path
    monkeypatch.syspath_prepend(str(plugins_dir(tmp_path / "tools", "echo_tools")))
    assert main(["--plugins-dir", str(tmp_path), "echo", "--shout"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "ECHO echo_host"
    assert "deploy='no_such_module_here', which failed to load" in out.err


def test_a_plugins_command_becomes_a_subcommand(tmp_path, capsys):
    """register_commands: ``metagen <name> ...`` parses with the plugin's arguments and runs its
    main with the registry; its error is printed like metagen's own; a command taking one of
    metagen's names, or another plugin's, fails that plugin and leaves the rest working."""
    plugins_dir(tmp_path, "echo_command")
    (tmp_path / "takes_run.py").write_text(
        "from metagen_hooks import hookimpl\n\n@hookimpl\ndef register_commands(register):\n"
        "    register('run', lambda p: None, lambda a, r: 0)\n")
    (tmp_path / "twice.py").write_text(
        "from metagen_hooks import hookimpl\n\n@hookimpl\ndef register_commands(register):\n"
        "    register('echo-tools', lambda p: None, lambda a, r: 0)\n")
    assert main(["--plugins-dir", str(tmp_path), "echo-tools", "hi", "there", "--shout"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("HI THERE | tgi, transformers, vllm")  # (and any host installed besides)
    assert "plugin 'takes_run'" in out.err and "the command 'run', which is metagen's own" in out.err
    assert "command 'echo-tools' is registered by plugin 'echo_command' and plugin 'twice'" in out.err
    assert main(["--plugins-dir", str(tmp_path), "echo-tools", "fail"]) == 2
    assert "error: echo-tools: 'fail' is not a word to echo" in capsys.readouterr().err
