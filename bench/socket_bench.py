"""Load-test the socket API: N keep-alive clients hammering ``GET /v1/token``.

    PYTHONPATH=src python bench/socket_bench.py [--clients 32] [--seconds 5 | --requests N]
                                                [--in-process | --daemon] [--pipeline 1]
                                                [--answer now|later]
    .venv/bin/python bench/socket_bench.py --issue5 [--target daemon|fixed] [--rounds 3]
    .venv/bin/python bench/socket_bench.py --issue9 [--rounds 3] [--round-seconds 2]

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
the load real apps put on the daemon. The Api answers a fixed token, so this
measures the socket layer: h11, routing, reads and writes. ``--answer now``
(default) returns the Response from ``handle()``, as the daemon does for a
cached token; ``--answer later`` returns a coroutine, which costs a task.

Output: requests/s, p50/p90/p99/p99.9/max latency, the server's RSS and peak
RSS, and the CPU time the server process and the clients used (as a share of
one core). Other load on the machine shows up directly in these numbers.

``--issue5`` runs the measurements issue 5 asks for, each with 64 keep-alive
clients (as root; the real daemon always lets uid 0 in), printing numbers,
never judging them:

(a) the daemon against a *ceiling*: a minimal asyncio Unix-socket server that
    answers every request with one fixed HTTP response (the daemon's own token
    answer, byte for byte). The two are measured alternately, ``--rounds``
    times each, first closed loop (throughput; latency there is just
    64 / throughput, Little's law), then open loop at a fixed offered load
    (``--offered`` req/s spread over the 64 connections: the latency an app
    sees when the daemon is not saturated). Prints the ratio daemon/ceiling.
(b) the same (daemon only) while an abusive client, a child process under
    another uid (65534, via setuid in the forked child; needs root), tries to
    hold ``--abuse-connections`` idle connections and keeps sending garbage,
    reconnecting as fast as it can whenever the daemon refuses or closes one.
(c) the daemon's RSS (VmRSS) before and after ``--rss-requests`` token requests.

``--target fixed`` runs the suite against the socket layer with the fixed Api
instead of the real daemon (when the daemon can't be run).

``--issue9`` measures the socket layer (the fixed Api, the daemon's default
caps: 512 in total, 64 per uid; ``--target daemon``: the real daemon) against
the same minimal asyncio server, alternating, ``--rounds`` times each:

(a) one request per connection, what ``curl`` and the CLI do: connect, send
    ``GET /v1/token``, read the whole answer, close, and again; at 1, 8 and
    64 clients. Latency is from connect to the last byte.
(b) 64 keep-alive clients, closed loop, as in ``--issue5``.
(c) the ``503 server_busy`` answers the socket layer gave in (a) and (b): each
    client has at most one connection open, so all are below the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from devicelink.ipc import routes  # noqa: E402
from devicelink.ipc.routes import Request, Response  # noqa: E402
from devicelink.ipc.server import SocketServer  # noqa: E402

REQUEST = b"GET /v1/token HTTP/1.1\r\nHost: devicelink\r\n\r\n"
TOKEN = {
    "access_token": "eyJhbGciOiJFUzI1NiJ9." + "x" * 600 + ".sig",
    "token_type": "Bearer",
    "expires_in": 3599,
    "scope": "openid media.read",
}
NOBODY = 65534


class FixedApi:
    """Answers the same token to everyone. Benchmark only."""

    def __init__(self, later: bool = False) -> None:
        self.later = later
        self._token = routes.token_response(TOKEN)
        self._status = routes.json_response(200, {"state": "paired"})

    def handle(self, request: Request) -> object:
        if request.handler == "token":
            return self._answer_later(self._token) if self.later else self._token
        if request.handler == "health":
            return routes.health_response(True)
        return self._status

    @staticmethod
    async def _answer_later(response: Response) -> Response:
        return response


# -- server side -----------------------------------------------------------


async def serve(path: str, later: bool, per_uid: int) -> None:
    """Run the server until stdin closes; print "ready" once listening. The caps are
    the daemon's config defaults (512, 64 per uid), or more for --clients above 63."""
    async with SocketServer(FixedApi(later), path, max_connections=max(512, per_uid),
                            max_connections_per_uid=per_uid):
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


