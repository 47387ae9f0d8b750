"""``devicelink-sim faults``: a running development server's fault switches, from a terminal.

    devicelink-sim faults --issuer URL on token:status [token:reset,probability=0.3 ...]
    devicelink-sim faults --issuer URL off token:status
    devicelink-sim faults --issuer URL show | clear | release | revoke-grants
    devicelink-sim faults kinds

The same switches as the virtual device's page (faults.py, ``Faults.switch``), over
the server's ``POST /sim/faults``: whatever one turns, the other shows. ``--issuer``
defaults to ``$DEVICELINK_SIM_ISSUER``; ``all`` as the endpoint means every one.
Only the standard library: no extra is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .faults import ENDPOINTS, SWITCH_DEFAULTS, SWITCH_KINDS, parse_switch

ISSUER_ENV = "DEVICELINK_SIM_ISSUER"
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
ACTIONS = ("show", "on", "off", "clear", "release", "revoke-grants", "kinds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devicelink-sim faults",
        description="Switch a running development server's faults on and off, live (the virtual device's page "
                    "shows the same switches). A switch makes every request to its endpoint get the fault until "
                    "it is switched off; of two on one endpoint, the first one on wins.",
        epilog="KIND: " + ", ".join(SWITCH_KINDS) + ". ENDPOINT: " + ", ".join(ENDPOINTS)
               + ", or all. FIELDS (docs/faults.md): status, error, retry_after, delay, hold, probability, "
               "times, after. Examples: on token:status  |  on token:rate_limit,retry_after=30  |  "
               "on all:reset,probability=0.3  |  off token:status")
    parser.add_argument("--issuer", default=os.environ.get(ISSUER_ENV),
                        help=f"the server's issuer URL (default: ${ISSUER_ENV})")
    parser.add_argument("action", nargs="?", default="show", choices=ACTIONS, help="what to do (default: show)")
    parser.add_argument("switches", nargs="*", metavar="ENDPOINT:KIND[,FIELD=VALUE...]",
                        help="for on and off: the switches to turn")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "kinds":
        for kind in SWITCH_KINDS:
            fields = ", ".join(f"{k}={v}" for k, v in SWITCH_DEFAULTS[kind].items())
            print(f"{kind:<11} {fields}")
        return 0
    if args.action in ("on", "off") and not args.switches:
        parser.error(f"{args.action}: name at least one ENDPOINT:KIND")
    if args.action not in ("on", "off") and args.switches:
        parser.error(f"{args.action} takes no switches")
    if not args.issuer:
        parser.error(f"--issuer: the server's URL (devicelink-sim device and server print it), or set ${ISSUER_ENV}")
    try:
        body = _body(args.action, args.switches)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        snapshot = _call(args.issuer.rstrip("/") + "/sim/faults", body)
    except _Refused as exc:
        print(f"devicelink-sim faults: the server refused it: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"devicelink-sim faults: cannot reach {args.issuer}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(describe(snapshot))
    return 0


def _body(action: str, specs: list[str]) -> dict[str, Any] | None:
    if action == "show":
        return None
    if action == "clear":
        return {"clear": True}
    if action == "release":
        return {"release": True}
    if action == "revoke-grants":
        return {"revoke_grants": True}
    switches = []
    for spec in specs:
        head, sep, rest = spec.partition(":")
        endpoints = ENDPOINTS if head == "all" else (head,)
        for endpoint in endpoints:
            one = f"{endpoint}{sep}{rest}"
            if action == "off":
                name, _, kind = one.partition(":")
                kind = kind.split(",")[0].strip()
                parse_switch(f"{name}:{kind}")  # the same checks as on
                switches.append({"endpoint": name, "kind": kind, "on": False})
            else:
                endpoint, kind, fields = parse_switch(one)
                switches.append({"endpoint": endpoint, "kind": kind, "on": True, **fields})
    return {"switch": switches}


class _Refused(Exception):
    pass


def _call(url: str, body: dict[str, Any] | None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(req, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("error_description") or f"HTTP {exc.code}"
        except ValueError:
            detail = f"HTTP {exc.code}"
        raise _Refused(detail) from None


def describe(snapshot: dict[str, Any]) -> str:
    """The switches that are on, the other rules, and the request counts, for a terminal."""
    lines = []
    switches = snapshot.get("switches", [])
    for s in switches:
        lines.append(f"on   {s['endpoint']}:{s['kind']}  {_fields(s['fault'])}".rstrip())
    others = [(endpoint, rule) for endpoint in ENDPOINTS for rule in snapshot.get(endpoint, [])
              if not any(s["endpoint"] == endpoint and s["fault"] == rule for s in switches)]
    for endpoint, rule in others:
        left = "until cleared" if rule["times"] is None else f"{rule['times'] - rule['used']} left"
        lines.append(f"rule {endpoint}:{rule['kind']}  " + " ".join(filter(None, [_fields(rule), f"({left})"])))
    if not lines:
        lines.append("no faults: the server is healthy")
    counts = snapshot.get("requests") or {}
    if counts:
        lines.append("requests so far: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


def _fields(fault: dict[str, Any]) -> str:
    """What tells this rule apart: the fields that matter for its kind."""
    shown: dict[str, Any] = {}
    if fault.get("kind") == "status":
        shown.update(status=fault.get("status"), error=fault.get("error"), retry_after=fault.get("retry_after"))
    elif fault.get("kind") == "malformed" and fault.get("status") != 200:
        shown["status"] = fault.get("status")
    elif fault.get("kind") == "timeout":
        shown["hold"] = fault.get("hold")
    shown.update(delay=fault.get("delay") or None, after=fault.get("after") or None,
                 probability=fault.get("probability") if fault.get("probability", 1.0) < 1.0 else None)
    return ", ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
