"""The socket API: routes (pure), and the h11 server on a real Unix socket.

The server runs on its own event loop in a thread (:class:`ServerThread`), so
tests can talk to it with blocking sockets, curl and the blocking client, and
can still run coroutines inside its loop when they need to line up events
exactly (shutdown with a request in flight). Only the Api is faked
(:class:`FakeApi`); the server, its sockets and h11 are real. Nothing waits
with ``time.sleep``: the fake signals with events, and socket reads have a
timeout only so a bug fails the test instead of hanging it.

Limits, timeouts, caps, other uids and the fuzz test are in test_abuse.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from devicelink.errors import ConfigError
from devicelink.ipc import routes
from devicelink.ipc.routes import ApiError, Peer, Request, Response, Stream, TokenQuery
from devicelink.ipc.server import SocketInUse, SocketServer, peer_credentials

TIMEOUT = 10.0

# The contract (DESIGN.md, "Socket API"), written out again on purpose so a
# change to routes.STATUS_BY_CODE that breaks it shows up here.
CONTRACT_ERRORS = {
    "not_paired": 503,
    "pairing_in_progress": 503,
    "forbidden": 403,
    "invalid_request": 400,
    "upstream_unavailable": 502,
    "reauth_required": 503,
}

STATUS = {
    "state": "paired",
    "pairing": None,
    "account": {"sub": "u1", "name": "alice@example.com"},
    "access_token_expires_in": 300,
    "last_refresh": "2024-01-01T00:00:00Z",
    "last_error": None,
    "clock_synced": True,
    "version": "0.1.0",
}

METRICS = "# TYPE devicelink_up gauge\ndevicelink_up 1\n"
RETRY = b"retry: 2000\n\n"


class FakeStream:
    """A Stream's iterator - ONLY FOR TESTS. The test feeds it from its own thread
    (``put``, ``end``); it counts the chunks pulled and the calls to ``aclose``,
    which is where a real Api releases its subscription."""

    def __init__(self, *chunks: bytes) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for chunk in chunks:
            self.queue.put_nowait(chunk)
        self.pulls = 0
        self.closes = 0
        self.closed = threading.Event()

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        if self.closes:
            raise StopAsyncIteration
        chunk = await self.queue.get()
        if chunk is None:
            raise StopAsyncIteration
        self.pulls += 1
        return chunk

    async def aclose(self) -> None:
        self.closes += 1
        self.closed.set()


class FloodStream(FakeStream):
    """Always has the next chunk ready: only backpressure can hold it back."""

    def __init__(self, count: int, size: int = 16384) -> None:
        super().__init__()
        self.count = count
        self.size = size

    async def __anext__(self) -> bytes:
        if self.pulls >= self.count or self.closes:
            raise StopAsyncIteration
        self.pulls += 1
        return b"data: %06d %s\n\n" % (self.pulls, b"x" * (self.size - 16))


async def generator_stream(queue: asyncio.Queue[bytes | None], released: threading.Event) -> AsyncIterator[bytes]:
    """The shape a real Api uses: an async generator whose ``finally`` releases."""
    try:
        yield RETRY
        while (chunk := await queue.get()) is not None:
            yield chunk
    finally:
        released.set()


class FakeApi:
    """Fake Api - ONLY FOR TESTS. Answers from its attributes, records every Request.

    status, health and metrics answer at once; token, pair, unpair and step-up
    later (a coroutine, as a refresh would), unless ``sync_token``; events is a
    Stream of a new :class:`FakeStream` (or of what ``stream_factory`` makes).
    ``gate``: when set to an asyncio.Event, the later answers wait for it.
    ``entered`` is set when one starts, so a test thread can wait for that
    without sleeping.
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None  # raised by the later answers
        self.handle_error: BaseException | None = None  # raised by handle() itself
        self.status_error: BaseException | None = None
        self.is_healthy = True
        self.sync_token = False
        self.events_later = False  # answer /v1/events with an awaitable of the Stream
        self.stream_factory: Callable[[], AsyncIterator[bytes]] | None = None
        self.gate: asyncio.Event | None = None
        self.entered = threading.Event()
        self.entered_async = asyncio.Event()
        self.cancelled = threading.Event()
        self.requests: list[Request] = []
        self.streams: list[Any] = []
        self.stream_opened = threading.Event()

    def handle(self, request: Request) -> Response | Stream | Any:
        self.requests.append(request)
        if self.handle_error is not None:
            raise self.handle_error
        handler = request.handler
        if handler == "health":
            return routes.health_response(self.is_healthy)
        if handler == "status":
            if self.status_error is not None:
                raise self.status_error
            return routes.json_response(200, dict(STATUS))
        if handler == "metrics":
            return routes.text_response(200, METRICS)
        if handler == "events":
            chunks = self.stream_factory() if self.stream_factory else FakeStream(RETRY)
            self.streams.append(chunks)
            self.stream_opened.set()
            stream = Stream(routes.SSE_HEADERS, chunks)
            return self._later(lambda: stream) if self.events_later else stream
        if handler == "token":
            query = routes.parse_token_query(request.query)
            if self.sync_token:
                return routes.token_response(self._token(query))
            return self._later(lambda: routes.token_response(self._token(query)))
        if handler == "step_up":
            try:
                asked = json.loads(request.body)
            except ValueError:
                raise ApiError("invalid_request", "the body must be JSON") from None
            return self._later(lambda: routes.json_response(202, {"asked": asked}))
        state = {"pair": "pairing", "unpair": "unpaired"}[handler]
        return self._later(lambda: routes.json_response(202, {"state": state}))

    async def _later(self, answer: Callable[[], Any]) -> Any:
        self.entered.set()
        self.entered_async.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.error is not None:
            raise self.error
        return answer()

    @staticmethod
    def _token(query: TokenQuery) -> dict:
        return {
            "access_token": "at-123",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": query.scope or "openid",
            "refresh_token": "rt-must-never-leave-the-daemon",
        }


