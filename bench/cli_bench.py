"""How fast ``devicelink token`` answers, against ``python -c pass`` and curl (issue 9).

    .venv/bin/python bench/cli_bench.py [--runs 30] [--python PATH] [--src DIR] [--no-bytecode] [--top 15]
                                        [--json]

A real daemon, paired against the development server
(``socket_bench.start_paired_daemon``), serves its token from memory. Then,
``--runs`` rounds, each running these once in turn, so that other load on the
machine falls on all of them alike:

- ``python -c pass``: the interpreter starting and stopping (site, the venv's
  ``.pth`` files), the floor under any Python command;
- ``devicelink token``: what a user runs, the ``devicelink`` console script
  beside the interpreter (``python -m devicelink`` if there is none), with
  ``$DEVICELINK_SOCKET`` naming the daemon's socket and ``$DEVICELINK_CONFIG`` a
  path with no file; a device whose config file does not set ``[socket] path``
  takes the same path through the code;
- ``devicelink --config FILE token``: the same with the daemon's config file,
  which sets ``[socket] path`` and so is read and validated (TOML);
- ``curl --unix-socket SOCKET http://devicelink/v1/token``: a client in C.

Each is a new process, timed from spawn to exit and its output checked. The
Python ones run under ``--python`` (default: the venv's; e.g. the interpreter the
venv was made from, to leave out the venv's ``.pth`` files, which import
pathlib and more into every process) with ``PYTHONPATH=<src>`` (``--src`` to time another copy, e.g.
an older checkout) and may write bytecode, and each command runs once untimed
first, so ``src/`` has its ``__pycache__`` as an installed package does
(``--no-bytecode`` and a copy of ``src/`` without one: a fresh checkout).

Prints min / median / max in ms, the ratio of the medians ``devicelink token``
/ ``python -c pass`` (issue 9's target: at most 4), and the modules
``python -X importtime`` finds slowest in ``devicelink token`` (the median of
5 runs; self time, and cumulative time with what it imported). A benchmark,
not a test: it judges nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rss_startup  # noqa: E402  (bench/, beside this script)
import socket_bench  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], expect: bytes | None) -> float:
    """Milliseconds from spawn to exit; its stdout must start with ``expect`` (None: be one
    line, an access token)."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - started
    ok = done.stdout.startswith(expect) if expect is not None else len(done.stdout.split()) == 1
    if done.returncode != 0 or not ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[:200]!r} {done.stderr[-500:]!r}")
    return elapsed * 1000


def importtime(python: str, cmd: list[str], env: dict[str, str], runs: int = 5) -> dict[str, tuple[float, float, int]]:
    """Per module that ``cmd`` (a console script or ``python -m ...``) imports: self ms,
    cumulative ms (with what it imported) and nesting depth, the medians over ``runs``."""
    args = cmd[1:] if cmd[0] == python else cmd
    seen: dict[str, list[tuple[int, int, int]]] = {}
    for _ in range(runs):
        done = subprocess.run([python, "-X", "importtime", *args], env=env, capture_output=True, text=True)
        for line in done.stderr.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                own, total, name = line.removeprefix("import time:").split("|", 2)
                depth = (len(name) - len(name.lstrip()) - 1) // 2
                seen.setdefault(name.strip(), []).append((int(own), int(total), depth))
    return {name: (statistics.median(v[0] for v in values) / 1000, statistics.median(v[1] for v in values) / 1000,
                   values[0][2]) for name, values in seen.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter of the timed commands (default: this one, the venv's); the daemon "
                         "always runs in the venv")
    ap.add_argument("--src", type=Path, default=rss_startup.ROOT / "src",
                    help="PYTHONPATH of the timed commands (default: this checkout's src)")
    ap.add_argument("--top", type=int, default=15, help="modules to list from -X importtime")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="PYTHONDONTWRITEBYTECODE=1: with a --src copy without __pycache__, a fresh checkout")
    ap.add_argument("--json", action="store_true", help="also print the raw times as JSON")
    args = ap.parse_args()
    curl = shutil.which("curl")
    python = args.python
    script = Path(python).parent / "devicelink"
    devicelink = [str(script)] if script.exists() else [python, "-m", "devicelink"]

    tmp = tempfile.mkdtemp(prefix="dlc", dir="/tmp")
    daemon = None
    try:
        daemon, sock = socket_bench.start_paired_daemon(tmp)
        env = rss_startup.daemon_env(args.src.resolve())
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(DEVICELINK_SOCKET=sock, DEVICELINK_CONFIG=os.path.join(tmp, "no-such-config.toml"))
        commands = {
            "python -c pass": ([python, "-c", "pass"], b""),
            "devicelink token": ([*devicelink, "token"], None),
            "devicelink --config FILE token": ([*devicelink, "--config", str(daemon.config), "token"], None),
        }
        if curl:
            commands["curl --unix-socket"] = ([curl, "-sf", "--unix-socket", sock, "http://devicelink/v1/token"],
                                              b'{"access_token"')
        for cmd, expect in commands.values():  # untimed: bytecode written, caches warm
            timed(cmd, env, expect)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, (cmd, expect) in commands.items():
                times[name].append(timed(cmd, env, expect))
        modules = importtime(python, commands["devicelink token"][0], env)
        floor_modules = importtime(python, commands["python -c pass"][0], env)
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.dev_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"interpreter: {python} (Python {sys.version.split()[0]}); devicelink from {args.src}"
          + (", no bytecode written" if args.no_bytecode else ""))
    print(f"devicelink token runs: {' '.join(commands['devicelink token'][0])}")
    print(f"\n{args.runs} runs each, alternating (ms, spawn to exit):")
    print(f"  {'':34} {'min':>7} {'median':>7} {'max':>7}")
    for name, values in times.items():
        print(f"  {name:34} {min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}")
    floor = statistics.median(times["python -c pass"])
    for name in ("devicelink token", "devicelink --config FILE token"):
        print(f"  {name} / python -c pass: {statistics.median(times[name]) / floor:.2f}x")

    own = {name: m for name, m in modules.items() if name not in floor_modules}
    print(f"\npython -X importtime of devicelink token (medians of 5 runs): {len(own)} modules beyond what "
          f"python -c pass imports, {sum(m[0] for m in own.values()):.1f} ms of import time "
          f"(python -c pass: {sum(m[0] for m in floor_modules.values()):.1f} ms). What devicelink imports, "
          f"in order (cumulative ms):")
    print("  " + ", ".join(f"{name} {m[1]:.1f}" for name, m in own.items() if m[2] == 0))
    print(f"  the slowest {args.top} by self time:")
    print(f"  {'self ms':>8} {'cum. ms':>8}  module")
    for name, (self_ms, total, depth) in sorted(own.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"  {self_ms:8.2f} {total:8.2f}  {'  ' * depth}{name}")
    if args.json:
        print(json.dumps({"times_ms": times, "importtime": modules, "importtime_python_c_pass": floor_modules}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
