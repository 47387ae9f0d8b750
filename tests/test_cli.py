"""The command line's own logic (src/devicelink/cli.py): the quick reading of
``devicelink token`` checked against argparse, and which socket a client command
asks. The commands against a real daemon are in test_daemon_e2e.py."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicelink import cli
from devicelink.errors import ConfigError

WORDS = ["token", "status", "--config", "--config=c.toml", "c.toml", "--scope", "--scope=openid profile",
         "--scope=-x", "openid", "--resource", "https://api.example.com", "--min-ttl", "--min-ttl=300", "300",
         "-5", "+5", "5_0", "\u0663", "", " ", "--min", "--sc", "-h", "--help", "--", "=", "--json", "token=1",
         "--version", "-x", "--device", "--device=1", "--dev", "run"]


def argparse_reads(argv: list[str]):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.build_parser().parse_args(argv)
        except SystemExit:
            return None


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_the_quick_reading_agrees_with_argparse(argv: list[str]) -> None:
    quick = cli._quick(argv)
    if quick is None:
        return  # argparse reads it
    args = argparse_reads(argv)
    assert args is not None, argv
    assert args.command == quick.command, argv
    if quick.command == "token":
        assert (args.scope, args.resource, args.min_ttl, args.device) == \
               (quick.scope, quick.resource, quick.min_ttl, quick.device), argv
    assert args.config == (None if quick.config is None else Path(quick.config)), argv


@pytest.mark.parametrize("argv", [
    ["token"], ["token", "--min-ttl", "300"], ["--config", "c.toml", "token", "--scope=openid profile"],
    ["--config=c.toml", "token", "--resource", "https://api.example.com", "--min-ttl=0", "--scope", "a"],
    ["token", "--scope", "a", "--scope", "b"], ["token", "--scope", ""], ["token", "--device"],
    ["token", "--device", "--scope", "telemetry.write", "--device"],
    ["run"], ["--config", "c.toml", "run"], ["run", "--config=c.toml"],
])
def test_plain_token_and_run_command_lines_are_read_quickly(argv: list[str]) -> None:
    assert cli._quick(argv) is not None


@pytest.mark.parametrize("argv", [
    [], ["status"], ["token", "--min", "5"], ["token", "-h"], ["token", "--min-ttl", "-5"], ["token", "x"],
    ["token", "--scope"], ["token", "--conf", "c.toml"], ["--conf", "c.toml", "token"], ["token", "--"],
    ["--device", "token"], ["token", "--device=yes"], ["token", "--dev"],
    ["run", "--device"], ["run", "--scope", "a"], ["run", "-h"], ["run", "token"], ["token", "run"],
])
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert cli._quick(argv) is None


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> Path:
    monkeypatch.setenv("DEVICELINK_CONFIG", str(short_tmp / "config.toml"))
    monkeypatch.setenv("DEVICELINK_SOCKET", str(short_tmp / "env.sock"))
    return short_tmp / "config.toml"


GOOD = '[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\n'


def socket_for(command: str, config: str | None = None) -> str | None:
    args = cli._quick(["token"]) if command == "token" else argparse_reads([command])
    args.config = config
    return cli._socket_path(args)


@pytest.mark.parametrize("command", ["token", "status"])
def test_without_a_config_file_the_environment_decides(env: Path, command: str) -> None:
    assert socket_for(command) is None  # the client then reads $DEVICELINK_SOCKET


@pytest.mark.parametrize("command", ["token", "status"])
def test_a_config_file_decides_over_the_environment(env: Path, command: str) -> None:
    env.write_text(GOOD)
    assert socket_for(command) == "/run/devicelink/agent.sock"
    env.write_text(GOOD + '[socket]\npath = "here.sock"\n')
    assert socket_for(command) == str(env.parent / "here.sock")
    env.write_text('"\\u0073ocket" = { path = "escaped.sock" }\n' + GOOD)
    assert socket_for(command) == str(env.parent / "escaped.sock")


def test_token_reads_no_more_of_the_file_than_the_socket_path(env: Path) -> None:
    env.write_text("this is not TOML\n")
    assert socket_for("token") == "/run/devicelink/agent.sock"
    with pytest.raises(ConfigError, match="not valid TOML"):
        socket_for("status")
    env.write_text("this is not TOML\n[socket]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        socket_for("token")


def test_an_explicit_config_is_always_read(env: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        socket_for("token", str(env.parent / "missing.toml"))
    env.write_text("not TOML either\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        socket_for("token", str(env))


def test_a_config_file_that_cannot_be_read_is_a_config_error(env: Path) -> None:
    env.mkdir()
    for command in ("token", "status"):
        with pytest.raises(ConfigError, match="is a directory"):
            socket_for(command)


# -- issue 10 ------------------------------------------------------------------------


@pytest.mark.parametrize("argv, config", [
    (["status", "--config", "after.toml"], "after.toml"),
    (["--config", "before.toml", "status", "--json"], "before.toml"),
    (["--config", "before.toml", "status", "--config=after.toml"], "after.toml"),
    (["doctor", "--config", "after.toml", "--json"], "after.toml"),
    (["pair", "--config", "after.toml"], "after.toml"),
    (["rekey", "--config", "after.toml", "--to", "file"], "after.toml"),
    (["status"], None),
])
def test_config_is_accepted_after_the_command_too(argv: list[str], config: str | None) -> None:
    """Item 15: ``devicelink status --config X``; one after the command wins over one before."""
    args = argparse_reads(argv)
    assert args is not None, argv
    assert args.config == (None if config is None else Path(config))


@pytest.mark.parametrize("argv, config", [
    (["token", "--config", "after.toml"], "after.toml"),
    (["--config", "before.toml", "token", "--min-ttl", "5", "--config=after.toml"], "after.toml"),
])
def test_token_with_config_after_it_stays_on_the_quick_path(argv: list[str], config: str) -> None:
    quick = cli._quick(argv)
    assert quick is not None and quick.config == config
    assert argparse_reads(argv).config == Path(config)


def _run_cli(*argv: str, stdout=None) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "devicelink", *argv], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=60)


def closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: what ``| head -1`` leaves behind."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["--version"], ["rekey", "--help"]])
def test_a_closed_stdout_is_a_silent_exit_0(argv: list[str]) -> None:
    """Item 14 (the commands that need no daemon; tests/e2e/test_daemon.py has status and token)."""
    pipe = closed_pipe()
    try:
        out = _run_cli(*argv, stdout=pipe)
    finally:
        os.close(pipe)
    assert (out.returncode, out.stderr) == (0, "")


@pytest.mark.parametrize("command", ["run", "status", "token", "pair", "unpair", "doctor", "rekey"])
def test_every_command_has_a_description_and_shows_its_defaults(command: str) -> None:
    """Item 18: ``devicelink COMMAND --help`` says what the command does, not only its usage."""
    import subprocess

    out = _run_cli(command, "--help", stdout=subprocess.PIPE)
    assert out.returncode == 0
    usage, _, rest = out.stdout.partition("\n\n")
    description = rest.partition("\n\n")[0]
    assert description and not description.startswith("options:"), out.stdout
    assert "--config PATH" in out.stdout and "(default: None)" not in out.stdout
    if command == "rekey":
        assert "(default: auto)" in " ".join(out.stdout.split())


def test_the_simulator_refuses_a_port_out_of_range_in_one_line() -> None:
    """Item 18: ``devicelink-sim server --port 9999999`` was a traceback."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "devicelink_sim", "server", "--port", "9999999"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--port: expected a port from 0 to 65535, got 9999999" in out.stderr