class ServerThread:
    """A SocketServer on an event loop of its own, in a daemon thread."""

    def __init__(self, api: FakeApi, path: str | None = None, **kwargs: Any) -> None:
        self.api = api
        self.server = SocketServer(api, path, **kwargs)
        self.path = self.server.path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self.run(self.server.start())
        except BaseException:
            self._shut_loop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self._shut_loop()

    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()``, evaluated on the server's loop, holds."""

        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.002)

        self.run(asyncio.wait_for(poll(), timeout), timeout + 1)

    def _shut_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="dl", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def srv(api: FakeApi, sock_dir: str) -> Iterator[ServerThread]:
    with ServerThread(api, os.path.join(sock_dir, "agent.sock")) as running:
        yield running


# -- raw HTTP helpers -------------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def req(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: devicelink", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_head(f: Any) -> tuple[int, dict[str, str]] | None:
    """A status line and headers from a binary file; None at EOF."""
    line = f.readline()
    if not line:
        return None
    version, status = line.split(b" ", 2)[:2]
    assert version == b"HTTP/1.1", line
    headers: dict[str, str] = {}
    while True:
        raw = f.readline()
        assert raw, "EOF inside the headers"
        if raw == b"\r\n":
            return int(status), headers
        name, _, value = raw.partition(b":")
        headers[name.decode().lower()] = value.strip().decode()


def read_answer(f: Any, head: bool = False) -> Answer | None:
    """One response with a content-length from a binary file; None at EOF."""
    parsed = read_head(f)
    if parsed is None:
        return None
    status, headers = parsed
    length = 0 if head else int(headers.get("content-length", "0"))
    body = f.read(length)
    assert len(body) == length, "EOF inside the body"
    return status, headers, body


