"""How a fleet's load on the authorization server grows with its size, and what the restart spread buys.

    .venv/bin/python bench/fleet_bench.py [--sizes 1000,5000,10000] [--lifetime 600] [--identity] [--dpop] [--json]

Runs ``devicelink-sim fleet`` (simulator/devicelink_sim/fleet.py: real device engines
against the development server, on virtual time) once per size, each in a fresh
process so that RSS and CPU are that run's own, and prints one row per size:
peak/mean after a fleet-wide power cut (every stored token expired, clocks
unsynchronised at boot), ``recovered_s``, the server's requests per device per hour
in steady state, and the simulator's RSS and CPU. Then the smallest size once
more with the restart spread off (``RESTART_SPREAD = 0``, what the daemon did
before it): the burst the spread removes, side by side in the same run.
``--identity`` (and ``--dpop``) runs units that register themselves and sign every
request with their own keys (``devicelink-sim fleet --identity``).

A benchmark, not a test: the numbers go in docs/fleet.md and the closing note.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import json, sys
from devicelink.engine import refresher
if {no_spread}:
    refresher.RESTART_SPREAD = 0.0
from devicelink_sim import fleet
sys.exit(fleet.main({argv!r}))
"""


def run(size: int, lifetime: int, no_spread: bool = False, extra: tuple[str, ...] = ()) -> dict:
    argv = ["--devices", str(size), "--lifetime", str(lifetime), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'simulator'}"}
    done = subprocess.run([sys.executable, "-c", RUN.format(no_spread=no_spread, argv=argv)],
                          capture_output=True, text=True, env=env, check=True)
    report = json.loads(done.stdout)
    report.pop("timeline")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--lifetime", type=int, default=600, help="access-token lifetime, virtual seconds")
    parser.add_argument("--identity", action="store_true", help="units with their own keys, registered (RFC 7591)")
    parser.add_argument("--dpop", action="store_true", help="DPoP-bound tokens (RFC 9449)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    extra = tuple(flag for flag, on in (("--identity", args.identity), ("--dpop", args.dpop)) if on)
    rows = [("spread", size, run(size, args.lifetime, extra=extra)) for size in sizes]
    rows.append(("no spread", sizes[0], run(sizes[0], args.lifetime, no_spread=True, extra=extra)))
    if args.json:
        print(json.dumps([{"restart": kind, **r} for kind, _, r in rows]))
        return 0
    print(f"access tokens of {args.lifetime} s; a power cut of two lifetimes; clocks unsynchronised at boot; "
          f"clients: {rows[0][2]['client']}")
    head = ("restart", "devices", "peak/s", "1 s peak", "mean/s", "peak/mean", "recovered s", "req/dev/h",
            "lost", "errors", "RSS MiB", "CPU s", "wall s")
    print("  ".join(f"{h:>11}" for h in head))
    for kind, size, r in rows:
        cells = (kind, size, r["peak_rps"], r["peak_1s_rps"], r["mean_rps"], r["peak_over_mean"], r["recovered_s"],
                 r["requests_per_device_hour"], r["grants_lost"], r["errors"], r["rss_mib"], r["cpu_s"], r["wall_s"])
        print("  ".join(f"{c!s:>11}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
