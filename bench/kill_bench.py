"""SIGKILL the real daemon N times during its refresh-and-persist cycles (issue 4, item 1).

    .venv/bin/python bench/kill_bench.py [--kills 1000] [--lanes 3] [--seed 4] [--quiet]
    .venv/bin/python bench/kill_bench.py --server oidc-provider [--dpop on|off|both] [--kills 600] ...

The harness of ``tests/e2e/test_kill.py``, for longer: each lane is one device (its own
development server with 2-second access tokens and rotating refresh tokens, its own
state directory and daemon), paired once; then the daemon is killed at a random
instant (about two in three right after it logs ``-> refreshing``, spread over the
time a refresh-and-save takes; the rest anywhere in the ~1 s cycle), restarted, and
checked: it restores the grant without pairing again, ``devicelink token`` exits 0,
the token works at ``/userinfo``, the refresh token on disk is the server's current
one (or the one just before it, when the kill fell between the server's rotation and
the save), and the server never saw reuse.

Prints kills, restarts, refreshes the servers answered, grace reuses (restarts that
presented the token rotated away just before the kill: the kill fell between the
server's rotation and the save), reuse detections (must be 0), generation fallbacks,
the kills by phase, and the time. Exits 1 when a check fails.

``--server oidc-provider`` (issue 11, Measure) runs ``tests/e2e/test_kill_dpop.py``'s lanes
instead: each device against its own npm oidc-provider, strict (a refresh token presented again
after it was rotated away revokes the grant; no grace) with its own rotation rule (it rotates the
refresh tokens of unbound public clients and keeps DPoP-bound ones), 2-second access tokens.
``--dpop on`` has every daemon use ``dpop = true``, ``off`` none, ``both`` (the default)
alternates lanes, so both kinds run side by side under the same load. Prints, for each kind,
the grants lost per 1,000 kills (a restart that could not get a token, or a grant the server
revoked), with the kills that had a refresh in flight, and the refresh tokens rotated. A lost
grant is counted and its lane pairs again. Exits 1 when a DPoP-bound grant is lost or the
harness fails. Needs node and ``npm ci --prefix tests/oidc_provider``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "src", ROOT / "simulator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.e2e.test_kill import LANES, SEED, run_kills  # noqa: E402
from tests.e2e.test_kill_dpop import DPOP, run_oidc_kills  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--lanes", type=int, default=LANES, help="devices killed side by side")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--server", choices=("dev", "oidc-provider"), default="dev",
                        help="the development server (grace rule), or the strict npm oidc-provider")
    parser.add_argument("--dpop", choices=("on", "off", "both"), default="both",
                        help="with --server oidc-provider: dpop = true on every lane, none, or alternating lanes")
    args = parser.parse_args(argv)

    # The harness reads each state file after a kill; the daemon's own fallback lines are
    # what the report counts, so the harness's copy of them is not printed.
    logging.getLogger("devicelink.tokens.store").setLevel(logging.ERROR)
    shown = [0.0]

    def progress(results) -> None:
        now = time.monotonic()
        if not args.quiet and now - shown[0] >= 5:
            shown[0] = now
            print(f"  {results.kills} kills ...", file=sys.stderr, flush=True)

    if args.server == "oidc-provider":
        dpop = {"on": True, "off": False, "both": None}[args.dpop]
        print(f"{args.kills} kills over {args.lanes} lanes against oidc-provider (DPoP {args.dpop}), "
              f"seed {args.seed}", flush=True)
        try:
            results = run_oidc_kills(args.kills, lanes=args.lanes, seed=args.seed, dpop=dpop, progress=progress)
        except AssertionError as exc:
            print(f"FAILED: {exc}", flush=True)
            return 1
        print(results.report())
        if results.modes[DPOP]["lost"] or results.kills != args.kills:
            print("FAILED: a DPoP-bound grant was lost or kills are missing")
            return 1
        return 0

    print(f"{args.kills} kills over {args.lanes} lanes, seed {args.seed}", flush=True)
    try:
        results = run_kills(args.kills, lanes=args.lanes, seed=args.seed, progress=progress)
    except AssertionError as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    print(results.report())
    if results.reuse_detections or results.kills != args.kills:
        print("FAILED: reuse detected or kills missing")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