def read_chunk(f: Any) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1); b"" for the last chunk."""
    size_line = f.readline()
    assert size_line.endswith(b"\r\n"), size_line
    size = int(size_line.split(b";")[0], 16)
    data = f.read(size)
    assert len(data) == size
    assert f.read(2) == b"\r\n"
    return data


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(path: str, data: bytes, head: bool = False) -> Answer:
    """Send one request on a new connection; return the answer."""
    with connect(path) as sock, sock.makefile("rb") as f:
        sock.sendall(data)
        answer = read_answer(f, head=head)
    assert answer is not None
    return answer


def get(path: str, target: str) -> Answer:
    return exchange(path, req("GET", target))


def body(answer: Answer) -> Any:
    return json.loads(answer[2])


def open_stream(path: str) -> tuple[socket.socket, Any]:
    """GET /v1/events; returns the socket and its file, positioned after the first chunk."""
    sock = connect(path)
    f = sock.makefile("rb")
    sock.sendall(req("GET", "/v1/events"))
    parsed = read_head(f)
    assert parsed is not None and parsed[0] == 200
    assert parsed[1]["transfer-encoding"] == "chunked"
    assert read_chunk(f) == RETRY
    return sock, f


# -- routes.py: pure -------------------------------------------------------


class TestRoutes:
    def test_resolve_known_routes(self) -> None:
        assert routes.resolve(b"GET", b"/v1/token?scope=a") == ("token", b"scope=a")
        assert routes.resolve(b"GET", b"/v1/status") == ("status", b"")
        assert routes.resolve(b"GET", b"/v1/health") == ("health", b"")
        assert routes.resolve(b"POST", b"/v1/pair") == ("pair", b"")
        assert routes.resolve(b"POST", b"/v1/unpair") == ("unpair", b"")
        assert routes.resolve(b"POST", b"/v1/step-up") == ("step_up", b"")
        assert routes.resolve(b"GET", b"/v1/events") == ("events", b"")
        assert routes.resolve(b"GET", b"/metrics") == ("metrics", b"")

    def test_resolve_absolute_form(self) -> None:
        assert routes.resolve(b"GET", b"http://devicelink/v1/status") == ("status", b"")

    def test_resolve_unknown_path_and_method(self) -> None:
        with pytest.raises(ApiError) as err:
            routes.resolve(b"GET", b"/v1/nope")
        assert (err.value.code, err.value.status) == ("not_found", 404)
        with pytest.raises(routes.MethodNotAllowed) as err:
            routes.resolve(b"DELETE", b"/v1/pair")
        assert (err.value.status, err.value.allow) == (405, b"POST")

    @pytest.mark.parametrize(("code", "status"), sorted(CONTRACT_ERRORS.items()))
    def test_error_statuses_follow_the_contract(self, code: str, status: int) -> None:
        err = ApiError(code, "why")
        assert err.status == status
        answer = routes.error_response(err)
        assert answer.status == status
        assert json.loads(answer.body) == {"error": code, "error_description": "why"}

    def test_server_busy_is_503(self) -> None:
        assert routes.STATUS_BY_CODE["server_busy"] == 503

    def test_unknown_error_code_is_a_bug(self) -> None:
        with pytest.raises(ValueError):
            ApiError("teapot", "no")

    def test_token_answer_carries_only_token_fields(self) -> None:
        answer = routes.token_response(
            {"access_token": "a", "token_type": "Bearer", "expires_in": 5, "scope": "s",
             "refresh_token": "r", "id_token": "i"}
        )
        assert json.loads(answer.body) == {
            "access_token": "a", "token_type": "Bearer", "expires_in": 5, "scope": "s"
        }
        assert (b"cache-control", b"no-store") in answer.headers
        assert (b"content-length", str(len(answer.body)).encode()) in answer.headers

    def test_query_defaults(self) -> None:
        assert routes.parse_token_query(b"") == TokenQuery(min_ttl=60)

    def test_query_values(self) -> None:
        query = routes.parse_token_query(
            b"scope=openid+media.read&resource=https%3A%2F%2Fapi.example.com%2Fv1"
            b"&min_ttl=0&min_valid_period=9&future=1"
        )
        assert query == TokenQuery(
            min_ttl=0, scope="openid media.read", resource="https://api.example.com/v1"
        )
        assert routes.parse_token_query(b"min_ttl=86400").min_ttl == 86400

    @pytest.mark.parametrize(
        "raw",
        [
            b"min_ttl=-1", b"min_ttl=abc", b"min_ttl=86401", b"min_ttl=", b"min_ttl=1.5",
            b"min_ttl=+5", b"min_ttl=%EF%BC%95", b"min_ttl=99999999999999999999",
            b"scope=", b"scope=a%20%20b", b"scope=a%22b", b"scope=%C3%A9",
            b"resource=relative/path", b"resource=https%3A%2F%2Fx%2F%23frag", b"resource=",
            b"scope=a&scope=b", b"min_ttl=1&min_ttl=2",
            b"scope=%FF", b"&".join([b"x=1"] * 40),
        ],
    )
    def test_bad_queries(self, raw: bytes) -> None:
        with pytest.raises(ApiError) as err:
            routes.parse_token_query(raw)
        assert err.value.code == "invalid_request"
        assert err.value.status == 400


# -- the server: every kind of answer ---------------------------------------


def test_token(srv: ServerThread, api: FakeApi) -> None:
    status, headers, raw = get(srv.path, "/v1/token?scope=openid%20media.read&min_ttl=120")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    assert json.loads(raw) == {
        "access_token": "at-123", "token_type": "Bearer", "expires_in": 300,
        "scope": "openid media.read",
    }
    assert b"rt-must-never" not in raw
    request = api.requests[0]
    assert (request.handler, request.query, request.body) == (
        "token", b"scope=openid%20media.read&min_ttl=120", b""
    )


def test_request_carries_handler_query_body_and_peer(srv: ServerThread, api: FakeApi) -> None:
    get(srv.path, "http://devicelink/v1/status?x=1")
    exchange(srv.path, req("POST", "/v1/step-up", body=b'{"acr_values": "mfa"}'))
    me = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), groups=tuple(os.getgroups()))
    assert api.requests == [
        Request("status", b"x=1", b"", me),
        Request("step_up", b"", b'{"acr_values": "mfa"}', me),
    ]


def test_sync_answers_need_no_task(srv: ServerThread, api: FakeApi) -> None:
    """The fast path: a Response returned by handle() is written from the read callback."""
    created: list[Any] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/health"))
        assert read_answer(f) is not None  # the connection's own setup task is behind us
        srv.call_soon(srv.loop.set_task_factory, counting_factory)
        api.sync_token = True
        sock.sendall(req("GET", "/v1/token") + req("GET", "/v1/status") + req("GET", "/metrics"))
        assert [read_answer(f)[0] for _ in range(3)] == [200, 200, 200]  # type: ignore[index]
        assert created == []
        api.sync_token = False
        sock.sendall(req("GET", "/v1/token"))
        assert read_answer(f)[0] == 200  # type: ignore[index]
        assert len(created) == 1  # answered later: one task
    srv.call_soon(srv.loop.set_task_factory, None)


def test_bad_token_query_is_400(srv: ServerThread) -> None:
    answer = get(srv.path, "/v1/token?min_ttl=soon")
    assert answer[0] == 400
    assert body(answer)["error"] == "invalid_request"


def test_status(srv: ServerThread) -> None:
    answer = get(srv.path, "/v1/status")
    assert answer[0] == 200
    assert body(answer) == STATUS


def test_metrics_is_text(srv: ServerThread) -> None:
    status, headers, raw = get(srv.path, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert raw.decode() == METRICS


def test_health(srv: ServerThread, api: FakeApi) -> None:
    answer = get(srv.path, "/v1/health")
    assert (answer[0], body(answer)) == (200, {"healthy": True})
    api.is_healthy = False
    answer = get(srv.path, "/v1/health")
    assert (answer[0], body(answer)) == (503, {"healthy": False})


@pytest.mark.parametrize(("route", "state"), [("/v1/pair", "pairing"), ("/v1/unpair", "unpaired")])
def test_pair_and_unpair(srv: ServerThread, api: FakeApi, route: str, state: str) -> None:
    answer = exchange(srv.path, req("POST", route))
    assert answer[0] == 202
    assert body(answer) == {"state": state}
    assert api.requests[0].handler == route.rsplit("/", 1)[1]


def test_step_up_body_reaches_the_api(srv: ServerThread, api: FakeApi) -> None:
    sent = {"acr_values": "urn:example:mfa", "max_age": 300}
    answer = exchange(srv.path, req("POST", "/v1/step-up", body=json.dumps(sent).encode()))
    assert (answer[0], body(answer)) == (202, {"asked": sent})


def test_chunked_body_is_collected(srv: ServerThread, api: FakeApi) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"5\r\n{\"a\":\r\n")
        sock.sendall(b"3\r\n 1}\r\n0\r\n\r\n")
        answer = read_answer(f)
    assert answer is not None and body(answer) == {"asked": {"a": 1}}
    assert api.requests[0].body == b'{"a": 1}'


def test_body_up_to_the_limit_is_passed(srv: ServerThread, api: FakeApi) -> None:
    sent = b'"' + b"x" * (16 * 1024 - 2) + b'"'
    answer = exchange(srv.path, req("POST", "/v1/step-up", body=sent))
    assert answer[0] == 202
    assert api.requests[0].body == sent


def test_bad_body_is_the_apis_400(srv: ServerThread) -> None:
    answer = exchange(srv.path, req("POST", "/v1/step-up", body=b"{not json"))
    assert (answer[0], body(answer)["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(("code", "status"), sorted(CONTRACT_ERRORS.items()))
@pytest.mark.parametrize(("method", "route"), [("GET", "/v1/token"), ("POST", "/v1/pair")])
def test_api_errors_from_the_awaitable(
    srv: ServerThread, api: FakeApi, code: str, status: int, method: str, route: str
) -> None:
    api.error = ApiError(code, f"because {code}")
    answer = exchange(srv.path, req(method, route))
    assert answer[0] == status
    assert body(answer) == {"error": code, "error_description": f"because {code}"}
    assert answer[1]["content-type"] == "application/json"


def test_api_error_from_handle(srv: ServerThread, api: FakeApi) -> None:
    api.handle_error = ApiError("forbidden", "uid 1234 is not listed")
    answer = get(srv.path, "/v1/status")
    assert (answer[0], body(answer)) == (
        403, {"error": "forbidden", "error_description": "uid 1234 is not listed"}
    )


def test_api_crash_is_500_and_logged_without_request_data(
    srv: ServerThread, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="devicelink.ipc.server")
    api.error = RuntimeError("boom")
    answer = get(srv.path, "/v1/token?scope=s3cret-scope")
    assert answer[0] == 500
    assert body(answer)["error"] == "server_error"
    api.status_error = KeyError("state")
    assert get(srv.path, "/v1/status")[0] == 500
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["error answering /v1/token", "error answering /v1/status"]
    assert "s3cret" not in caplog.text
    # ... and the connection-level loop is still fine.
    assert get(srv.path, "/v1/health")[0] == 200


@pytest.mark.parametrize("wrong", [None, 42, {"access_token": "x"}])
def test_api_answering_something_else_is_500(
    srv: ServerThread, api: FakeApi, wrong: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api.handle = lambda request: wrong  # type: ignore[method-assign]
    assert get(srv.path, "/v1/status")[0] == 500

    async def later() -> Any:
        return wrong

    api.handle = lambda request: later()  # type: ignore[method-assign]
    assert get(srv.path, "/v1/status")[0] == 500
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2


def test_unknown_path_is_404_without_asking_the_api(srv: ServerThread, api: FakeApi) -> None:
    answer = get(srv.path, "/v1/nope")
    assert answer[0] == 404
    assert body(answer)["error"] == "not_found"
    assert api.requests == []


def test_wrong_method_is_405_with_allow(srv: ServerThread) -> None:
    answer = exchange(srv.path, req("GET", "/v1/pair"))
    assert answer[0] == 405
    assert answer[1]["allow"] == "POST"
    assert body(answer)["error"] == "method_not_allowed"
    answer = exchange(srv.path, req("POST", "/v1/token"))
    assert (answer[0], answer[1]["allow"]) == (405, "GET")


def test_head_gets_headers_only(srv: ServerThread) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("HEAD", "/v1/status") + req("GET", "/v1/health"))
        head = read_answer(f, head=True)
        after = read_answer(f)
    assert head is not None and head[0] == 405
    assert after is not None and after[0] == 200  # no stray body in between


def test_peer_credentials_reach_the_api(srv: ServerThread, api: FakeApi) -> None:
    get(srv.path, "/v1/token")
    exchange(srv.path, req("POST", "/v1/unpair"))
    me = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), groups=tuple(os.getgroups()))
    assert [r.peer for r in api.requests] == [me, me]


def test_peer_credentials_of_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        peer = peer_credentials(a)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert sorted(peer.groups) == sorted(os.getgroups())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(srv: ServerThread) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--fail", "--unix-socket", srv.path, "http://devicelink/v1/status"],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert json.loads(done.stdout) == STATUS
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
         "--unix-socket", srv.path, "http://devicelink/v1/pair"],
        capture_output=True, timeout=TIMEOUT, check=True,
    )
    assert done.stdout == b"202"


def test_client_library_against_the_server(srv: ServerThread) -> None:
    from devicelink.ipc.client import Client

    with Client(srv.path, timeout=TIMEOUT) as dl:
        assert dl.token()["access_token"] == "at-123"
        assert dl.status() == STATUS
        assert dl.health() is True


# -- the server: HTTP/1.1 framing ------------------------------------------


def test_keep_alive(srv: ServerThread, api: FakeApi) -> None:
    statuses = []
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        for target in ["/v1/status", "/v1/token", "/v1/nope", "/v1/token?min_ttl=5", "/v1/health"]:
            sock.sendall(req("GET", target))
            answer = read_answer(f)
            assert answer is not None and "connection" not in answer[1]
            statuses.append(answer[0])
    assert statuses == [200, 200, 404, 200, 200]
    assert [r.handler for r in api.requests] == ["status", "token", "token", "health"]


def test_pipelined_requests_are_answered_in_order(srv: ServerThread, api: FakeApi) -> None:
    # The token call is held open, so the sync answers behind it must wait.
    api.gate = asyncio.Event()
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(
            req("GET", "/v1/token?scope=first")
            + req("GET", "/v1/status")
            + req("GET", "/v1/nope")
            + req("POST", "/v1/step-up", body=b'{"n": 1}')
            + req("POST", "/v1/pair")
            + req("GET", "/v1/token?scope=last")
        )
        assert api.entered.wait(TIMEOUT)
        srv.call_soon(api.gate.set)
        answers = [read_answer(f) for _ in range(6)]
    assert [a[0] for a in answers if a] == [200, 200, 404, 202, 202, 200]
    assert body(answers[0])["scope"] == "first"  # type: ignore[arg-type]
    assert body(answers[1]) == STATUS  # type: ignore[arg-type]
    assert body(answers[3]) == {"asked": {"n": 1}}  # type: ignore[arg-type]
    assert body(answers[5])["scope"] == "last"  # type: ignore[arg-type]


def test_many_pipelined_requests_with_a_slow_reader(srv: ServerThread) -> None:
    # Enough answers to fill the socket buffer: the server must stop reading
    # (pause_writing) and carry on once we read, without losing the order.
    n = 3000
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall((req("GET", "/v1/status") + req("GET", "/v1/nope")) * (n // 2))
        statuses = [read_answer(f)[0] for _ in range(n)]  # type: ignore[index]
    assert statuses == [200, 404] * (n // 2)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\n\r\n",  # no Host (RFC 9112 §3.2)
        b"GET /v1/status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
    ],
)
def test_malformed_http_is_400_and_closed(srv: ServerThread, garbage: bytes) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(garbage)
        answer = read_answer(f)
        assert answer is not None and answer[0] == 400
        assert answer[1]["connection"] == "close"
        assert body(answer)["error"] == "invalid_request"
        assert f.read() == b""  # closed


def test_truncated_request_then_eof_is_400(srv: ServerThread) -> None:
    with connect(srv.path) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: a\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_expect_100_continue(srv: ServerThread) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(
            b"POST /v1/step-up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\n"
        )
        interim = read_answer(f)
        assert interim is not None and interim[0] == 100
        sock.sendall(b"{}")
        answer = read_answer(f)
        assert answer is not None and answer[0] == 202


def test_half_closed_client_still_gets_its_answer(srv: ServerThread, api: FakeApi) -> None:
    api.gate = asyncio.Event()
    with connect(srv.path) as sock:
        sock.sendall(req("GET", "/v1/token"))
        sock.shutdown(socket.SHUT_WR)
        assert api.entered.wait(TIMEOUT)
        srv.call_soon(api.gate.set)
        answer = read_answer(io.BytesIO(read_all(sock)))
    assert answer is not None and answer[0] == 200


def test_http_10_is_answered_then_closed(srv: ServerThread) -> None:
    with connect(srv.path) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.0\r\n\r\n")
        data = read_all(sock)  # returns: the server closed
    answer = read_answer(io.BytesIO(data))
    assert answer is not None and answer[0] == 200


def test_idle_connection_is_closed_silently(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    with ServerThread(api, path, idle_timeout=0.05) as srv:
        with connect(srv.path) as sock, sock.makefile("rb") as f:
            sock.sendall(req("GET", "/v1/health"))
            assert read_answer(f) is not None
            assert f.read() == b""  # the idle timer closed it, without a word
        with connect(srv.path) as sock:
            assert read_all(sock) == b""  # never sent anything


# -- streams (server-sent events) -------------------------------------------


def test_events_arrive_as_sse_over_chunked_coding(srv: ServerThread, api: FakeApi) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/events"))
        parsed = read_head(f)
        assert parsed is not None
        status, headers = parsed
        assert status == 200
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-store"
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers and "connection" not in headers
        assert read_chunk(f) == RETRY
        stream = api.streams[0]
        event = routes.sse_event("state", {"state": "paired"}, 7)
        srv.call_soon(stream.queue.put_nowait, event)
        assert read_chunk(f) == event == b'id: 7\nevent: state\ndata: {"state":"paired"}\n\n'
        srv.call_soon(stream.queue.put_nowait, b": keep-alive\n\n")
        assert read_chunk(f) == b": keep-alive\n\n"
        srv.call_soon(stream.queue.put_nowait, None)  # the Api ends the stream
        assert read_chunk(f) == b""  # the last chunk
        # ... and the connection carries on.
        sock.sendall(req("GET", "/v1/health"))
        answer = read_answer(f)
        assert answer is not None and answer[0] == 200
    assert stream.closes == 1


def test_a_request_pipelined_behind_a_stream_waits_for_its_end(srv: ServerThread, api: FakeApi) -> None:
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/events") + req("GET", "/v1/status"))
        assert read_head(f) is not None
        assert read_chunk(f) == RETRY
        srv.call_soon(api.streams[0].queue.put_nowait, None)
        assert read_chunk(f) == b""
        answer = read_answer(f)
        assert answer is not None and body(answer) == STATUS


def test_stream_to_an_http_10_client_is_close_delimited(srv: ServerThread, api: FakeApi) -> None:
    with connect(srv.path) as sock:
        sock.sendall(b"GET /v1/events HTTP/1.0\r\n\r\n")
        assert api.stream_opened.wait(TIMEOUT)
        srv.call_soon(api.streams[0].queue.put_nowait, b"data: {}\n\n")
        srv.call_soon(api.streams[0].queue.put_nowait, None)
        data = read_all(sock)  # to EOF: the end of the body is the close (RFC 9112 §6.3)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert rest == RETRY + b"data: {}\n\n"


def test_stream_from_an_awaitable(srv: ServerThread, api: FakeApi) -> None:
    api.events_later = True
    sock, f = open_stream(srv.path)
    with sock, f:
        srv.call_soon(api.streams[0].queue.put_nowait, None)
        assert read_chunk(f) == b""
    assert api.streams[0].closed.wait(TIMEOUT)


def test_client_that_leaves_closes_the_iterator(srv: ServerThread, api: FakeApi) -> None:
    sock, f = open_stream(srv.path)
    f.close()
    sock.close()  # while the stream waits for its next chunk
    assert api.streams[0].closed.wait(TIMEOUT)
    assert api.streams[0].closes == 1
    srv.until(lambda: not srv.server._connections and not srv.server._tasks)


def test_client_that_leaves_runs_the_generators_finally(srv: ServerThread, api: FakeApi) -> None:
    released = threading.Event()
    queues: list[asyncio.Queue[bytes | None]] = []

    def factory() -> AsyncIterator[bytes]:
        queues.append(asyncio.Queue())
        return generator_stream(queues[-1], released)

    api.stream_factory = factory
    sock, f = open_stream(srv.path)
    srv.call_soon(queues[0].put_nowait, b"data: 1\n\n")
    assert read_chunk(f) == b"data: 1\n\n"
    f.close()
    sock.close()
    assert released.wait(TIMEOUT)
    srv.until(lambda: not srv.server._tasks)


def test_client_that_leaves_before_the_first_chunk(srv: ServerThread, api: FakeApi) -> None:
    # Request and EOF in one read: the stream is over before its task runs.
    api.stream_factory = FakeStream  # no first chunk
    with connect(srv.path) as sock:
        sock.sendall(req("GET", "/v1/events"))
        sock.shutdown(socket.SHUT_WR)
        read_all(sock)
    assert api.stream_opened.wait(TIMEOUT)
    assert api.streams[0].closed.wait(TIMEOUT)
    srv.until(lambda: not srv.server._connections and not srv.server._tasks)
    assert api.streams[0].closes == 1


def test_slow_reader_holds_the_stream_back(srv: ServerThread, api: FakeApi) -> None:
    """Backpressure: while the client doesn't read, no more chunks are pulled."""
    count, size = 500, 16384  # 8 MB, if nothing held it back
    flood = FloodStream(count, size)
    api.stream_factory = lambda: flood
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/events"))
        assert read_head(f) is not None
        srv.until(lambda: any(c._writable is not None for c in srv.server._connections))
        (conn,) = srv.server._connections
        pulled = flood.pulls
        buffered = conn._transport.get_write_buffer_size()
        assert pulled < 100, pulled  # socket buffers plus asyncio's 64 KiB high-water mark
        assert buffered <= 64 * 1024 + size + 64, buffered
        seen = 0
        while chunk := read_chunk(f):
            seen += 1
            assert chunk.startswith(b"data: %06d " % seen)
        assert seen == count
        sock.sendall(req("GET", "/v1/health"))  # keep-alive after the stream's end
        assert read_answer(f)[0] == 200  # type: ignore[index]
    assert flood.closes == 1


