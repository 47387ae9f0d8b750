"""The socket under attack: limits, slowloris, connection caps, other uids, fuzzing.

Real server, real Unix sockets, real processes under other uids (``setpriv``,
so this needs root; those tests skip otherwise); only the Api is faked
(:class:`tests.ipc.test_server.FakeApi`). Timeouts are made small through the
constructor, and tests wait for the server to act (an answer, an EOF), never
for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import h11
import pytest

from devicelink.ipc import peer as peer_module
from devicelink.ipc import server as server_module
from devicelink.ipc.routes import Peer
from tests.ipc.test_server import (  # noqa: F401  (api, sock_dir, srv: fixtures)
    TIMEOUT, FakeApi, FakeStream, ServerThread, api, body, connect, exchange, get, open_stream,
    read_all, read_answer, req, sock_dir, srv,
)

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to connect as another uid",
)


@pytest.fixture
def make_server(api: FakeApi, sock_dir: str) -> Iterator[Any]:
    """``make_server(**kwargs)``: a ServerThread on a socket anyone may connect to."""
    os.chmod(sock_dir, 0o755)  # so uid 65534 can reach the socket
    running: list[ServerThread] = []

    def start(**kwargs: Any) -> ServerThread:
        kwargs.setdefault("mode", 0o666)
        srv = ServerThread(api, os.path.join(sock_dir, f"s{len(running)}.sock"), **kwargs).__enter__()
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.__exit__(None, None, None)


def refused(sock: socket.socket) -> dict:
    """Read a 503 server_busy answer and the close after it."""
    with sock.makefile("rb") as f:
        answer = read_answer(f)
        assert answer is not None, "closed without an answer"
        assert (answer[0], answer[1]["connection"]) == (503, "close")
        try:
            assert f.read() == b""
        except ConnectionResetError:  # AF_UNIX: our unread request resets after the answer
            pass
    return body(answer)


def trickle(sock: socket.socket, data: bytes, every: float = 0.02) -> bytes:
    """Send ``data`` a byte at a time until the server answers; return what it sent."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if select.select([sock], [], [], every)[0]:  # paces the bytes, and sees an answer
            break
    return read_all(sock)


# -- limits -------------------------------------------------------------------


def test_long_request_line_is_414(srv: ServerThread, api: FakeApi) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/token?scope=" + "a" * 9000))
        answer = read_answer(f)
        assert answer is not None
        assert (answer[0], answer[1]["connection"]) == (414, "close")
        assert body(answer)["error"] == "invalid_request"
        assert f.read() == b""
    assert api.requests == []


def test_request_line_at_the_limit_is_served(srv: ServerThread) -> None:
    target = "/v1/token?scope=openid&x=" + "a" * (8192 - 12 - 3 - 25)  # GET + target + 12 = 8 KiB
    assert get(srv.path, target)[0] == 200


def test_endless_request_line_in_pieces_is_414(srv: ServerThread) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /v1/token?scope=")
        for _ in range(20):
            try:
                sock.sendall(b"a" * 1024)  # 20 KiB, no end of line
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_answer(f)
    assert answer is not None and answer[0] == 414


def test_too_many_headers_is_431(srv: ServerThread, api: FakeApi) -> None:
    headers = [f"X-H{i}: v" for i in range(100)]  # 101 with Host
    answer = exchange(srv.path, req("GET", "/v1/health", *headers))
    assert (answer[0], body(answer)["error"]) == (431, "invalid_request")
    assert "header fields" in body(answer)["error_description"]
    assert api.requests == []
    assert exchange(srv.path, req("GET", "/v1/health", *headers[:99]))[0] == 200  # 100 is fine


@pytest.mark.parametrize("pieces", [1, 40])
def test_oversized_headers_are_431(srv: ServerThread, pieces: int) -> None:
    data = b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    step = len(data) // pieces + 1
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        for i in range(0, len(data), step):
            try:
                sock.sendall(data[i : i + step])
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_answer(f)
        assert answer is not None and answer[0] == 431
        assert f.read() == b""


