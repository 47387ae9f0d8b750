"""Measurements taken inside the Bookworm container, on the installed package.

    python3 deb_inside.py startup --runs 8          # as root: start -> ready, RSS
    python3 deb_inside.py load --requests 1000      # as an app's user: GET /v1/token on one connection
    python3 deb_inside.py latency --runs 30         # as an app's user: devicelink token, curl

bench/deb_test.py copies this file into the container and runs it there with
Debian's /usr/bin/python3: standard library only. Each command prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

SOCKET = "/run/devicelink/agent.sock"
TOKEN = b"GET /v1/token HTTP/1.1\r\nHost: devicelink\r\n\r\n"
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: devicelink\r\n\r\n"


def systemctl(*args: str) -> str:
    return subprocess.run(["systemctl", *args], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def main_pid() -> int:
    return int(systemctl("show", "--property=MainPID", "--value", "devicelink.service"))


def rss_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "RssAnon", "RssFile")}


def answer(conn: socket.socket, buffered: bytes) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 answer with a Content-Length body: (status, body, bytes left over)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        rest += chunk
    return status, rest[:length], rest[length:]


def first_health(deadline: float) -> float:
    """Monotonic time of the first 200 from /v1/health."""
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(SOCKET)
                conn.sendall(HEALTH)
                status, _, _ = answer(conn, b"")
                if status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.001)
    raise TimeoutError("no 200 from /v1/health")


def startup(runs: int) -> dict:
    """``systemctl start devicelink.service`` with the socket listening: how long until the
    start job returns (Type=notify: READY=1, sent once the socket is served) and until the
    first /v1/health answer; the daemon's RSS right after."""
    ready, health, rss = [], [], []
    for _ in range(runs):
        systemctl("stop", "devicelink.service")
        systemctl("reset-failed", "devicelink.service")  # not StartLimitBurst's 5 starts in 10 s
        started = time.monotonic()
        systemctl("start", "devicelink.service")
        ready.append((time.monotonic() - started) * 1000)
        health.append((first_health(time.monotonic() + 30) - started) * 1000)
        rss.append(rss_kib(main_pid()))
    return {"ready_ms": ready, "health_ms": health, "rss_kib": rss, "pid": main_pid()}


def load(requests: int) -> dict:
    """``requests`` GET /v1/token on one keep-alive connection, each answer read in full."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(SOCKET)
        left = b""
        for _ in range(requests):
            conn.sendall(TOKEN)
            status, body, left = answer(conn, left)
            if status != 200 or b"access_token" not in body:
                raise SystemExit(f"GET /v1/token: {status} {body[:200]!r}")
    return {"requests": requests, "seconds": time.monotonic() - started}


def latency(runs: int) -> dict:
    """Wall time of ``devicelink token`` and of the same request with curl, each a new process."""
    commands = {
        "devicelink token": ["devicelink", "token"],
        "curl": ["curl", "-sf", "--unix-socket", SOCKET, "http://devicelink/v1/token"],
        "python3 -c pass": [sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs + 1):  # the first round warms the page cache and is not counted
        for name, argv in commands.items():
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, timeout=60)
            took = (time.monotonic() - started) * 1000
            if done.returncode != 0:
                raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.decode()[:300]}")
            times[name].append(took)
    return {name: values[1:] for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("startup").add_argument("--runs", type=int, default=8)
    sub.add_parser("load").add_argument("--requests", type=int, default=1000)
    sub.add_parser("latency").add_argument("--runs", type=int, default=30)
    sub.add_parser("rss")
    args = parser.parse_args()
    if args.command == "startup":
        result = startup(args.runs)
    elif args.command == "load":
        result = load(args.requests)
    elif args.command == "latency":
        result = latency(args.runs)
    else:
        result = {"rss_kib": rss_kib(main_pid()), "pid": main_pid()}
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    os.umask(0o022)
    main()
