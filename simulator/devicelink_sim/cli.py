"""``devicelink-sim COMMAND``: the simulator's command line.

    devicelink-sim demo [--human] [--approve-after SECONDS] [--keep]
    devicelink-sim server [--port N] [...]     # the dev authorization server alone

The simulator's web stack (Flask, Authlib) comes with the ``sim`` extra, so it
is imported only when a command needs it.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devicelink-sim",
        description="The devicelink simulator: a development authorization server and a demo of the "
                    "whole device flow on this machine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="pair the real daemon with the dev server, then get a token with curl and the CLI",
        description="Starts the development authorization server and `devicelink run` (its pairing "
                    "screen is drawn on this terminal), approves the code with a scripted phone, then "
                    "asks the daemon's socket for a token with curl and with `devicelink token`.")
    demo.add_argument("--human", action="store_true",
                      help="do not approve automatically: wait for you to approve in a browser")
    demo.add_argument("--approve-after", type=float, default=4.0, metavar="SECONDS",
                      help="how long the scripted phone waits before approving (default 4)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temp dir (config, logs, encrypted state) at the end")
    sub.add_parser(
        "server", add_help=False,
        help="run only the development authorization server (options: devicelink-sim server --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "server":
        try:
            from devicelink_sim import authserver
        except ImportError as exc:
            return _missing_extra(exc)
        return authserver.main(rest, prog="devicelink-sim server")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.approve_after < 0:
        parser.error("--approve-after: expected a number of seconds, 0 or more")
    try:
        from devicelink_sim import demo
    except ImportError as exc:
        return _missing_extra(exc)
    return demo.run(human=args.human, approve_after=args.approve_after, keep=args.keep)


def _missing_extra(exc: ImportError) -> int:
    sys.stderr.write(f"devicelink-sim: {exc.name or exc} is missing; install the simulator's "
                     "dependencies with: pip install 'devicelink[sim]'\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