def test_oversized_body_is_413_from_the_headers(srv: ServerThread, api: FakeApi) -> None:
    # Answered from the headers alone, before any of the body is sent.
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nContent-Length: 16385\r\n\r\n")
        answer = read_answer(f)
        assert answer is not None and answer[0] == 413
        assert body(answer)["error"] == "request_too_large"
        assert answer[1]["connection"] == "close"
        sock.shutdown(socket.SHUT_WR)
        assert f.read() == b""
    assert api.requests == []


def test_oversized_chunked_body_is_413(srv: ServerThread, api: FakeApi) -> None:
    chunk = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(chunk * 5)
        answer = read_answer(f)
        assert answer is not None and answer[0] == 413
    assert api.requests == []


def test_huge_content_length_is_413(srv: ServerThread) -> None:
    answer = exchange(srv.path, b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n")
    assert answer[0] in (400, 413)


# -- slowloris: the request deadline -----------------------------------------------


@pytest.fixture
def quick(make_server: Any) -> ServerThread:
    return make_server(request_timeout=0.3, idle_timeout=30.0)


def test_trickled_head_gets_408(quick: ServerThread, api: FakeApi) -> None:
    with connect(quick.path) as sock:
        t0 = time.monotonic()
        data = trickle(sock, req("GET", "/v1/health") * 1000)
        elapsed = time.monotonic() - t0
    answer = read_answer(io.BytesIO(data))
    assert answer is not None
    assert (answer[0], answer[1]["connection"]) == (408, "close")
    assert body(answer)["error"] == "invalid_request"
    assert "0.3 s" in body(answer)["error_description"]
    assert elapsed >= 0.3
    assert api.requests == []


def test_trickled_body_gets_408(quick: ServerThread, api: FakeApi) -> None:
    with connect(quick.path) as sock:
        sock.sendall(b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        data = trickle(sock, b"x" * 5000)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert api.requests == []


def test_partial_request_pipelined_behind_a_whole_one_gets_408(quick: ServerThread) -> None:
    with connect(quick.path) as sock:
        sock.sendall(req("GET", "/v1/health") + b"GET /v1/health HTTP/1.1\r\nHo")
        data = read_all(sock)  # the first answer, then the deadline of the second
    assert re.findall(rb"HTTP/1\.1 (\d+) ", data) == [b"200", b"408"]


def test_idle_keep_alive_is_not_a_slow_request(quick: ServerThread) -> None:
    """The request clock starts at a request's first byte, not when the connection went idle."""
    with connect(quick.path) as idle, idle.makefile("rb") as f:
        idle.sendall(req("GET", "/v1/health"))
        assert read_answer(f)[0] == 200  # type: ignore[index]
        with connect(quick.path) as slow:  # a witness that request_timeout has passed
            slow.sendall(b"GET /v1/health HTTP/1.1\r\n")
            assert read_all(slow).startswith(b"HTTP/1.1 408 ")
        idle.sendall(req("GET", "/v1/health"))
        assert read_answer(f)[0] == 200  # type: ignore[index]


def test_waiting_for_the_api_is_not_a_slow_request(quick: ServerThread, api: FakeApi) -> None:
    api.gate = asyncio.Event()
    with connect(quick.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/token") + req("GET", "/v1/health"))  # both whole
        assert api.entered.wait(TIMEOUT)
        with connect(quick.path) as slow:
            slow.sendall(b"GET /v1/health HTTP/1.1\r\n")
            assert read_all(slow).startswith(b"HTTP/1.1 408 ")  # request_timeout has passed
        quick.call_soon(api.gate.set)
        assert [read_answer(f)[0] for _ in range(2)] == [200, 200]  # type: ignore[index]


def test_idle_timeout_closes_without_an_answer(make_server: Any) -> None:
    srv = make_server(idle_timeout=0.05, request_timeout=10.0)
    with connect(srv.path) as sock:
        assert read_all(sock) == b""


# -- connection caps ----------------------------------------------------------------


def test_total_cap_answers_503_and_frees_up(make_server: Any) -> None:
    srv = make_server(max_connections=3, max_connections_per_uid=10)
    held = [connect(srv.path) for _ in range(3)]
    for sock in held:
        sock.sendall(req("GET", "/v1/health"))
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    with connect(srv.path) as extra:
        try:
            extra.sendall(req("GET", "/v1/health"))  # a request the server will never read
        except BrokenPipeError:
            pass  # refused and closed before we wrote: the answer is still there to read
        answer = refused(extra)
    assert answer["error"] == "server_busy"
    assert answer["error_description"]
    # An HTTP client library sees the 503 too (httpcore reads the answer after a failed write).
    with httpx.Client(transport=httpx.HTTPTransport(uds=srv.path)) as client:
        answer = client.get("http://devicelink/v1/health")
    assert (answer.status_code, answer.json()["error"]) == (503, "server_busy")
    held.pop().close()
    srv.until(lambda: len(srv.server._connections) == 2)
    assert get(srv.path, "/v1/health")[0] == 200
    for sock in held:
        sock.close()
    srv.until(lambda: not srv.server._connections)
    assert srv.server._per_uid == {}


def test_refused_client_that_writes_late_still_reads_503(make_server: Any) -> None:
    """The race a client can lose: it connects, we refuse, then it writes its request.

    Its write must not fail (httpcore < 1.0 would then never read the answer)."""
    srv = make_server(max_connections_per_uid=1)
    with connect(srv.path) as held:
        held.sendall(req("GET", "/v1/health"))
        assert held.recv(100).startswith(b"HTTP/1.1 200 ")
        with connect(srv.path) as late:
            srv.until(lambda: len(srv.server._half_closed) == 1)  # refused before it wrote
            late.sendall(req("GET", "/v1/health"))  # no BrokenPipeError
            assert refused(late)["error"] == "server_busy"


def test_refused_sockets_held_are_bounded(make_server: Any) -> None:
    srv = make_server(max_connections_per_uid=1)
    with connect(srv.path) as held:
        held.sendall(req("GET", "/v1/health"))
        assert held.recv(100).startswith(b"HTTP/1.1 200 ")
        flood = [connect(srv.path) for _ in range(100)]
        for sock in flood:
            refused(sock)  # the answer and EOF: each was refused
        assert len(srv.server._half_closed) <= server_module._REFUSED_KEPT  # not 100
        srv.until(lambda: not srv.server._half_closed)  # and closed within about a second
        for sock in flood:
            sock.close()


def test_streams_count_toward_the_cap(make_server: Any, api: FakeApi) -> None:
    srv = make_server(max_connections=2)
    streams = [open_stream(srv.path) for _ in range(2)]
    with connect(srv.path) as extra:
        assert refused(extra)["error"] == "server_busy"
    for sock, f in streams:
        f.close()
        sock.close()
    srv.until(lambda: not srv.server._connections)
    assert [s.closes for s in api.streams] == [1, 1]


def test_refusals_are_logged_once_a_minute_per_uid(
    make_server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="devicelink.ipc.server")
    srv = make_server(max_connections_per_uid=1)
    with connect(srv.path) as held:
        held.sendall(req("GET", "/v1/health"))
        assert held.recv(100).startswith(b"HTTP/1.1 200 ")
        for _ in range(10):
            with connect(srv.path) as extra:
                refused(extra)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings
        assert f"uid {os.getuid()}" in warnings[0] and "0 more refused" in warnings[0]
        monkeypatch.setattr(server_module, "REFUSAL_LOG_INTERVAL", 0.0)
        with connect(srv.path) as extra:
            refused(extra)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2 and "9 more refused since the last warning" in warnings[1]
    assert len(srv.server._refused) == 1  # one entry per uid refused lately, no more


# -- the caps count only connections still open ------------------------------------------


@contextlib.contextmanager
def loop_held(srv: ServerThread) -> Iterator[None]:
    """Hold the server's loop in one callback while the body runs: whatever the body
    does to the sockets, the server sees it all in its next wake-up, as under load."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(TIMEOUT)

    srv.call_soon(hold)
    assert held.wait(TIMEOUT)
    try:
        yield
    finally:
        release.set()


@pytest.mark.parametrize("first", [
    req("GET", "/v1/health"),  # the fast path
    req("GET", "/v1/health", "Connection: keep-alive"),  # h11
    req("GET", "/v1/token"),  # answered later, from a task
], ids=["fast path", "h11", "answered later"])
def test_a_connection_the_client_closed_does_not_count(make_server: Any, first: bytes) -> None:
    """curl and the CLI close a connection and at once open the next. The server may
    accept the next one before it has read the EOF of the first: the first must not
    count toward the cap any more (it did: 503 server_busy at 48 such clients)."""
    srv = make_server(max_connections_per_uid=1)
    for _ in range(3):
        sock = connect(srv.path)
        with sock.makefile("rb") as f:
            sock.sendall(first)
            assert read_answer(f)[0] == 200  # type: ignore[index]
        with loop_held(srv):
            sock.close()
            sock = connect(srv.path)  # accepted in the same wake-up as the EOF above
            sock.sendall(req("GET", "/v1/health"))
        with sock, sock.makefile("rb") as f:
            assert read_answer(f)[0] == 200  # type: ignore[index]
    srv.until(lambda: not srv.server._connections)
    assert srv.server._per_uid == {}


def test_a_closed_connection_still_being_answered_counts(make_server: Any, api: FakeApi) -> None:
    """Until its answer is written, a connection counts even if its client has gone:
    the cap bounds the Api calls a uid can have in flight."""
    api.gate = asyncio.Event()
    srv = make_server(max_connections_per_uid=1)
    sock = connect(srv.path)
    sock.sendall(req("GET", "/v1/token"))
    assert api.entered.wait(TIMEOUT)
    with loop_held(srv):
        sock.close()
        extra = connect(srv.path)
    with extra:
        assert refused(extra)["error"] == "server_busy"
    srv.call_soon(api.gate.set)
    srv.until(lambda: not srv.server._connections)
    assert get(srv.path, "/v1/health")[0] == 200


# -- other uids, for real --------------------------------------------------------------

CHILD = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    socks.append(s)
statuses = []
for s in socks:
    try:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    except OSError:
        pass
    f = s.makefile("rb")
    line = f.readline()
    statuses.append(int(line.split()[1]) if line else None)
    while f.readline() not in (b"\r\n", b""):
        pass
print(json.dumps(statuses), flush=True)
sys.stdin.read()  # hold the connections until the test is done
"""


def as_user(args: list[str], *setpriv: str) -> subprocess.Popen:
    """Run this interpreter on CHILD under another uid (setpriv does setgroups, setgid, setuid)."""
    return subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *(setpriv or ["--clear-groups"]),
         sys.executable, "-I", "-c", CHILD, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def child_statuses(child: subprocess.Popen) -> list[int | None]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"the child failed ({child.wait(TIMEOUT)})"
    return json.loads(line)


def release(child: subprocess.Popen) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(TIMEOUT) == 0


@needs_root
def test_per_uid_cap_with_another_uid(make_server: Any, api: FakeApi) -> None:
    srv = make_server(max_connections=50, max_connections_per_uid=3)
    child = as_user([srv.path, "5"])
    try:
        assert child_statuses(child) == [200, 200, 200, 503, 503]
        assert {r.peer.uid for r in api.requests} == {NOBODY}
        assert srv.server._per_uid == {NOBODY: 3}
        # Another uid (root, here) is not affected by nobody's cap.
        held = [connect(srv.path) for _ in range(3)]
        for sock in held:
            sock.sendall(req("GET", "/v1/health"))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        srv.until(lambda: srv.server._per_uid == {NOBODY: 3, os.getuid(): 3})
        for sock in held:
            sock.close()
    finally:
        release(child)
    srv.until(lambda: not srv.server._connections)
    assert srv.server._per_uid == {}  # no entry left behind at zero


@needs_root
@pytest.mark.parametrize("count", [3, 100, 300])
def test_peer_groups_are_read_from_the_kernel(make_server: Any, api: FakeApi, count: int) -> None:
    # 3: the usual; 100: more than a small buffer; 300: more than socket.getsockopt's 1024 bytes.
    groups = tuple(range(5000, 5000 + count))
    srv = make_server()
    child = as_user([srv.path, "1"], "--groups=" + ",".join(map(str, groups)))
    try:
        assert child_statuses(child) == [200]
    finally:
        release(child)
    (request,) = api.requests
    assert request.peer.uid == NOBODY and request.peer.gid == NOBODY
    assert request.peer.pid == child.pid  # setpriv execs: same process
    assert sorted(request.peer.groups) == list(groups)


@needs_root
def test_no_supplementary_groups(make_server: Any, api: FakeApi) -> None:
    srv = make_server()
    child = as_user([srv.path, "1"], "--clear-groups")
    try:
        assert child_statuses(child) == [200]
    finally:
        release(child)
    assert api.requests[0].peer == Peer(child.pid, NOBODY, NOBODY, ())


def test_peer_groups_unsupported_is_no_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldKernel:
        def getsockopt(self, level: int, name: int, size: int) -> bytes:
            if name == peer_module._SO_PEERGROUPS:
                raise OSError(92, "Protocol not available")  # ENOPROTOOPT
            return peer_module._UCRED.pack(1, 2, 3)

    monkeypatch.setattr(peer_module, "_groups_supported", True)
    assert peer_module.peer_credentials(OldKernel()) == Peer(1, 2, 3, ())
    assert peer_module._groups_supported is False  # asked once, not per connection


# -- fuzzing ---------------------------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
_ALLOWED = {100, 200, 202, 400, 404, 405, 408, 413, 414, 431, 500, 501, 503}

VALID = [
    req("GET", "/v1/health"),
    req("GET", "/v1/token?scope=openid&min_ttl=30"),
    req("GET", "/v1/status"),
    req("GET", "/metrics"),
    req("GET", "/v1/events"),
    req("POST", "/v1/pair"),
    req("POST", "/v1/step-up", body=b'{"acr_values": "mfa", "max_age": 60}'),
    b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
    b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/status HTTP/1.0\r\n\r\n",
    req("HEAD", "/v1/status"),
]


def check_answers(raw: bytes) -> None:
    """Whatever came back is a sequence of well-formed responses (possibly cut by our close)."""
    assert raw == b"" or raw.startswith(b"HTTP/1.1 "), raw[:60]
    statuses = [int(s) for s in _STATUS_LINE.findall(raw)]
    assert set(statuses) <= _ALLOWED, statuses
    if raw:
        assert statuses, raw[:60]


def poke(path: str, pieces: list[bytes], half_close: bool, deadline: float) -> None:
    with connect(path) as sock:
        sock.settimeout(deadline)
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early: allowed
        chunks = []
        t0 = time.monotonic()
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"no close within {deadline} s (after {time.monotonic() - t0:.2f} s)")
    check_answers(b"".join(chunks))


def test_fuzz_garbage_and_mutated_requests(make_server: Any, api: FakeApi) -> None:
    """Random bytes and mutated requests, split into several writes: the server answers
    well-formed HTTP or closes, within its deadlines; then serves a fresh client; and
    holds nothing afterwards."""
    hypothesis = pytest.importorskip("hypothesis")  # bench/bookworm has no hypothesis
    st = hypothesis.strategies

    srv = make_server(request_timeout=0.2, idle_timeout=0.2)
    # Streams end by themselves here, so a client that never sends EOF still sees a close.
    api.stream_factory = lambda: FakeStream(b"retry: 2000\n\n", b"data: {}\n\n", None)  # type: ignore[arg-type]
    deadline = 0.2 + 0.2 + 3.0  # request + idle timeouts, and slack for a loaded machine

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=3))))
        for _ in range(draw(st.integers(0, 4))):
            i = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
            if op == "flip" and i < len(data):
                data[i] = draw(st.integers(0, 255))
            elif op == "insert":
                data[i:i] = draw(st.sampled_from([b"\r\n", b"\n", b" ", b":", b"\x00", b"0", b"\r\n\r\n",
                                                  b"Content-Length: 9\r\n", b"a" * 9000]))
            elif op == "delete":
                del data[i : i + draw(st.integers(1, 20))]
            elif op == "dup":
                data[i:i] = data[max(0, i - 40) : i]
        return bytes(data)

    @st.composite
    def split(draw: Any) -> tuple[list[bytes], bool]:
        data = draw(st.binary(max_size=400) | mutated())
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        return [p for p in pieces if p], draw(st.sampled_from([True, True, True, False]))

    @hypothesis.settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        database=None,
    )
    @hypothesis.given(split())
    def check(example: tuple[list[bytes], bool]) -> None:
        pieces, half_close = example
        poke(srv.path, pieces, half_close, deadline)
        answer = get(srv.path, "/v1/health")  # a fresh, valid client is still served
        assert answer[0] == 200

    t0 = time.monotonic()
    check()
    # Memory stays bounded: every connection is gone, and nothing runs for it.
    srv.until(lambda: not srv.server._connections and not srv.server._tasks)
    assert srv.server._per_uid == {}
    assert all(s.closes == 1 for s in api.streams)
    assert time.monotonic() - t0 < 60