def test_slow_reader_that_leaves_closes_the_iterator(srv: ServerThread, api: FakeApi) -> None:
    flood = FloodStream(10_000)
    api.stream_factory = lambda: flood
    with connect(srv.path) as sock:
        sock.sendall(req("GET", "/v1/events"))
        srv.until(lambda: any(c._writable is not None for c in srv.server._connections))
    assert flood.closed.wait(TIMEOUT)
    srv.until(lambda: not srv.server._connections and not srv.server._tasks)


def test_stream_is_exempt_from_the_idle_timeout(api: FakeApi, sock_dir: str) -> None:
    with ServerThread(api, os.path.join(sock_dir, "a.sock"), idle_timeout=0.05) as srv:
        sock, f = open_stream(srv.path)
        with sock, f, connect(srv.path) as idle:
            assert read_all(idle) == b""  # the idle timeout has passed ...
            srv.call_soon(api.streams[0].queue.put_nowait, b"data: still here\n\n")
            assert read_chunk(f) == b"data: still here\n\n"  # ... and the stream is open


def test_broken_iterator_cuts_the_stream_short(
    srv: ServerThread, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeStream):
        async def __anext__(self) -> bytes:
            if self.pulls:
                raise RuntimeError("boom")
            self.pulls += 1
            return RETRY

    api.stream_factory = Broken
    sock, f = open_stream(srv.path)
    with sock, f:
        assert f.read() == b""  # closed without the last chunk: the client knows it was cut
    assert api.streams[0].closes == 1
    assert "error in the stream of /v1/events" in caplog.text


