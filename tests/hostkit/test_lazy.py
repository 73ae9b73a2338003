"""``hostkit.lazy_host`` and ``lazy_command``: a host and a command registered without importing
their modules, imported when a run creates the host or the command line builds the command; an
engine whose client is missing fails the run with the fix, a wrong target with what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

import metagen_plugins
from metagen_plugins.errors import HostError, PluginError
from metagen_plugins.hostkit import Command, lazy_command, lazy_host
from tests.plugins import plugins_dir

TARGETS = ("lazy_echo_host", "lazy_echo_command", "lazy_unmet_host")


@pytest.fixture
def lazy(tmp_path, monkeypatch, registry):
    """The registry with the ``lazy_engine`` fixture plugin; its targets importable (echo_host's
    and echo_command's code under new names), none imported yet."""
    site = plugins_dir(tmp_path / "site", echo_host="lazy_echo_host", echo_command="lazy_echo_command")
    (site / "lazy_unmet_host.py").write_text("import metagen_no_such_client  # an engine's client, not installed\n")
    monkeypatch.syspath_prepend(str(site))
    for name in TARGETS:
        monkeypatch.delitem(sys.modules, name, raising=False)
    plugins = plugins_dir(tmp_path / "plugins", "lazy_engine")
    yield registry(plugins_dir=plugins), plugins
    for name in TARGETS:
        sys.modules.pop(name, None)


def test_the_host_is_imported_when_a_run_creates_it(lazy):
    reg, _ = lazy
    info = reg.host("lazy_echo")
    assert info.doc == "Echo, imported when a run creates it." and "lazy_echo_host" not in sys.modules
    result = metagen_plugins.run({"host": {"name": "lazy_echo", "reply": "hi"},
                                  "strategy": {"name": "self_consistency", "n": 2}}, "Q", registry=reg)
    assert [c.text for c in result.candidates] == ["hi", "hi"]
    assert type(reg.create_host(metagen_plugins.validate({"host": {"name": "lazy_echo"}}, reg))).__module__ \
        == "lazy_echo_host"


def test_a_missing_client_names_the_host_and_the_fix(lazy):
    reg, _ = lazy
    with pytest.raises(HostError, match=r"^the lazy_unmet host cannot start: No module named 'metagen_no_such_client'; "
                                        r"install what it needs with pip install 'metagen-lazy-engine\[client\]'$"):
        reg.create_host(metagen_plugins.validate({"host": {"name": "lazy_unmet"}}, reg))


@pytest.mark.parametrize("host, message", [
    ("lazy_nowhere", r"lazy_host\('lazy_no_such_module:Host'\): there is no module 'lazy_no_such_module'"),
    ("lazy_typo", r"lazy_host\('lazy_echo_host:EchoHots'\): module 'lazy_echo_host' has no 'EchoHots'"),
])
def test_a_wrong_target_is_the_plugins_error(lazy, host, message):
    reg, _ = lazy
    with pytest.raises(PluginError, match=message):
        reg.create_host(metagen_plugins.validate({"host": {"name": host}}, reg))


def test_the_command_is_imported_when_the_command_line_builds_it(lazy, capsys):
    from metagen_plugins.cli import main

    reg, plugins = lazy
    assert reg.commands["lazy-echo"].help == "echo the words back" and "lazy_echo_command" not in sys.modules
    assert main(["--plugins-dir", str(plugins), "lazy-echo", "hi", "--shout"]) == 0
    assert capsys.readouterr().out.startswith("HI | ")
    assert "lazy_echo_command" in sys.modules


@pytest.mark.parametrize("call, message", [
    (lambda: lazy_host("metagen_echo.host.EchoHost"), r"as 'module:attribute'"),
    (lambda: lazy_host(":EchoHost"), r"as 'module:attribute'"),
    (lambda: lazy_command("metagen_echo:deploy"), r"the module path of the command's tooling"),
])
def test_a_malformed_target_fails_at_registration(call, message):
    with pytest.raises(PluginError, match=message):
        call()


def test_lazy_command_is_the_pair_register_takes():
    command = lazy_command("metagen_echo.deploy")
    assert isinstance(command, Command) and command == (command.add_arguments, command.main)
    assert command.main.__name__ == "lazy_command('metagen_echo.deploy').main"


def test_registering_the_engines_imports_none_of_their_hosts_or_tooling():
    """Every run and every command line registers every engine: their host and deploy modules
    (and the clients those import) load only when used."""
    code = ("import sys, metagen_plugins\n"
            "registry = metagen_plugins.get_registry()\n"
            "assert {'transformers', 'vllm', 'tgi'} <= set(registry.hosts)\n"
            "assert {'vllm', 'tgi'} <= set(registry.commands)\n"
            "print(sorted(m for m in sys.modules\n"
            "             if m.endswith(('.host', '.deploy')) or m in ('httpx2', 'huggingface_hub')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
