"""``devicelink-sim COMMAND``: the simulator's command line.

    devicelink-sim demo [--human] [--approve-after SECONDS] [--keep] [--stay]
    devicelink-sim device [--port N] [--screen oled|oled32|hdmi] [...]  # the virtual device and its page
    devicelink-sim faults [--issuer URL] [on|off|clear|release|revoke-grants|show] ...  # a running server's faults
    devicelink-sim server [--port N] [...]     # the dev authorization server alone
    devicelink-sim fleet --devices N [--json]  # a fleet on virtual time (fleet.py)

``python -m devicelink_sim server`` is ``devicelink-sim server`` too. The
simulator's web stack (Flask, Authlib) comes with the ``sim`` extra, so it is
imported only when a command needs it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from devicelink_sim.faults import parse_spec
from devicelink_sim.settings import CONFIDENTIAL_CLIENT_ID, DEFAULT_RESOURCES, KEY_CLIENT_ID

EXIT_USAGE = 2


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except the None and False of options that have none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535: a usage error otherwise, never a traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {port}")
    return port


def _seconds(text: str) -> int:
    """A whole number of seconds, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devicelink-sim", formatter_class=_Help,
        description="The devicelink simulator: a development authorization server and a demo of the "
                    "whole device flow on this machine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", formatter_class=_Help,
        help="pair the real daemon (the virtual device) with the dev server, then get a token with curl and the CLI",
        description="Starts the development authorization server and the virtual device (`devicelink run` "
                    "with a png screen and mock LED and button), prints the address of its page, approves "
                    "the code with a scripted phone on the verification page, then asks the daemon's "
                    "socket for a token with curl and with `devicelink token`.")
    demo.add_argument("--human", action="store_true",
                      help="do not approve automatically: wait for you to approve on the device's page")
    demo.add_argument("--approve-after", type=float, default=4.0, metavar="SECONDS",
                      help="how long the scripted phone waits before approving")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temp dir (config, logs, screen frames, encrypted state) at the end")
    demo.add_argument("--stay", action="store_true",
                      help="after the token, keep the device and its page running until Ctrl-C")
    demo.add_argument("--port", type=_port, default=8628,
                      help="the device page's port on 127.0.0.1 (8628: another free one when it is taken; 0: any)")
    sub.add_parser(
        "device", add_help=False,
        help="the real daemon on a virtual board (png screen, mock LED and button) and a page to watch and "
             "click it (options: devicelink-sim device --help)",
        description="The virtual device; devicelink-sim device --help lists its options.")
    sub.add_parser(
        "faults", add_help=False,
        help="switch a running development server's faults on and off (devicelink-sim faults --help)",
        description="Fault switches from the command line; devicelink-sim faults --help lists them.")
    sub.add_parser(
        "server", add_help=False,
        help="run only the development authorization server (options: devicelink-sim server --help)",
        description="The development authorization server alone; devicelink-sim server --help lists its options.")
    sub.add_parser(
        "fleet", add_help=False,
        help="N device engines, a fleet-wide power cut, the server's load (options: devicelink-sim fleet --help)",
        description="Real device engines against the development server on virtual time; "
                    "devicelink-sim fleet --help lists its options.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "server":
        return serve(rest)
    if args.command == "device":
        try:
            from devicelink_sim.device import run
        except ImportError as exc:
            return _missing_extra(exc)
        return run.main(rest)
    if args.command == "faults":
        from devicelink_sim import faultcli

        return faultcli.main(rest)
    if args.command == "fleet":
        try:
            from devicelink_sim import fleet
        except ImportError as exc:
            return _missing_extra(exc)
        return fleet.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.approve_after < 0:
        parser.error("--approve-after: expected a number of seconds, 0 or more")
    try:
        from devicelink_sim import demo
    except ImportError as exc:
        return _missing_extra(exc)
    return demo.run(human=args.human, approve_after=args.approve_after, keep=args.keep, stay=args.stay,
                    port=args.port)


def serve(argv: list[str] | None = None, prog: str = "devicelink-sim server") -> int:
    """The development server alone, on 127.0.0.1 until SIGINT or SIGTERM; `--fault` as in docs/faults.md."""
    try:
        from devicelink_sim.authserver import DevServer
    except ImportError as exc:
        return _missing_extra(exc)
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=_Help,
        description="Development OAuth 2.0 device-flow authorization server on 127.0.0.1.",
    )
    parser.add_argument("--port", type=_port, default=0, help="the TCP port; 0 picks a free one")
    parser.add_argument("--access-token-lifetime", type=_seconds, default=3600, metavar="S",
                        help="seconds an access token lives")
    parser.add_argument("--refresh-token-lifetime", type=_seconds, default=None, metavar="S",
                        help="seconds a refresh token lives (default: for ever)")
    parser.add_argument("--device-code-lifetime", type=_seconds, default=600, metavar="S",
                        help="seconds a device code lives")
    parser.add_argument("--interval", type=_seconds, default=5, metavar="S",
                        help="the polling interval given to devices")
    parser.add_argument("--no-rotate-refresh-tokens", dest="rotate_refresh_tokens",
                        action="store_false", help="keep one refresh token for the grant's life")
    parser.add_argument("--resource", dest="resources", action="append", default=None, metavar="URI",
                        help="a resource (RFC 8707) tokens may be issued for; repeatable, replaces the "
                             f"default {' '.join(DEFAULT_RESOURCES)}")
    parser.add_argument("--no-step-up", dest="honour_step_up", action="store_false",
                        help="ignore acr_values and max_age (RFC 9470), as a server without step-up does")
    parser.add_argument("--no-dpop", dest="dpop", action="store_false",
                        help="ignore DPoP proofs (RFC 9449) and issue Bearer tokens, as a server without DPoP does")
    parser.add_argument("--dpop-nonce", action="store_true",
                        help="want the server's nonce in every DPoP proof (use_dpop_nonce otherwise, RFC 9449 §8)")
    parser.add_argument("--client-secret", default=None,
                        help=f"secret of {CONFIDENTIAL_CLIENT_ID} (default: random)")
    parser.add_argument("--client-jwks", type=_jwks, default=None, metavar="FILE",
                        help=f"register {KEY_CLIENT_ID}, a private_key_jwt client, with the public keys in FILE "
                             "(a JWKS or a JWK; the output of `devicelink provision` too)")
    parser.add_argument("--fleet-key", type=_fleet_keys, default=None, metavar="FILE",
                        help="serve dynamic registration (RFC 7591, RFC 7592 at /register): a device's software "
                             "statement must be signed by a key in FILE (a public JWK or JWKS; `devicelink factory "
                             "keygen` prints one)")
    parser.add_argument("--statement-issuer", default=None, metavar="ISS",
                        help="with --fleet-key: the iss a software statement must carry (default: any)")
    parser.add_argument("--registration", action="store_true",
                        help="serve dynamic registration without a fleet key: no software statement needed")
    parser.add_argument("--initial-access-token-file", type=_text_file, default=None, metavar="FILE",
                        help="registration needs this initial access token (RFC 7591 §3) as a bearer token")
    parser.add_argument("--fault", action="append", default=[], metavar="ENDPOINT:KIND[,FIELD=VALUE...]",
                        help="inject a fault (repeatable, applied in order), e.g. token:status,status=503,times=3 "
                             "or token:reset,probability=0.2,times=none; see docs/faults.md")
    parser.add_argument("--fault-seed", type=int, default=None, metavar="N",
                        help="seed of the RNG behind fault probabilities")
    args = parser.parse_args(argv)
    try:
        faults = [parse_spec(spec) for spec in args.fault]
    except ValueError as exc:
        parser.error(f"--fault: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger = logging.getLogger("devicelink_sim.authserver")

    # Block the signals in every thread and take them here, in sigwait.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = DevServer(
            port=args.port,
            access_token_lifetime=args.access_token_lifetime,
            refresh_token_lifetime=args.refresh_token_lifetime,
            device_code_lifetime=args.device_code_lifetime,
            interval=args.interval,
            rotate_refresh_tokens=args.rotate_refresh_tokens,
            resources=DEFAULT_RESOURCES if args.resources is None else tuple(args.resources),
            honour_step_up=args.honour_step_up,
            dpop=args.dpop,
            dpop_nonce=args.dpop_nonce,
            client_secret=args.client_secret,
            registration=args.registration,
            fleet_keys=args.fleet_key,
            statement_issuer=args.statement_issuer,
            initial_access_token=args.initial_access_token_file,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.client_jwks is not None:
        server.register_device_key(args.client_jwks)
    server.faults.seed(args.fault_seed)
    for endpoint, fault in faults:
        server.faults.endpoint(endpoint).add(fault)
    try:
        server.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n")
    try:
        print(f"issuer {server.issuer}", flush=True)
        logger.info(
            "clients: %s (public), %s (confidential)%s",
            server.client_id,
            server.confidential_client_id,
            f", {KEY_CLIENT_ID} (private_key_jwt)" if args.client_jwks is not None else "",
        )
        if server.settings.fleet is not None:
            logger.info("dynamic registration at %s/register%s", server.issuer,
                        " (software statements signed by the fleet key)" if args.fleet_key else "")
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    return 0


def _jwks(path: str) -> dict:
    data = _jwks_json(path)
    data = data.get("jwks", data) if isinstance(data, dict) else None  # `devicelink provision` wraps it
    if not isinstance(data, dict) or any("d" in k for k in data.get("keys", [data]) if isinstance(k, dict)):
        raise argparse.ArgumentTypeError(f"{path}: expected a JWKS or a public JWK")
    return data


def _fleet_keys(path: str) -> dict:
    """The public fleet keys in FILE: a JWKS or a JWK (private members dropped: the key file
    `devicelink factory keygen` wrote works too)."""
    data = _jwks_json(path)
    keys = data.get("keys", [data]) if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "kty" in k for k in keys):
        raise argparse.ArgumentTypeError(f"{path}: expected a JWK or a JWKS")
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    return {"keys": [{k: v for k, v in key.items() if k not in private} for key in keys]}


def _jwks_json(path: str):
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None


def _text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise argparse.ArgumentTypeError(f"{path} is empty")
    return text


def _missing_extra(exc: ImportError) -> int:
    sys.stderr.write(f"devicelink-sim: {exc.name or exc} is missing; install the simulator's "
                     "dependencies with: pip install 'devicelink[sim]'\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