def test_fuzz_the_fast_path_takes_only_what_h11_takes() -> None:
    """Differential: whatever the fast path answers without h11 (_simple_get), h11 reads as
    exactly one complete GET of the same target with no body. So the fast path never
    accepts a request h11 would refuse, nor reads it differently (request smuggling)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from devicelink.ipc.fastpath import simple_get as _simple_get

    bits = st.sampled_from([b"GET", b" ", b"/v1/token", b"?a=b", b"HTTP/1.1", b"HTTP/1.0", b"\n", b"\r",
                            b"Host", b"host", b":", b"devicelink", b"\t", b"\x00", b"Content-Length", b"0",
                            b"Transfer-Encoding", b"chunked", b"X-A", b"a b", b"\x7f", b"\xc3\xa9", b"/"])
    line = st.lists(bits, max_size=6).map(b"".join)
    request_line = st.sampled_from([b"GET /v1/token HTTP/1.1", b"GET /v1/status?x HTTP/1.1"]) | line
    field = st.tuples(st.sampled_from([b"Host", b"host", b"X-A", b"Content-Length", b"Transfer-Encoding"]) | line,
                      st.sampled_from([b": ", b":", b" : ", b""]), line).map(b"".join)

    @hypothesis.settings(max_examples=3000, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(request_line, st.lists(field, max_size=5))
    def check(first: bytes, fields: list[bytes]) -> None:
        data = b"\r\n".join([first, *fields]) + b"\r\n\r\n"
        target = _simple_get(data)
        if target is None:
            return
        accepted.append(data)
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        event = conn.next_event()
        assert isinstance(event, h11.Request) and event.method == b"GET" and event.target == target
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        assert conn.trailing_data == (b"", False)

    accepted: list[bytes] = []
    check()
    assert len(accepted) >= 10  # the fast path was really exercised, not only refused
