"""``devicelink [--config PATH] COMMAND``: the daemon and the commands that talk to it.

Exit codes (docs/cli.md): 0 done; 2 usage; 3 not paired (or pairing in
progress); 4 refused by policy; 5 daemon not reachable; 6 the authorization
server failed or refused; 78 configuration error. Errors are one line on
stderr, never a traceback.

``devicelink token`` is what scripts run before each request, so it is kept
fast: its plain forms are read without argparse (:func:`_quick`, as ``run``'s are), it
sets up no logging, and it reads the config file only when that file may set
``[socket] path`` (:func:`_socket_path`). Everything else is imported where a
command needs it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from devicelink import paths
from devicelink.errors import ConfigError, DeviceLinkError, ProtocolViolation

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from devicelink import config

CLIENT_TIMEOUT = 45.0
EXIT_USAGE, EXIT_NOT_PAIRED, EXIT_FORBIDDEN, EXIT_UNREACHABLE, EXIT_UPSTREAM, EXIT_CONFIG = 2, 3, 4, 5, 6, 78

#: Socket API error codes -> exit codes.
EXIT_FOR_ERROR = {
    "not_paired": EXIT_NOT_PAIRED,
    "pairing_in_progress": EXIT_NOT_PAIRED,
    "reauth_required": EXIT_NOT_PAIRED,
    "forbidden": EXIT_FORBIDDEN,
    "upstream_unavailable": EXIT_UPSTREAM,
    "invalid_request": EXIT_USAGE,
    "server_busy": EXIT_UNREACHABLE,  # the daemon turned the connection away (too many open)
}


def build_parser() -> argparse.ArgumentParser:
    import argparse
    from pathlib import Path

    from devicelink import __version__

    class formatter(argparse.ArgumentDefaultsHelpFormatter):
        """Defaults shown, except the None and False of options that have none to show."""

        def _get_help_string(self, action: argparse.Action) -> str | None:
            if action.default is None or action.default is False:
                return action.help
            return super()._get_help_string(action)

    parser = argparse.ArgumentParser(prog="devicelink", formatter_class=formatter,
                                     description="Pair this device with OAuth 2.0 (RFC 8628) and serve its "
                                     "access tokens to local apps.")
    config_help = f"config file (default ${paths.CONFIG_ENV}, else {paths.CONFIG_PATH})"
    parser.add_argument("--config", metavar="PATH", type=Path, help=config_help)
    parser.add_argument("--version", action="version", version=f"devicelink {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        """A subcommand that also takes ``--config`` after its name (SUPPRESS: one given
        before the name is kept when none comes after it)."""
        cmd = sub.add_parser(name, help=summary, description=description, formatter_class=formatter)
        cmd.add_argument("--config", metavar="PATH", type=Path, default=argparse.SUPPRESS, help=config_help)
        return cmd

    command("run", "run the daemon in the foreground (what systemd starts)",
            "Run the daemon in the foreground, logging to stderr: pair when there is no grant, keep "
            "the grant fresh, serve tokens on the socket. This is what the systemd unit starts.")
    status = command("status", "show the daemon's state",
                     "Ask the daemon for its state: the pairing code, the account, when the access token "
                     "expires, the last error. Never prints a token.")
    status.add_argument("--json", action="store_true", help="print the status object as JSON")
    token = command("token", "print an access token",
                    "Print an access token and a newline to stdout, for scripts: "
                    "curl -H \"Authorization: Bearer $(devicelink token)\" ...")
    token.add_argument("--scope", help="space-separated scopes the token must carry (default: the grant's)")
    token.add_argument("--resource", help="the resource (RFC 8707) the token is for (default: none named)")
    token.add_argument("--min-ttl", type=int, metavar="SECONDS",
                       help="the token must stay valid this long (default: the daemon's, 60)")
    token.add_argument("--device", action="store_true",
                       help="the device's own token, with no user (client credentials; the app's policy must "
                       "allow it), also while not paired")
    command("pair", "show a new pairing code now",
            "Ask the daemon for a new pairing code and print it with the address to enter it at. "
            "The daemon asks the authorization server, which can take up to 30 s.")
    unpair = command("unpair", "revoke the grant at the server and forget it",
                     "Revoke the grant at the authorization server (RFC 7009) and forget the tokens on this "
                     "device; the daemon then waits for `devicelink pair`.")
    unpair.add_argument("--factory", action="store_true",
                        help="a factory reset, as the button's: also delete the device's registration at the "
                        "server and register afresh ([registration]), then show a code for the next owner")
    doctor = command("doctor", "check config, key, clock, socket, server, display and GPIO; say what to fix",
                     "Check the config, policy, key, state directory, clock, socket and daemon, "
                     "authorization server, display and GPIO; print ok, warn or FAIL for each, with what "
                     "to do. Needs no root and never prints a secret.")
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    rekey = command("rekey", "re-encrypt the state under a new key (daemon stopped)",
                    "Re-encrypt the state under a new key without losing the grant. Stop the daemon "
                    "first (docs/keys.md).")
    rekey.add_argument("--to", choices=("file", "credential"),
                       help="the key source to move to (set [storage] key to it first; default: keep the "
                       "current one)")
    rekey.add_argument("--credential", type=Path, metavar="PATH",
                       help="the sealed credential the unit loads (default /etc/credstore.encrypted/devicelink.key)")
    rekey.add_argument("--new-credential", type=Path, metavar="PATH",
                       help="a credential already sealed with the new key, instead of making one")
    rekey.add_argument("--seal", choices=("auto", "host", "tpm2", "host+tpm2"), default="auto",
                       help="what systemd-creds seals a new credential to")
    provision = command("provision", "make the device's identity key and register it; print both",
                        "Make the device's identity key (state_dir/identity.jwk) unless it exists, and print the "
                        "serial number and the public key as a JWKS, in JSON, for the authorization server's "
                        "client registration (private_key_jwt). With [registration] in the config, register the "
                        "device (RFC 7591) unless it is registered, and print its client_id. Never replaces a key "
                        "or a registration (docs/identity.md).")
    manage = provision.add_mutually_exclusive_group()
    manage.add_argument("--check", dest="action", action="store_const", const="check",
                        help="read the registration back from the server (RFC 7592) and check it holds this key")
    manage.add_argument("--update", dest="action", action="store_const", const="update",
                        help="send the registration's metadata as it is now: a new key, a new software statement")
    manage.add_argument("--delete", dest="action", action="store_const", const="delete",
                        help="delete the registration at the server (RFC 7592) and forget it here")
    from devicelink.factory.cli import add_factory_command

    add_factory_command(sub, formatter)
    return parser


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, one-line summary) of each command, in the order --help lists them;
    a command with commands of its own (``factory keygen``) is followed by them. What
    devicelink(8) (scripts/manpage) and the bash completion (scripts/completion) are made of."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found = []
            for name, sub in action.choices.items():
                found.append((prefix + name, sub, summaries.get(name, "")))
                found += commands(sub, prefix + name + " ")
            return found
    return []


def main(argv: list[str] | None = None) -> int:
    """Every command; a closed stdout (``devicelink status | head -1``) ends it silently
    with 0, as for any Unix filter."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        return _stdout_closed()
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _stdout_closed()
        raise exc
    return code


