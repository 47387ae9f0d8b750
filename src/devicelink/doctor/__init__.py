"""``devicelink doctor``: look at everything the daemon needs and say what to fix.

For support people and fleet tooling: one line per finding,
``ok|warn|FAIL  <check>: <what> — <what to fix>``, or a JSON list with ``--json``.
It runs with or without the daemon and without root; what this user may not look
at is itself a finding (a warning: the daemon's user may well be allowed).

It only looks. In particular it never calls ``tokens.keys.load_key``: that takes
``state.lock`` for the life of the process (and ``file_key`` would even create a
key), so the key is judged by ``stat`` alone, and the daemon's own answer says
which source it uses. Nothing it prints holds a token or a secret: the status
object has none, and the client secret and the key are never read.

Exit code: 0 when nothing failed, else the contract's code for the first failed
check (78 config, 5 daemon not reachable, 6 authorization server not reachable),
else 1 (key, state directory, display, GPIO: what stops ``run`` with 1).

Here: the order of the checks and the exit code. ``findings.py``: what a finding is;
``local.py``: config, policy, key, state directory, clock; ``daemon.py``: the socket and
the daemon; ``server.py``: the authorization server, through the daemon's own flows;
``hardware.py``: display and GPIO.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from devicelink.doctor.daemon import check_daemon, check_socket
from devicelink.doctor.findings import EXIT_FOR_CHECK, FAIL, OK, WARN, Finding, exit_code
from devicelink.doctor.hardware import check_display, check_gpio
from devicelink.doctor.local import check_clock, check_config, check_key, check_policy, check_state_dir, daemon_uid
from devicelink.doctor.registration import check_registration
from devicelink.doctor.server import check_server, describe_network_failure

__all__ = ["EXIT_FOR_CHECK", "FAIL", "OK", "WARN", "Finding", "check_clock", "check_config", "check_daemon",
           "check_display", "check_gpio", "check_key", "check_policy", "check_registration", "check_server",
           "check_socket",
           "check_state_dir", "describe_network_failure", "exit_code", "main", "run"]


def main(config_path: Path, as_json: bool = False) -> int:
    """Run every check, print the findings, return the exit code."""
    findings = run(config_path)
    if as_json:
        print(json.dumps([f.as_json() for f in findings], indent=2))
    else:
        print("\n".join(f.line() for f in findings))
    return exit_code(findings)


def run(config_path: Path) -> list[Finding]:
    """All the findings, in the order they are printed. The daemon is asked first
    (its answer says which key source it really uses), but reported after the clock."""
    sock = _socket_path(config_path)
    socket_findings, sock_stat = _guarded("socket", check_socket, sock)
    daemon_findings, status = (_guarded("daemon", check_daemon, sock)
                               if sock_stat is not None else ([], None))
    # Files are judged as the daemon's user would judge them, not as doctor's (issue 10).
    uid = daemon_uid(sock_stat.st_uid if sock_stat is not None else None)
    config_findings, cfg = _guarded("config", check_config, config_path, uid)
    findings = list(config_findings)
    if cfg is not None:
        findings += _guarded("policy", check_policy, cfg, uid)[0]
        findings += _guarded("key", check_key, cfg, status)[0]
        findings += _guarded("state", check_state_dir, cfg.storage.state_dir, uid)[0]
        if cfg.registration is not None:
            findings += _guarded("registration", check_registration, cfg)[0]
    findings += _guarded("clock", check_clock)[0]
    findings += socket_findings + daemon_findings
    if cfg is not None:
        findings += _guarded("server", check_server, cfg)[0]
        findings += _guarded("display", check_display, cfg)[0]
        findings += _guarded("gpio", check_gpio, cfg)[0]
    return findings


def _socket_path(config_path: Path) -> str:
    """Where the daemon listens: the config's ``[socket] path`` (read without judging the
    file's owner, which needs the daemon's user, known from the socket), else the default."""
    from devicelink.config import parse, read_toml
    from devicelink.ipc.client import default_socket_path

    try:
        return str(parse(read_toml(config_path), config_path).socket.path)
    except Exception:  # noqa: BLE001 - the config check says what is wrong with it
        return default_socket_path()


def _guarded(check: str, fn: Callable[..., Any], *args: Any) -> tuple[list[Finding], Any]:
    """``fn``'s findings (and whatever else it returns); a bug in a check is a warning,
    never a traceback that hides the other checks."""
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - doctor must finish
        return [Finding(WARN, check, f"could not be checked ({type(exc).__name__}: {exc})",
                        "please report this as a devicelink bug")], None
    return result if isinstance(result, tuple) else (result, None)