class _Ceiling(asyncio.Protocol):
    """The least a server can do: count request heads, write the fixed answer for each."""

    answer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        n = data.count(b"\r\n\r\n")
        if n:
            self.transport.write(self.answer * n)  # type: ignore[attr-defined]
            data = data[data.rfind(b"\r\n\r\n") + 4 :]
        self.tail = data


async def serve_ceiling(path: str, answer_file: str) -> None:
    with open(answer_file, "rb") as f:
        _Ceiling.answer = f.read()
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(_Ceiling, path, backlog=512)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


# -- client side (classic mode) ---------------------------------------------


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


def spawn_server(args: list[str]) -> subprocess.Popen:
    """This script in a child process (``--serve``, ``--serve-ceiling``), once it says ready."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != b"ready":
        raise SystemExit(f"the server did not start: {args}")
    return child


def end_child(child: subprocess.Popen) -> bytes:
    """Close its stdin (its signal to stop) and return what it printed."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    out = child.stdout.read()
    child.wait(timeout=30)
    return out


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="dlb", dir="/tmp")
    path = os.path.join(tmp, "agent.sock")
    child = None
    server = None
    daemon = None
    later = args.answer == "later"
    if args.daemon:
        daemon, path = start_paired_daemon(tmp)
        server_pid = daemon.proc.pid
    elif args.in_process:
        per_uid = max(64, args.clients + 1)
        server = SocketServer(FixedApi(later), path, max_connections=max(512, per_uid),
                              max_connections_per_uid=per_uid)
        await server.start()
        server_pid = os.getpid()
    else:
        child = spawn_server(["--serve", path, "--answer", args.answer, "--per-uid", str(max(64, args.clients + 1))])
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
            end_child(child)
        shutil.rmtree(tmp, ignore_errors=True)

    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] / 1e6

    where = "same process" if args.in_process else "separate process"
    if args.daemon:
        where = "real daemon (paired, dev server), separate process"
    load = f"{args.rate:g} req/s each" if args.rate else "back to back"
    answer = "" if args.daemon else f", Api answers {args.answer}"
    print(f"clients {args.clients} ({load}), pipeline {args.pipeline}, server in a {where}{answer}, "
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


# -- the issue 5 suite -------------------------------------------------------


@dataclass
class Recorder:
    """What a measurement's connections saw: latencies (ns) while recording, other statuses."""

    recording: bool = False
    stopping: bool = False
    limit: int = 0
    done: int = 0
    running: int = 0  # one-request-per-connection clients not yet stopped
    latencies: list[int] = field(default_factory=list)
    unexpected: collections.Counter = field(default_factory=collections.Counter)
    reached: asyncio.Event = field(default_factory=asyncio.Event)


def answer_size(buf: bytes | bytearray) -> int | None:
    """The size of the first answer in ``buf``, head and body; None until it is all there."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    at = buf.find(b"content-length: ", 0, end)
    total = end + 4 + (int(buf[at + 16 : buf.index(b"\r\n", at)]) if at >= 0 else 0)
    return total if len(buf) >= total else None


class _Load(asyncio.Protocol):
    """One keep-alive connection of the load generator.

    Closed loop (``interval`` 0): the next request as soon as the answer is in.
    Open loop: a request every ``interval`` seconds whether or not the last one
    was answered (those are then pipelined, which HTTP/1.1 allows), so a slow
    answer can't hold back the load (no coordinated omission). Latency is from
    the write to the last byte of the answer. A Protocol, not streams: at the
    ceiling's rates the client must cost as little as possible.
    """

    def __init__(self, rec: Recorder, interval: float) -> None:
        self.rec = rec
        self.interval = interval
        self.sent: collections.deque[int] = collections.deque()
        self.buf = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        if self.interval:
            self.next_at = loop.time() + random.random() * self.interval
            self.timer = loop.call_at(self.next_at, self._tick)
        else:
            self._send()

    def _send(self) -> None:
        self.sent.append(time.perf_counter_ns())
        self.transport.write(REQUEST)  # type: ignore[attr-defined]

    def _tick(self) -> None:
        if self.rec.stopping:
            return
        self._send()
        self.next_at += self.interval
        loop = asyncio.get_running_loop()
        self.timer = loop.call_at(max(self.next_at, loop.time()), self._tick)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        rec = self.rec
        while True:
            total = answer_size(buf)
            if total is None:
                return
            now = time.perf_counter_ns()
            status = bytes(buf[9:12])
            del buf[:total]
            t0 = self.sent.popleft() if self.sent else now
            if status != b"200":
                rec.unexpected[status.decode()] += 1
            elif rec.recording:
                rec.latencies.append(now - t0)
                rec.done += 1
                if rec.limit and rec.done >= rec.limit:
                    rec.reached.set()
            if not self.interval and not rec.stopping:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[int]
    unexpected: dict
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, p: float) -> float:
        lat = self.latencies
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] / 1e6 if lat else float("nan")

    def line(self) -> str:
        extra = f"  non-200: {self.unexpected}" if self.unexpected else ""
        return (f"{self.rate:9,.0f} req/s  p50 {self.pct(50):6.3f}  p99 {self.pct(99):7.3f}  "
                f"p99.9 {self.pct(99.9):7.3f} ms  server CPU {100 * self.server_cpu:3.0f}%  "
                f"client CPU {100 * self.client_cpu:3.0f}%{extra}")


async def measure(path: str, server_pid: int, clients: int, seconds: float = 0.0, offered: float = 0.0,
                  requests: int = 0, warmup: float = 0.5) -> Result:
    """``clients`` connections: closed loop, or open loop at ``offered`` req/s in total."""
    loop = asyncio.get_running_loop()
    rec = Recorder(limit=requests)
    interval = clients / offered if offered else 0.0
    conns: list[_Load] = []
    for _ in range(clients):
        # A blocking connect(): if a flood has filled the daemon's backlog it waits
        # for room, where asyncio's would get EAGAIN and a socket never connected.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(path)
        sock.setblocking(False)
        _, proto = await loop.create_unix_connection(lambda: _Load(rec, interval), sock=sock)
        conns.append(proto)
    await asyncio.sleep(warmup)
    cpu0, own0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    rec.recording = True
    if requests:
        await rec.reached.wait()
    else:
        await asyncio.sleep(seconds)
    rec.recording = False
    elapsed = time.perf_counter() - t0
    cpu, own = cpu_seconds(server_pid) - cpu0, time.process_time() - own0
    rec.stopping = True
    # Half-close and wait for the server's close, so its connection count is back
    # down before the next measurement opens 64 more (per-uid caps).
    for conn in conns:
        conn.transport.write_eof()  # type: ignore[attr-defined]
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), 30)
    rec.latencies.sort()
    return Result(rec.done, elapsed, rec.latencies, dict(rec.unexpected), cpu / elapsed, own / elapsed)


ABUSE_GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"GET /v1/token HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n",
]


async def abuse(path: str, connections: int, garbage_share: float) -> None:
    """The abusive client (runs under another uid): tries to hold ``connections``
    connections; some keep sending garbage. Whenever the daemon refuses or closes
    one, it reconnects at once. Prints its counts as JSON when stdin closes."""
    counts: collections.Counter = collections.Counter()
    running = True

    async def slot(garbage: bool) -> None:
        while running:
            try:
                reader, writer = await asyncio.open_unix_connection(path)
            except OSError as exc:
                counts[f"connect failed ({exc.strerror})"] += 1
                await asyncio.sleep(0.01)
                continue
            counts["connects"] += 1
            try:
                if garbage:
                    writer.write(random.choice(ABUSE_GARBAGE))
                data = await reader.read(64)
            except OSError as exc:  # refused or closed before our garbage went out
                counts[f"failed ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})"] += 1
                writer.close()
                continue
            if data.startswith(b"HTTP/1.1 503"):
                counts["refused (503)"] += 1
            elif data.startswith(b"HTTP/1.1 4"):
                counts[f"answered {data[9:12].decode()}"] += 1
            elif not data:
                counts["closed by the daemon"] += 1
            else:
                counts["other"] += 1
            writer.close()

    n_garbage = int(connections * garbage_share)
    tasks = [asyncio.create_task(slot(i < n_garbage)) for i in range(connections)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    running = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["cpu_seconds"] = round(time.process_time(), 2)
    print(json.dumps(counts), flush=True)


def spawn_abuser(path: str, connections: int, garbage_share: float) -> subprocess.Popen:
    """``--abuse`` in a child that drops to uid/gid 65534 (setgroups, setgid, setuid after fork).

    Through setpriv when there is one: it execs while it can still read what root
    can, so an interpreter under /root (pyenv) starts too; the process it runs has
    uid 65534 and no capabilities, as the tests check."""
    argv = [sys.executable, os.path.abspath(__file__), "--abuse", path,
            "--abuse-connections", str(connections), "--abuse-garbage", str(garbage_share)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    if shutil.which("setpriv"):
        child = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                  *argv], **pipes)
    else:
        child = subprocess.Popen(argv, user=NOBODY, group=NOBODY, extra_groups=[], **pipes)
    assert child.stdout is not None
    if child.stdout.readline().strip() != b"ready":
        raise SystemExit("the abusive client did not start")
    return child


async def one_answer(path: str) -> bytes:
    """The exact bytes of one token answer (the ceiling replays them)."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    at = head.find(b"content-length: ") + 16
    answer = head + await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the target does not serve tokens: {answer[:200]!r}")
    return answer


def start_target(tmp: str, real_daemon: bool, per_uid: int) -> tuple:
    """(daemon, child, socket path, pid, what): the real daemon, or the socket layer with
    the fixed Api in a child (``--target fixed``) with ``per_uid`` as its per-uid cap."""
    if real_daemon:
        daemon, path = start_paired_daemon(tmp)
        return daemon, None, path, daemon.proc.pid, "the real daemon (paired against the dev server)"
    path = os.path.join(tmp, "agent.sock")
    child = spawn_server(["--serve", path, "--answer", "now", "--per-uid", str(per_uid)])
    return None, child, path, child.pid, "the socket layer with a fixed Api (--target fixed)"


async def start_ceiling(tmp: str, path: str) -> tuple[subprocess.Popen, str, str]:
    """The ceiling in a child process, replaying the token answer of the server on ``path``:
    (the child, its socket path, the answer's file)."""
    answer_file = os.path.join(tmp, "answer.http")
    with open(answer_file, "wb") as f:
        f.write(await one_answer(path))
    ceiling_path = os.path.join(tmp, "ceiling.sock")
    return spawn_server(["--serve-ceiling", ceiling_path, answer_file]), ceiling_path, answer_file


def summary(name: str, results: list[Result]) -> Result:
    merged = Result(sum(r.requests for r in results), sum(r.seconds for r in results),
                    sorted(x for r in results for x in r.latencies), {},
                    sum(r.server_cpu for r in results) / len(results),
                    sum(r.client_cpu for r in results) / len(results))
    for r in results:
        for k, v in r.unexpected.items():
            merged.unexpected[k] = merged.unexpected.get(k, 0) + v
    print(f"  {name:8} all {merged.line()}")
    return merged


async def issue5(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        print("note: not root; (b) needs root to run the abusive client as uid 65534 and is skipped")
    tmp = tempfile.mkdtemp(prefix="dlb", dir="/tmp")
    daemon = child = ceiling = None
    clients = args.clients5
    try:
        daemon, child, path, pid, what = start_target(tmp, args.target != "fixed", max(64, clients + 1))
        ceiling, ceiling_path, answer_file = await start_ceiling(tmp, path)
        print(f"target: {what}, pid {pid}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{clients} keep-alive clients as uid {os.geteuid()}; token answer {os.path.getsize(answer_file)} bytes; "
              f"latency from write to last byte, in ms")

        print(f"\n(a) daemon vs ceiling (a minimal asyncio server replaying that answer), "
              f"alternating, {args.rounds} rounds of {args.round_seconds:g} s each")
        print(f"  closed loop: each client sends its next request when the answer is in. This is\n"
              f"  throughput; latency here is ~{clients} / throughput (Little's law), not a property of the server.")
        runs: dict[str, list[Result]] = {"daemon": [], "ceiling": []}
        for r in range(args.rounds):
            for name, target, tpid in (("daemon", path, pid), ("ceiling", ceiling_path, ceiling.pid)):
                res = await measure(target, tpid, clients, args.round_seconds)
                runs[name].append(res)
                print(f"  {name:8} #{r + 1} {res.line()}")
        d, c = summary("daemon", runs["daemon"]), summary("ceiling", runs["ceiling"])
        print(f"  ratio daemon/ceiling: {d.rate / c.rate:.2f} (target >= 0.25)")
        if c.client_cpu > 0.9:
            print("  (the clients used most of a core against the ceiling: the ceiling may be client-bound,\n"
                  "   which makes the ratio look better than it is)")

        print(f"\n  open loop: {args.offered:g} req/s offered in total ({args.offered / clients:.2f} req/s on each "
              f"connection, on a schedule,\n  whether or not the last answer is in). This is the latency an "
              f"app sees when the daemon is not saturated.")
        runs = {"daemon": [], "ceiling": []}
        for r in range(args.rounds):
            for name, target, tpid in (("daemon", path, pid), ("ceiling", ceiling_path, ceiling.pid)):
                res = await measure(target, tpid, clients, args.round_seconds, offered=args.offered)
                runs[name].append(res)
                print(f"  {name:8} #{r + 1} {res.line()}")
        d_open = summary("daemon", runs["daemon"])
        summary("ceiling", runs["ceiling"])
        print(f"  daemon p99 at {args.offered:g} req/s: {d_open.pct(99):.3f} ms (target <= 2 ms)")

        if os.geteuid() == 0:
            print(f"\n(b) the daemon while uid {NOBODY} tries to hold {args.abuse_connections} connections, "
                  f"{int(100 * args.abuse_garbage)}% of them sending garbage,\n"
                  f"    reconnecting at once whenever the daemon refuses (503) or closes (400, 413, 414) one")
            # The socket is 0660 root:root in a 0700 directory: let the abuser in, as a member
            # of the socket's group would be on a device.
            os.chmod(tmp, 0o711)
            os.chmod(path, 0o666)
            abuser = spawn_abuser(path, args.abuse_connections, args.abuse_garbage)
            try:
                await asyncio.sleep(1.0)  # let it reach its steady state
                closed = [await measure(path, pid, clients, args.round_seconds) for _ in range(args.rounds)]
                opened = [await measure(path, pid, clients, args.round_seconds, offered=args.offered)
                          for _ in range(args.rounds)]
            finally:
                counts = json.loads(end_child(abuser) or b"{}")
            for r, res in enumerate(closed):
                print(f"  closed   #{r + 1} {res.line()}")
            summary("closed", closed)
            for r, res in enumerate(opened):
                print(f"  open     #{r + 1} {res.line()}")
            o = summary("open", opened)
            print(f"  legitimate p99 at {args.offered:g} req/s under abuse: {o.pct(99):.3f} ms (target <= 10 ms)")
            abuse_s = 1.0 + sum(r.seconds + 0.5 for r in closed + opened)
            print(f"  the abuser, over ~{abuse_s:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

        print(f"\n(c) daemon RSS across {args.rss_requests:,} token requests ({clients} clients, closed loop)")
        rss_start, _ = rss_kib(pid)
        await measure(path, pid, clients, requests=5000, warmup=0.2)
        rss_warm, _ = rss_kib(pid)
        res = await measure(path, pid, clients, requests=args.rss_requests, warmup=0.0)
        rss_end, hwm = rss_kib(pid)
        print(f"  VmRSS {rss_start / 1024:.1f} MiB before any load, {rss_warm / 1024:.1f} MiB after 5,000 requests "
              f"(warm), {rss_end / 1024:.1f} MiB after {res.requests:,} more (peak {hwm / 1024:.1f} MiB)")
        print(f"  growth over the {res.requests:,} requests: {(rss_end - rss_warm) / 1024:+.2f} MiB "
              f"(from cold: {(rss_end - rss_start) / 1024:+.2f} MiB; target < 2 MB)")
    finally:
        if ceiling is not None:
            end_child(ceiling)
        if child is not None:
            end_child(child)
        if daemon is not None:
            daemon.stop()
            daemon.dev_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- the issue 9 suite -------------------------------------------------------


class _OneShot:
    """A client that opens one connection per request, as curl and the CLI do.

    Raw non-blocking sockets and ``add_reader``, no transport: against the
    ceiling the clients must cost as little as possible. The socket is closed
    (the kernel sees the close) before the next one connects.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, rec: Recorder,
                 finished: asyncio.Future) -> None:
        self.loop, self.path, self.rec, self.finished = loop, path, rec, finished
        self.sock: socket.socket | None = None
        self.buf = b""
        self.t0 = 0

    def start(self) -> None:
        rec = self.rec
        if rec.stopping:
            rec.running -= 1
            if not rec.running and not self.finished.done():
                self.finished.set_result(None)
            return
        self.t0 = time.perf_counter_ns()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)  # blocking: a full backlog makes it wait, not fail (gh-117208)
        try:
            sock.connect(self.path)
            sock.setblocking(False)
            sock.send(REQUEST)
        except OSError as exc:
            sock.close()
            rec.unexpected[f"connect/send failed ({errno.errorcode.get(exc.errno or 0, exc)})"] += 1
            self.loop.call_later(0.001, self.start)
            return
        self.sock, self.buf = sock, b""
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = self.buf = self.buf + data
        status = None
        if data:
            if answer_size(buf) is None:
                return
            status = buf[9:12].decode()
        self.loop.remove_reader(sock.fileno())
        sock.close()
        self.sock = None
        rec = self.rec
        if status != "200":
            rec.unexpected[status or "closed without an answer"] += 1
        elif rec.recording:
            rec.latencies.append(time.perf_counter_ns() - self.t0)
            rec.done += 1
        self.start()


async def measure_oneshot(path: str, server_pid: int, clients: int, seconds: float,
                          warmup: float = 0.3) -> Result:
    """``clients`` clients, each opening a connection per request, back to back."""
    loop = asyncio.get_running_loop()
    rec = Recorder(running=clients)
    finished = loop.create_future()
    for _ in range(clients):
        _OneShot(loop, path, rec, finished).start()
    await asyncio.sleep(warmup)
    cpu0, own0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    rec.recording = True
    await asyncio.sleep(seconds)
    rec.recording = False
    elapsed = time.perf_counter() - t0
    cpu, own = cpu_seconds(server_pid) - cpu0, time.process_time() - own0
    rec.stopping = True
    await asyncio.wait_for(finished, 30)
    rec.latencies.sort()
    # Refusals during the warm-up count too: they are what a client sees.
    return Result(rec.done, elapsed, rec.latencies, dict(rec.unexpected), cpu / elapsed, own / elapsed)


async def issue9(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="dlb", dir="/tmp")
    daemon = child = ceiling = None
    try:
        daemon, child, path, pid, what = start_target(tmp, args.target == "daemon", 64)
        ceiling, ceiling_path, answer_file = await start_ceiling(tmp, path)
        print(f"{what}, caps 512 in total and 64 per uid, vs the ceiling, a minimal\n"
              f"asyncio server replaying its token answer ({os.path.getsize(answer_file)} bytes); "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f};\n"
              f"alternating, {args.rounds} rounds of {args.round_seconds:g} s each; latency in ms")
        targets = (("daemon", path, pid), ("ceiling", ceiling_path, ceiling.pid))
        refusals = answers = 0
        cases = [(f"(a) one request per connection, {n} client{'s' if n > 1 else ''}", n, False)
                 for n in args.oneshot_clients]
        cases.append((f"(b) keep-alive, {args.clients5} clients, closed loop", args.clients5, True))
        ratios = []
        for title, n, keep_alive in cases:
            print(f"\n{title}")
            runs: dict[str, list[Result]] = {"daemon": [], "ceiling": []}
            for r in range(args.rounds):
                for name, target, tpid in targets:
                    if keep_alive:
                        res = await measure(target, tpid, n, args.round_seconds)
                    else:
                        res = await measure_oneshot(target, tpid, n, args.round_seconds)
                    runs[name].append(res)
                    print(f"  {name:8} #{r + 1} {res.line()}")
            d, c = summary("daemon", runs["daemon"]), summary("ceiling", runs["ceiling"])
            busy = sum(res.unexpected.get("503", 0) for res in runs["daemon"])
            refusals += busy
            answers += d.requests + sum(sum(res.unexpected.values()) for res in runs["daemon"])
            ratios.append((title, d.rate / c.rate, c.client_cpu))
            print(f"  ratio daemon/ceiling: {d.rate / c.rate:.2f}")
        print("\nsummary (daemon/ceiling; targets: one request per connection >= 0.75 at 8 and 64 clients,"
              "\nkeep-alive at 64 >= 0.4)")
        for title, ratio, client_cpu in ratios:
            bound = "  (the clients used most of a core: the ceiling may be client-bound)" if client_cpu > 0.9 else ""
            print(f"  {ratio:5.2f}  {title}{bound}")
        print(f"(c) 503 server_busy below the cap: {refusals} of {answers} answers (target 0)")
    finally:
        if ceiling is not None:
            end_child(ceiling)
        if child is not None:
            end_child(child)
        if daemon is not None:
            daemon.stop()
            daemon.dev_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


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
                        help="load the real daemon (paired against the dev server) instead of a fixed Api")
    parser.add_argument("--answer", choices=["now", "later"], default="now",
                        help="the fixed Api answers from handle() (now) or through a coroutine (later)")
    issue = parser.add_argument_group("the issue 5 suite")
    issue.add_argument("--issue5", action="store_true", help="run (a), (b) and (c); see the top of this file")
    issue.add_argument("--target", choices=["daemon", "fixed"],
                       help="what the suite loads (default: daemon for --issue5, fixed for --issue9)")
    issue.add_argument("--clients5", type=int, default=64, metavar="N", help="connections (default 64)")
    issue.add_argument("--rounds", type=int, default=3, help="alternating rounds of each measurement")
    issue.add_argument("--round-seconds", type=float, default=3.0)
    issue.add_argument("--offered", type=float, default=2000.0, help="open-loop load, req/s in total")
    issue.add_argument("--abuse-connections", type=int, default=500)
    issue.add_argument("--abuse-garbage", type=float, default=0.2,
                       help="share of the abuser's connections that send garbage")
    issue.add_argument("--rss-requests", type=int, default=100_000)
    issue9_group = parser.add_argument_group("the issue 9 suite")
    issue9_group.add_argument("--issue9", action="store_true", help="run (a), (b) and (c) of issue 9")
    issue9_group.add_argument("--oneshot-clients", type=int, nargs="+", default=[1, 8, 64], metavar="N",
                              help="client counts for one request per connection (default 1 8 64)")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--per-uid", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--serve-ceiling", nargs=2, metavar=("PATH", "ANSWER"), help=argparse.SUPPRESS)
    parser.add_argument("--abuse", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.answer == "later", args.per_uid))
    elif args.serve_ceiling:
        asyncio.run(serve_ceiling(*args.serve_ceiling))
    elif args.abuse:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's ^C ends us through stdin
        asyncio.run(abuse(args.abuse, args.abuse_connections, args.abuse_garbage))
    elif args.issue5:
        asyncio.run(issue5(args))
    elif args.issue9:
        asyncio.run(issue9(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