def _stdout_closed() -> int:
    """The reader went away: point stdout at /dev/null, so that the interpreter's own
    flush at exit finds nothing to complain about."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 0


def _main(argv: list[str]) -> int:
    args = _quick(argv)
    if args is None or args.command == "run":
        if args is None:
            args = build_parser().parse_args(argv)
        from devicelink import logs

        logs.setup()
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "rekey":
            return _rekey(args)
        if args.command == "provision":
            return _provision(args)
        if args.command == "factory":
            from devicelink.factory.cli import run as factory

            return factory(args)
        if args.command == "doctor":
            from devicelink import config, doctor

            return doctor.main(args.config or config.default_path(), as_json=args.json)
        return _ask_daemon(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:
        return 130


class _QuickArgs:
    """What argparse would make of a plain ``token`` or ``run`` command line."""

    def __init__(self, command: str, config: str | None, scope: str | None = None, resource: str | None = None,
                 min_ttl: int | None = None, device: bool = False) -> None:
        self.command, self.config, self.scope, self.resource, self.min_ttl = command, config, scope, resource, min_ttl
        self.device = device


_GLOBAL_OPTIONS = {"--config": "config"}
#: The commands read without argparse: their options and flags.
_QUICK_COMMANDS = {
    "token": ({"--scope": "scope", "--resource": "resource", "--min-ttl": "min_ttl", "--config": "config"},
              {"--device": "device"}),
    "run": (_GLOBAL_OPTIONS, {}),
}


def _quick(argv: list[str]) -> _QuickArgs | None:
    """``[--config PATH] token [--scope S] [--resource URI] [--min-ttl N] [--device] [--config PATH]``
    and ``[--config PATH] run [--config PATH]`` read without argparse (scripts run the first
    before each request; systemd starts the second, and building the whole parser costs it
    milliseconds of every start), when every word is in a form argparse reads the same way:
    the options' full names, each value after a space or ``=`` and not starting with ``-``, a
    decimal ``--min-ttl``, ``--device`` alone; a repeated option's last value wins, as in
    argparse. None for anything else (abbreviations, ``--help``, mistakes), which argparse
    then reads and judges."""
    values: dict[str, str] = {}
    command, options, flags = None, _GLOBAL_OPTIONS, {}
    words = iter(argv)
    for word in words:
        if command is None and word in _QUICK_COMMANDS:
            command = word
            options, flags = _QUICK_COMMANDS[word]
            continue
        if word in flags:
            values[flags[word]] = word
            continue
        name, equals, value = word.partition("=")
        if name not in options:
            return None
        if not equals:
            value = next(words, None)
            if value is None:
                return None
        if value.startswith("-"):
            return None
        values[options[name]] = value
    min_ttl = values.get("min_ttl")
    if command is None or min_ttl is not None and not (min_ttl.isascii() and min_ttl.isdigit()):
        return None
    return _QuickArgs(command, values.get("config"), values.get("scope"), values.get("resource"),
                      None if min_ttl is None else int(min_ttl), "device" in values)


def _load_config(args: argparse.Namespace) -> config.Config:
    from devicelink import config

    return config.load(args.config or config.default_path())


def _socket_path(args: argparse.Namespace | _QuickArgs) -> str | None:
    """The socket the client commands ask (docs/cli.md): the config file's ``[socket] path``
    (or its default) when there is a config file, else None: ``$DEVICELINK_SOCKET``, else
    the default. ``--config`` is always loaded, and so is the default file, except that
    ``token`` skips one that cannot set ``[socket] path``: it then needs nothing from it."""
    path = args.config
    if path is None:
        path = os.environ.get(paths.CONFIG_ENV) or paths.CONFIG_PATH
        if not _exists(path):
            return None  # clients may run without a config
        if args.command == "token" and not _may_set_socket(path):
            return paths.SOCKET_PATH
    from devicelink import config

    return str(config.load(path).socket.path)


def _exists(path: str) -> bool:
    """As ``Path.exists``, except that a file we may not look at counts as there (and
    config.load then says why it cannot be read)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _may_set_socket(path: str) -> bool:
    """Whether the TOML file at ``path`` could set ``[socket] path``. Every way TOML has of
    writing that key (a ``[socket]`` table, a dotted key, an inline table, quoted or not)
    spells out ``socket``, unless a quoted key escapes a letter, which takes a backslash."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return True  # config.load says what is wrong with it
    return b"socket" in data or b"\\" in data


def _run(args: argparse.Namespace) -> int:
    from devicelink import daemon

    cfg = _load_config(args)
    try:
        return daemon.run(cfg)
    except ConfigError:
        raise
    except (DeviceLinkError, OSError) as exc:
        import logging

        logging.getLogger("devicelink").error("cannot start: %s", exc)
        return 1


def _rekey(args: argparse.Namespace) -> int:
    from devicelink.rekey import rekey
    from devicelink.tokens import keys

    cfg = _load_config(args)
    try:
        done = rekey(cfg, args.to, credential=args.credential or keys.CREDSTORE_PATH,
                     new_credential=args.new_credential, seal_with=args.seal)
    except ConfigError:
        raise
    except (DeviceLinkError, OSError) as exc:
        return _fail(str(exc), 1)
    print(done)  # outside the try: a closed stdout is not a failed rekey
    return 0


def _provision(args: argparse.Namespace) -> int:
    import json

    from devicelink.identity.provision import provision

    from devicelink.errors import RegistrationFailed

    cfg = _load_config(args)
    try:
        done = provision(cfg, getattr(args, "action", None))
    except ConfigError:
        raise
    except RegistrationFailed as exc:
        return _fail(str(exc), EXIT_UPSTREAM)
    except (DeviceLinkError, OSError) as exc:
        return _fail(str(exc), EXIT_UPSTREAM if isinstance(exc, ProtocolViolation) else 1)
    print(json.dumps(done, indent=2))
    return 0


def _ask_daemon(args: argparse.Namespace | _QuickArgs) -> int:
    from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable

    socket_path = _socket_path(args)  # None: $DEVICELINK_SOCKET, else the default
    try:
        # Longer than the daemon's own budgets (a 30 s exchange deadline, 30 s waiting for a
        # code), so a slow server is reported as the server's fault, not a missing daemon.
        with Client(socket_path, timeout=CLIENT_TIMEOUT) as client:
            if args.command == "status":
                return _status(client.status(), args.json)
            if args.command == "token":
                answer = client.token(min_ttl=args.min_ttl, scope=args.scope, resource=args.resource,
                                      identity="device" if args.device else None)
                sys.stdout.write(answer["access_token"] + "\n")
                return 0
            if args.command == "pair":
                with _waiting("asked the daemon for a new code; waiting for the authorization server",
                              lambda: client.status().get("last_error")):
                    status = client.pair()
                return _paired(status)
            if args.command == "unpair":
                return _unpaired(client.factory_reset() if args.factory else client.unpair())
    except DaemonUnreachable as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)  # the client's message says what to check
    except DaemonError as exc:
        return _fail(exc.description or exc.code, EXIT_FOR_ERROR.get(exc.code, EXIT_UPSTREAM))
    raise AssertionError(args.command)


def _status(status: dict, as_json: bool) -> int:
    if as_json:
        import json

        print(json.dumps(status, indent=2))
        return 0
    lines = [f"state: {status['state']}"]
    if status.get("pairing"):
        lines.append(_code_line(status["pairing"]))
    if status.get("account"):
        account = status["account"]
        lines.append(f"account: {account.get('name') or account['sub']}")
    if status.get("access_token_expires_in") is not None:
        lines.append(f"access token expires in: {status['access_token_expires_in']} s")
    for key in ("last_refresh", "last_error", "message"):
        if status.get(key):
            lines.append(f"{key.replace('_', ' ')}: {status[key]}")
    lines += [f"warning: {warning}" for warning in status.get("warnings") or ()]
    print("\n".join(lines))
    return 0


def _code_line(pairing: dict) -> str:
    line = f"enter code {pairing['user_code']} at {pairing['verification_uri']}"
    if pairing.get("verification_uri_complete"):
        line += f"\n  or open {pairing['verification_uri_complete']}"
    minutes, seconds = divmod(int(pairing.get("expires_in") or 0), 60)
    return line + f"\n  (expires in {minutes}:{seconds:02d})"


#: Seconds between the "still waiting" lines of :func:`_waiting`.
PROGRESS_EVERY = 5.0


class _waiting:
    """Say at once on stderr what we are waiting for, then every :data:`PROGRESS_EVERY`
    seconds for how long and ``why()`` (the daemon's last error), until the block ends
    (``pair``: the daemon waits up to 30 s for the server's code, and silence looks like a
    hang)."""

    def __init__(self, what: str, why: Callable[[], str | None]) -> None:
        import threading

        self.what, self.why = what, why
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tell, daemon=True)

    def __enter__(self) -> _waiting:
        sys.stderr.write(f"devicelink: {self.what} (up to 30 s)...\n")
        sys.stderr.flush()
        self.thread.start()
        return self

    def _tell(self) -> None:
        import time

        started = time.monotonic()
        while not self.done.wait(PROGRESS_EVERY):
            try:
                why = self.why()
            except DeviceLinkError:
                why = None
            line = f"still waiting ({time.monotonic() - started:.0f} s)"
            sys.stderr.write(f"devicelink: {line}{f': {why}' if why else ''}\n")
            sys.stderr.flush()

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.thread.join()


def _paired(status: dict) -> int:
    if status.get("pairing"):
        print(_code_line(status["pairing"]))
        return 0
    reason = status.get("last_error") or "the authorization server has not answered"
    if status.get("state") != "pairing":  # it ended: the server refused, or the code was declined
        return _fail(f"pairing failed: {reason}", EXIT_UPSTREAM)
    return _fail(f"no code came within 30 s: {reason}; the daemon keeps trying "
                 "(`devicelink status` shows the code when it comes)", EXIT_UPSTREAM)


def _unpaired(answer: dict) -> int:
    """Exit 6 when the grant may still be valid at the server (RFC 7009 §2.2.1): owed and
    retried (``pending``), or refused for good (``refused``); the message says which."""
    revocation = answer.get("revocation") or ("revoked" if answer.get("revoked") else "none")
    if revocation == "revoked":
        print("unpaired; the grant was revoked at the server")
        return 0
    print("unpaired on this device")
    error = answer.get("revocation_error")
    if revocation in ("pending", "refused"):
        return _fail(error or "the revocation did not go through", EXIT_UPSTREAM)
    if error:  # unsupported: the server has no revocation endpoint
        sys.stderr.write(f"devicelink: {error}\n")
    return 0


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"devicelink: {message}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
