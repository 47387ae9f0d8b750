"""Load-test the socket API: N keep-alive clients hammering ``GET /v1/token``.

    PYTHONPATH=src python bench/socket_bench.py [--clients 32] [--seconds 5 | --requests N]
                                                [--in-process | --daemon] [--pipeline 1]

``--daemon`` loads the real ``devicelink run`` process, paired against the
development server, instead of the socket layer alone.

By default the server runs in a child process (this script with ``--serve``),
so clients and server each get their own interpreter and, on a 2-core board,
their own core, as real apps and the daemon would. ``--in-process`` runs both
on one event loop instead: a pessimistic number, since the clients' work then
counts against the server.

The clients are raw asyncio Unix-socket streams, not httpx, which would be the
bottleneck. By default each one sends a request, reads the whole answer, and
sends the next one (closed loop: the server is saturated, and latency is
roughly clients / throughput); latency is measured from write to last byte.
``--rate R`` sends R requests/s per client on a schedule instead (open loop),
the load real apps put on the daemon. The agent answers a fixed token dict,
so this measures the socket layer: h11, routing, JSON, reads and writes.

Output: requests/s, p50/p90/p99/p99.9/max latency, the server's RSS and peak
RSS, and the CPU time the server process and the clients used (as a share of
one core). Other load on the machine shows up directly in these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from devicelink.ipc.routes import Peer, TokenQuery  # noqa: E402
from devicelink.ipc.server import SocketServer  # noqa: E402

REQUEST = b"GET /v1/token HTTP/1.1\r\nHost: devicelink\r\n\r\n"
TOKEN = {
    "access_token": "eyJhbGciOiJFUzI1NiJ9." + "x" * 600 + ".sig",
    "token_type": "Bearer",
    "expires_in": 3599,
    "scope": "openid media.read",
}


class FixedAgent:
    """Answers the same token to everyone. Benchmark only."""

    async def token(self, query: TokenQuery, peer: Peer) -> dict:
        return TOKEN

    def status(self) -> dict:
        return {"state": "paired"}

    async def pair(self, peer: Peer) -> dict:
        return {"state": "pairing"}

    async def unpair(self, peer: Peer) -> dict:
        return {"state": "unpaired"}

    def healthy(self) -> bool:
        return True


# -- server side -----------------------------------------------------------


async def serve(path: str) -> None:
    """Run the server until stdin closes; print "ready" once listening."""
    async with SocketServer(FixedAgent(), path):
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


# -- client side -----------------------------------------------------------


async def client(
    path: str, state: dict, latencies: list[int], pipeline: int, rate: float = 0.0
) -> None:
    """One keep-alive connection. ``rate`` > 0: send on a schedule (open loop)."""
    reader, writer = await asyncio.open_unix_connection(path)
    batch = REQUEST * pipeline
    perf = time.perf_counter_ns
    interval = int(1e9 / rate) if rate else 0
    next_send = perf() + int(random.random() * interval)
    try:
        while not state["stop"]:
            if interval:
                # asyncio.sleep wakes up to a millisecond late, so latency is
                # measured from the write, not from when the request was due.
                delay = next_send - perf()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                next_send = max(next_send + interval, perf())
            t0 = perf()
            writer.write(batch)
            for _ in range(pipeline):
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:40]!r}")
                start = head.find(b"content-length: ") + 16
                length = int(head[start : head.index(b"\r\n", start)])
                await reader.readexactly(length)
            t1 = perf()
            if state["recording"]:
                latencies.append(t1 - t0)
                state["done"] += pipeline
                if state["limit"] and state["done"] >= state["limit"]:
                    state["stop"] = True
    finally:
        writer.close()


def start_paired_daemon(tmp: str):
    """The real daemon (``--daemon``), paired against the development server, serving
    its real token from memory: what apps on a device actually talk to."""
    from pathlib import Path

    import rss_startup  # bench/, beside this script
    from devicelink_sim.authserver import DevServer

    srv = DevServer(interval=1).start()
    python = [str(rss_startup.VENV_PYTHON if rss_startup.VENV_PYTHON.exists() else sys.executable)]
    src = rss_startup.ROOT / "src"
    config = rss_startup.write_config(Path(tmp), srv.issuer, srv.client_id)
    rss_startup.pair(python, config, src, srv)
    daemon = rss_startup.Daemon(python, config, src)
    daemon.dev_server = srv
    daemon.spawn()
    status, sock = daemon.health()
    sock.close()
    if status != 200:
        raise SystemExit(f"the daemon is not healthy ({status})")
    return daemon, daemon.socket


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="dlb", dir="/tmp")
    path = os.path.join(tmp, "agent.sock")
    child = None
    server = None
    daemon = None
    if args.daemon:
        daemon, path = start_paired_daemon(tmp)
        server_pid = daemon.proc.pid
    elif args.in_process:
        server = SocketServer(FixedAgent(), path)
        await server.start()
        server_pid = os.getpid()
    else:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise SystemExit("the server did not start")
        server_pid = child.pid
    try:
        state = {"stop": False, "recording": False, "done": 0, "limit": args.requests}
        latencies: list[int] = []
        tasks = [
            asyncio.create_task(client(path, state, latencies, args.pipeline, args.rate))
            for _ in range(args.clients)
        ]
        await asyncio.sleep(args.warmup)
        cpu0 = cpu_seconds(server_pid)
        own0 = time.process_time()
        t0 = time.perf_counter()
        state["recording"] = True
        if args.requests:
            while not state["stop"] and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(args.seconds)
        state["stop"] = True
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server_pid) - cpu0
        own = time.process_time() - own0
        await asyncio.gather(*tasks)
        rss, hwm = rss_kib(server_pid)
    finally:
        if server is not None:
            await server.stop()
        if daemon is not None:
            daemon.stop()
            daemon.dev_server.stop()
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] / 1e6

    where = "same process" if args.in_process else "separate process"
    if args.daemon:
        where = "real daemon (paired, dev server), separate process"
    load = f"{args.rate:g} req/s each" if args.rate else "back to back"
    print(f"clients {args.clients} ({load}), pipeline {args.pipeline}, server in a {where}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"requests   {state['done']} in {elapsed:.2f}s = {state['done'] / elapsed:,.0f} req/s")
    print(f"latency ms p50 {pct(50):.3f}  p90 {pct(90):.3f}  p99 {pct(99):.3f}  "
          f"p99.9 {pct(99.9):.3f}  max {latencies[-1] / 1e6:.3f}")
    print(f"server     RSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB), "
          f"CPU {cpu:.2f}s = {100 * cpu / elapsed:.0f}% of one core")
    if not args.in_process:
        print(f"clients    CPU {own:.2f}s = {100 * own / elapsed:.0f}% of one core")
    if args.in_process:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"           (in-process: RSS includes the clients; ru_maxrss {peak / 1024:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seconds", type=float, default=5.0)
    group.add_argument("--requests", type=int, default=0, help="stop after this many")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--pipeline", type=int, default=1, help="requests per write")
    parser.add_argument(
        "--rate", type=float, default=0.0,
        help="requests/s per client, sent on a schedule (default: back to back)",
    )
    parser.add_argument("--in-process", action="store_true", help="server on the clients' loop")
    parser.add_argument("--daemon", action="store_true",
                        help="load the real daemon (paired against the dev server) instead of a fixed agent")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
