"""The command line's own logic (src/devicelink/cli.py): the quick reading of
``devicelink token`` checked against argparse, and which socket a client command
asks. The commands against a real daemon are in test_daemon_e2e.py."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicelink import cli
from devicelink.errors import ConfigError

WORDS = ["token", "status", "--config", "--config=c.toml", "c.toml", "--scope", "--scope=openid profile",
         "--scope=-x", "openid", "--resource", "https://api.example.com", "--min-ttl", "--min-ttl=300", "300",
         "-5", "+5", "5_0", "\u0663", "", " ", "--min", "--sc", "-h", "--help", "--", "=", "--json", "token=1",
         "--version", "-x"]


def argparse_reads(argv: list[str]):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.build_parser().parse_args(argv)
        except SystemExit:
            return None


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_the_quick_reading_agrees_with_argparse(argv: list[str]) -> None:
    quick = cli._quick_token(argv)
    if quick is None:
        return  # argparse reads it
    args = argparse_reads(argv)
    assert args is not None, argv
    assert (args.command, args.scope, args.resource, args.min_ttl) == \
           (quick.command, quick.scope, quick.resource, quick.min_ttl), argv
    assert args.config == (None if quick.config is None else Path(quick.config)), argv


@pytest.mark.parametrize("argv", [
    ["token"], ["token", "--min-ttl", "300"], ["--config", "c.toml", "token", "--scope=openid profile"],
    ["--config=c.toml", "token", "--resource", "https://api.example.com", "--min-ttl=0", "--scope", "a"],
    ["token", "--scope", "a", "--scope", "b"], ["token", "--scope", ""],
])
def test_plain_token_command_lines_are_read_quickly(argv: list[str]) -> None:
    assert cli._quick_token(argv) is not None


@pytest.mark.parametrize("argv", [
    [], ["status"], ["token", "--min", "5"], ["token", "-h"], ["token", "--min-ttl", "-5"], ["token", "x"],
    ["token", "--scope"], ["token", "--config", "c.toml"], ["--conf", "c.toml", "token"], ["token", "--"],
])
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert cli._quick_token(argv) is None


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> Path:
    monkeypatch.setenv("DEVICELINK_CONFIG", str(short_tmp / "config.toml"))
    monkeypatch.setenv("DEVICELINK_SOCKET", str(short_tmp / "env.sock"))
    return short_tmp / "config.toml"


GOOD = '[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\n'


def socket_for(command: str, config: str | None = None) -> str | None:
    args = cli._quick_token(["token"]) if command == "token" else argparse_reads([command])
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
