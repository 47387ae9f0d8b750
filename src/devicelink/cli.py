"""``devicelink [--config PATH] COMMAND``: the daemon and the commands that talk to it.

Exit codes (docs/cli.md): 0 done; 2 usage; 3 not paired (or pairing in
progress); 4 refused by policy; 5 daemon not reachable; 6 the authorization
server failed or refused; 78 configuration error. Errors are one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from devicelink import __version__, config
from devicelink.errors import ConfigError, DeviceLinkError

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
    parser = argparse.ArgumentParser(prog="devicelink", description="Pair this device with OAuth 2.0 "
                                     "(RFC 8628) and serve its access tokens to local apps.")
    parser.add_argument("--config", metavar="PATH", type=Path,
                        help=f"config file (default $DEVICELINK_CONFIG or {config.DEFAULT_PATH})")
    parser.add_argument("--version", action="version", version=f"devicelink {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    status = sub.add_parser("status", help="show the daemon's state")
    status.add_argument("--json", action="store_true", help="print the status object as JSON")
    token = sub.add_parser("token", help="print an access token")
    token.add_argument("--scope", help="space-separated scopes the token must carry")
    token.add_argument("--resource", help="the resource (RFC 8707) the token is for")
    token.add_argument("--min-ttl", type=int, metavar="SECONDS", help="the token must stay valid this long")
    sub.add_parser("pair", help="show a new pairing code now")
    sub.add_parser("unpair", help="revoke the grant at the server and forget it")
    doctor = sub.add_parser("doctor", help="check config, key, clock, socket, server, display and GPIO; "
                            "say what to fix")
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    rekey = sub.add_parser("rekey", help="re-encrypt the state under a new key (daemon stopped)")
    rekey.add_argument("--to", choices=("file", "credential"),
                       help="the key source to move to (set [storage] key to it first)")
    rekey.add_argument("--credential", type=Path, metavar="PATH",
                       help="the sealed credential the unit loads (default /etc/credstore.encrypted/devicelink.key)")
    rekey.add_argument("--new-credential", type=Path, metavar="PATH",
                       help="a credential already sealed with the new key, instead of making one")
    rekey.add_argument("--seal", choices=("auto", "host", "tpm2", "host+tpm2"), default="auto",
                       help="what systemd-creds seals a new credential to")
    return parser


def main(argv: list[str] | None = None) -> int:
    # httpx/__init__.py imports its own command-line client (click, rich, pygments) when
    # they are installed, as Debian's python3-httpx always does: ~7 MiB and ~80 ms in every
    # process. Marking it absent makes httpx fall back to its stub. Only the daemon and
    # the CLI do this; apps importing devicelink.ipc.client keep httpx as it is.
    sys.modules.setdefault("httpx._main", None)
    args = build_parser().parse_args(argv)
    from devicelink import logs

    logs.setup()
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "rekey":
            return _rekey(args)
        if args.command == "doctor":
            from devicelink import doctor

            return doctor.main(args.config or config.default_path(), as_json=args.json)
        return _ask_daemon(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:
        return 130


def _load_config(args: argparse.Namespace) -> config.Config | None:
    path = args.config or config.default_path()
    if args.config is None and args.command not in ("run", "rekey") and not path.exists():
        return None  # clients may run without a config: the default socket path applies
    return config.load(path)


def _run(args: argparse.Namespace) -> int:
    from devicelink import daemon

    cfg = _load_config(args)
    assert cfg is not None
    try:
        return daemon.run(cfg)
    except ConfigError:
        raise
    except (DeviceLinkError, OSError) as exc:
        logging.getLogger("devicelink").error("cannot start: %s", exc)
        return 1


def _rekey(args: argparse.Namespace) -> int:
    from devicelink.rekey import rekey
    from devicelink.tokens import keys

    cfg = _load_config(args)
    assert cfg is not None
    try:
        print(rekey(cfg, args.to, credential=args.credential or keys.CREDSTORE_PATH,
                    new_credential=args.new_credential, seal_with=args.seal))
    except ConfigError:
        raise
    except (DeviceLinkError, OSError) as exc:
        return _fail(str(exc), 1)
    return 0


def _ask_daemon(args: argparse.Namespace) -> int:
    from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable

    cfg = _load_config(args)
    socket_path = str(cfg.socket.path) if cfg else None  # None: $DEVICELINK_SOCKET, else the default
    try:
        # Longer than the daemon's own budgets (a 30 s exchange deadline, 30 s waiting for a
        # code), so a slow server is reported as the server's fault, not a missing daemon.
        with Client(socket_path, timeout=CLIENT_TIMEOUT) as client:
            if args.command == "status":
                return _status(client.status(), args.json)
            if args.command == "token":
                answer = client.token(min_ttl=args.min_ttl, scope=args.scope, resource=args.resource)
                sys.stdout.write(answer["access_token"] + "\n")
                return 0
            if args.command == "pair":
                return _paired(client.pair())
            if args.command == "unpair":
                return _unpaired(client.unpair())
    except DaemonUnreachable as exc:
        return _fail(f"{exc} (is `devicelink run` running?)", EXIT_UNREACHABLE)
    except DaemonError as exc:
        return _fail(exc.description or exc.code, EXIT_FOR_ERROR.get(exc.code, EXIT_UPSTREAM))
    raise AssertionError(args.command)


def _status(status: dict, as_json: bool) -> int:
    if as_json:
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
    print("\n".join(lines))
    return 0


def _code_line(pairing: dict) -> str:
    line = f"enter code {pairing['user_code']} at {pairing['verification_uri']}"
    if pairing.get("verification_uri_complete"):
        line += f"\n  or open {pairing['verification_uri_complete']}"
    minutes, seconds = divmod(int(pairing.get("expires_in") or 0), 60)
    return line + f"\n  (expires in {minutes}:{seconds:02d})"


def _paired(status: dict) -> int:
    if status.get("pairing"):
        print(_code_line(status["pairing"]))
        return 0
    reason = status.get("last_error") or "no code yet; the authorization server has not answered"
    return _fail(f"pairing started, but {reason}", EXIT_UPSTREAM)


def _unpaired(answer: dict) -> int:
    if answer.get("revoked"):
        print("unpaired; the grant was revoked at the server")
        return 0
    if answer.get("revocation_error"):
        print("unpaired on this device")
        return _fail(answer["revocation_error"], EXIT_UPSTREAM)
    print("unpaired on this device")
    return 0


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"devicelink: {message}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