def test_stream_chunk_must_be_bytes(srv: ServerThread, api: FakeApi) -> None:
    api.stream_factory = lambda: FakeStream(RETRY, "text")  # type: ignore[arg-type]
    sock, f = open_stream(srv.path)
    with sock, f:
        assert f.read() == b""
    assert api.streams[0].closes == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_follows_events(srv: ServerThread, api: FakeApi) -> None:
    curl = subprocess.Popen(
        ["curl", "-sSN", "--unix-socket", srv.path, "http://devicelink/v1/events"],
        stdout=subprocess.PIPE,
    )
    try:
        assert api.stream_opened.wait(TIMEOUT)
        srv.call_soon(api.streams[0].queue.put_nowait, routes.sse_event("state", {"state": "paired"}))
        assert curl.stdout is not None
        lines = [curl.stdout.readline() for _ in range(4)]
        assert lines == [b"retry: 2000\n", b"\n", b"event: state\n", b'data: {"state":"paired"}\n']
    finally:
        curl.terminate()
        curl.wait(TIMEOUT)
    assert api.streams[0].closed.wait(TIMEOUT)


# -- the socket file --------------------------------------------------------


def test_socket_file_mode(srv: ServerThread) -> None:
    st = os.lstat(srv.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_socket_file_custom_mode_and_umask_restored(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    old = os.umask(0o022)
    try:
        with ServerThread(api, path, mode=0o600):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)


def test_missing_parent_directory_is_created_0700(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "run", "a.sock")
    with ServerThread(api, path):
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert get(path, "/v1/health")[0] == 200


def test_stale_socket_is_replaced(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listened, closed: what a crash leaves
    os.chmod(path, 0o604)  # a mark (the inode number may well be reused)
    with ServerThread(api, path):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        assert get(path, "/v1/health")[0] == 200


def test_regular_file_is_refused_and_kept(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    with open(path, "w") as f:
        f.write("important")
    with pytest.raises(ConfigError, match="not a socket"):
        with ServerThread(api, path):
            pass
    with open(path) as f:
        assert f.read() == "important"


def test_live_socket_is_refused(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        with pytest.raises(SocketInUse, match="already listening"):
            with ServerThread(api, path):
                pass
        assert os.path.exists(path)


def test_path_or_sock_required(api: FakeApi) -> None:
    with pytest.raises(ValueError):
        SocketServer(api)


def test_serves_a_socket_it_is_given(api: FakeApi, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "activated.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)  # what systemd would pass in
    with ServerThread(api, sock=sock) as srv:
        assert srv.path == path
        assert srv.server.is_serving
        assert get(path, "/v1/health")[0] == 200
    assert not srv.server.is_serving
    assert os.path.exists(path)  # not ours to remove
    assert sock.fileno() == -1  # closed


# -- shutdown ---------------------------------------------------------------


def test_stop_unlinks_and_finishes_the_request_in_flight(srv: ServerThread, api: FakeApi) -> None:
    api.gate = asyncio.Event()

    async def scenario() -> bytes:
        reader, writer = await asyncio.open_unix_connection(srv.path)
        idle_reader, idle_writer = await asyncio.open_unix_connection(srv.path)
        writer.write(req("GET", "/v1/token"))
        await api.entered_async.wait()
        stopping = asyncio.ensure_future(srv.server.stop())
        await asyncio.sleep(0)  # one turn of the loop: stop() runs up to its first wait
        assert not os.path.exists(srv.path)
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await asyncio.open_unix_connection(srv.path)
        assert await idle_reader.read() == b""  # the idle connection is closed at once
        assert not stopping.done()  # ... but the request in flight is awaited
        api.gate.set()
        answer = await reader.read()  # to EOF
        await stopping
        writer.close()
        idle_writer.close()
        return answer

    answer = srv.run(scenario())
    parsed = read_answer(io.BytesIO(answer))
    assert parsed is not None and parsed[0] == 200
    assert parsed[1]["connection"] == "close"
    assert not api.cancelled.is_set()


def test_stop_cancels_what_outlives_the_timeout(srv: ServerThread, api: FakeApi) -> None:
    api.gate = asyncio.Event()  # never set
    with connect(srv.path) as sock:
        sock.sendall(req("GET", "/v1/token"))
        assert api.entered.wait(TIMEOUT)
        srv.run(srv.server.stop(timeout=0.05))
        assert api.cancelled.is_set()
        assert read_all(sock) == b""  # aborted, no answer
    assert not os.path.exists(srv.path)


def test_stop_ends_streams_at_once(srv: ServerThread, api: FakeApi) -> None:
    """Streams are not requests in flight: stop() ends them (last chunk, close) without waiting."""
    assert srv.server.shutdown_timeout == 5.0
    streams = [open_stream(srv.path) for _ in range(3)]
    t0 = time.monotonic()
    srv.run(srv.server.stop())
    elapsed = time.monotonic() - t0
    for sock, f in streams:
        with sock, f:
            assert read_chunk(f) == b""  # ended cleanly ...
            assert f.read() == b""  # ... and closed
    assert elapsed < 2.5, elapsed  # far below the 5 s shutdown_timeout
    assert [s.closes for s in api.streams] == [1, 1, 1]
    assert not srv.server._tasks and not srv.server._connections


def test_stop_ends_a_stream_whose_client_does_not_read(srv: ServerThread, api: FakeApi) -> None:
    flood = FloodStream(10_000)
    api.stream_factory = lambda: flood
    with connect(srv.path) as sock:
        sock.sendall(req("GET", "/v1/events"))
        srv.until(lambda: any(c._writable is not None for c in srv.server._connections))
        t0 = time.monotonic()
        srv.run(srv.server.stop())
        assert time.monotonic() - t0 < 2.5
    assert flood.closes == 1


# -- the fast path: one simple GET alone in a read is answered without h11 ----------


class TestSimpleGet:
    """What _simple_get takes (the fast path) and what it leaves to h11."""

    @pytest.mark.parametrize("data", [
        b"GET /v1/token HTTP/1.1\r\nHost: devicelink\r\n\r\n",
        b"GET /v1/token?min_ttl=5&scope=a%20b HTTP/1.1\r\nhost:x\r\nAccept: */*\r\nUser-Agent: curl/8\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHOST:  devicelink \r\nX-Odd: a\tb\r\n\r\n",
    ])
    def test_simple(self, data: bytes) -> None:
        from devicelink.ipc.fastpath import simple_get as _simple_get

        assert _simple_get(data) == data.split(b" ")[1]

    @pytest.mark.parametrize("data", [
        b"GET /v1/token HTTP/1.0\r\nHost: x\r\n\r\n",  # HTTP/1.0: close-delimited rules
        b"HEAD /v1/token HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/pair HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://devicelink/v1/token HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute-form
        b"GET /v1/token HTTP/1.1\r\n\r\n",  # no Host: h11 answers 400
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",  # obs-fold
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
        b"GET /v1/token HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/token HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
        b"GET /v1/token HTTP/1.1\r\nHost: x\r\n",  # incomplete
        b"GET /v1/t\xffoken HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    ])
    def test_left_to_h11(self, data: bytes) -> None:
        from devicelink.ipc.fastpath import simple_get as _simple_get

        assert _simple_get(data) is None


def test_fast_and_h11_paths_answer_alike(srv: ServerThread, api: FakeApi) -> None:
    """The same request over the fast path and (with a header that sends it to h11) the
    slow one: the same status, headers and body, byte for byte apart from connection."""
    fast = exchange(srv.path, req("GET", "/v1/status"))
    slow = exchange(srv.path, req("GET", "/v1/status", "Connection: keep-alive"))
    assert fast == slow
    fast_token = exchange(srv.path, req("GET", "/v1/token?scope=x"))  # answered later, in a task
    assert fast_token[0] == 200 and body(fast_token)["scope"] == "x"
    assert "refresh_token" not in body(fast_token)


def test_fast_path_waits_for_a_later_answer_before_reading_on(srv: ServerThread, api: FakeApi) -> None:
    """A token answered later, and the client's next request arriving meanwhile: the answers
    come in order (the fast path stops reading while its answer is pending)."""
    srv.run(_gate(api))
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/token?scope=first"))
        assert api.entered.wait(TIMEOUT)
        sock.sendall(req("GET", "/v1/token?scope=second") + req("GET", "/v1/health"))
        srv.call_soon(api.gate.set)
        assert body(read_answer(f))["scope"] == "first"
        assert body(read_answer(f))["scope"] == "second"
        assert read_answer(f)[0] == 200


async def _gate(api: FakeApi) -> None:
    api.gate = asyncio.Event()


def test_fast_path_after_shutdown_began_closes(srv: ServerThread, api: FakeApi) -> None:
    srv.run(_gate(api))
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/token"))
        assert api.entered.wait(TIMEOUT)
        stopping = threading.Thread(target=lambda: srv.run(srv.server.stop(timeout=TIMEOUT)))
        stopping.start()
        srv.until(lambda: not srv.server.is_serving)
        srv.call_soon(api.gate.set)
        status, headers, _ = read_answer(f)
        assert status == 200 and headers["connection"] == "close"
        assert f.read() == b""
        stopping.join(TIMEOUT)


def test_fast_path_answer_the_socket_cannot_take_goes_to_a_transport(srv: ServerThread, api: FakeApi) -> None:
    """Simple GETs, one per read, from a client that reads none of the answers: once the
    socket's buffer is full, the rest is buffered by an asyncio transport (with flow
    control) and every answer arrives, in order, when the client reads."""
    api.sync_token = True
    count = 40
    with connect(srv.path) as sock, sock.makefile("rb") as f:
        sock.sendall(req("GET", "/v1/token?scope=s0"))
        assert read_answer(f)[0] == 200  # type: ignore[index]
        (conn,) = srv.server._connections

        async def small_send_buffer() -> None:  # a few answers fill it (the kernel's minimum)
            conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)

        srv.run(small_send_buffer())
        for i in range(1, count):
            sock.sendall(req("GET", f"/v1/token?scope=s{i}"))
            srv.until(lambda: len(api.requests) == i + 1)  # each request in a read of its own
        (moved,) = srv.server._connections
        assert moved is not conn and moved._transport is not None
        assert [body(read_answer(f))["scope"] for _ in range(1, count)] == [f"s{i}" for i in range(1, count)]
