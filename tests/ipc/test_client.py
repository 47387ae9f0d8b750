"""The client library (devicelink.client), sync and async.

Three layers, all real: the event-stream parser fed bytes by hand; both
clients against a tiny scripted HTTP/1.1 server on a real Unix socket
(:class:`CannedDaemon`: chunked server-sent events, keep-alives, a connection
that drops, a step-up answer); and both clients against the real daemon
process paired with the development authorization server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicelink import client as client_module
from devicelink.client import (
    AsyncClient, Client, DaemonError, DaemonUnreachable, Event, StepUp, Token, default_socket_path,
)
from devicelink.ipc import wire
from devicelink.ipc.client import MAX_EVENT_BYTES, SseParser
from tests.conftest import write_config

# -- the event-stream parser ------------------------------------------------------------

STREAM = (
    b"\xef\xbb\xbf: hello, a comment\n"
    b"retry: 1000\n"
    b"id: 1\n"
    b"event: state\n"
    b"data: {\"state\": \"pairing\"}\n"
    b"\n"
    b": keep-alive\n"
    b"\n"  # a blank line with nothing buffered: no event
    b"event: token_rotated\r\n"
    b"data: {\"expires_in\":\r\n"  # data over two lines, joined with a newline
    b"data:  3600}\r\n"
    b"\r\n"
    b"id: 7\r"  # CR-only line ends
    b"event: state\r"
    b"data:{\"state\":\"paired\"}\r"
    b"\r"
    b"event: nodata\n"
    b"\n"  # an event without data: ignored
    b"data: not json\n"
    b"\n"  # data that is not a JSON object: ignored
    b"data: [1, 2]\n"
    b"\n"
    b"data: {\"default\": \"name\"}\n"
    b"unknown: field\n"
    b"\n"
    b"event: state\n"
    b"data: {\"state\": \"unfinished\"}\n"  # no blank line: never dispatched
)

EXPECTED = [
    Event("state", {"state": "pairing"}, "1"),
    Event("token_rotated", {"expires_in": 3600}, "1"),  # the id stays until the next id:
    Event("state", {"state": "paired"}, "7"),
    Event("message", {"default": "name"}, "7"),
]


def parse(chunks: list[bytes]) -> list[Event]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_parser_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


def test_parser_any_chunking() -> None:
    # Split at every position (and byte by byte): CRLF split across chunks, the BOM too.
    for cut in range(len(STREAM) + 1):
        assert parse([STREAM[:cut], b"", STREAM[cut:]]) == EXPECTED, cut
    assert parse([STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_parser_cr_at_chunk_end_dispatches_at_once() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"a": 1}\r\r') == [Event("message", {"a": 1}, None)]
    assert parser.feed(b'\ndata: {"b": 2}\n\n') == [Event("message", {"b": 2}, None)]


def test_parser_id_rules() -> None:
    parser = SseParser()
    events = parser.feed(b'id: a\0b\ndata: {}\n\nid\ndata: {}\n\nid: x\ndata: {}\n\n')
    assert [e.id for e in events] == [None, None, "x"]  # NUL ignored; a bare "id" resets


def test_parser_refuses_a_huge_event() -> None:
    parser = SseParser()
    with pytest.raises(DaemonError) as err:
        for _ in range(MAX_EVENT_BYTES // 1000 + 2):
            parser.feed(b"data: " + b"x" * 1000 + b"\n")
    assert err.value.code == "invalid_response"


# -- a scripted daemon on a real Unix socket ------------------------------------------------

Handler = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


class Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body
        self.path = target.partition("?")[0]


class CannedDaemon:
    """An HTTP/1.1 server on a Unix socket in a thread of its own, answering each
    request from ``routes`` (path -> async handler). Every answer closes its
    connection. Only for tests: it trusts what it reads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.routes: dict[str, Handler] = {}
        self.seen: list[Request] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> CannedDaemon:
        self._thread.start()
        self._server = self.call(asyncio.start_unix_server(self._serve, self.path))
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            request = Request(method, target, headers, body)
            self.seen.append(request)
            await self.routes[request.path](request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()


async def answer(writer: asyncio.StreamWriter, status: int, obj: object) -> None:
    body = json.dumps(obj).encode()
    writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                 b"connection: close\r\n\r\n%s" % (status, len(body), body))
    await writer.drain()


async def stream_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                 b"connection: close\r\n\r\n")
    await writer.drain()


async def chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


def replay(pieces: list[bytes | float], clean_end: bool = False) -> Handler:
    """An events handler sending ``pieces`` as chunks (a float: pause that long), then
    either the last chunk (``clean_end``) or an abrupt close mid-body."""
    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        await stream_head(writer)
        for piece in pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                await chunk(writer, piece)
        if clean_end:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    return handler


@pytest.fixture
def canned(short_tmp: Path):
    with CannedDaemon(str(short_tmp / "canned.sock")) as srv:
        yield srv


# Cut mid-line, mid-CRLF and mid-UTF-8 on purpose.
PIECES = [b"id: 1\nevent: state\ndata: {\"state\":", b" \"pairing\"}\n\n: keep-alive\n\nevent: token_rot",
          b"ated\r", b"\ndata: {\"name\": \"Zo\xc3", b"\xab\"}\r\n\r\n"]
CANNED_EVENTS = [Event("state", {"state": "pairing"}, "1"), Event("token_rotated", {"name": "Zoë"}, "1")]


def test_sync_events_then_the_connection_drops(canned: CannedDaemon) -> None:
    canned.routes["/v1/events"] = replay(PIECES)
    seen = []
    with Client(canned.path) as dl, pytest.raises(DaemonUnreachable, match="event stream .* ended"):
        for event in dl.events():
            seen.append(event)
    assert seen == CANNED_EVENTS
    assert canned.seen[0].headers["accept"] == "text/event-stream"


def test_async_events_then_the_connection_drops(canned: CannedDaemon) -> None:
    canned.routes["/v1/events"] = replay(PIECES)

    async def main() -> list[Event]:
        seen = []
        async with AsyncClient(canned.path) as dl:
            with pytest.raises(DaemonUnreachable, match="event stream .* ended"):
                async for event in dl.events():
                    seen.append(event)
        return seen

    assert asyncio.run(main()) == CANNED_EVENTS


def test_a_clean_end_of_stream_is_also_unreachable(canned: CannedDaemon) -> None:
    canned.routes["/v1/events"] = replay(PIECES, clean_end=True)
    with Client(canned.path) as dl, pytest.raises(DaemonUnreachable):
        assert list(dl.events()) == CANNED_EVENTS


def test_events_never_time_out_between_events(canned: CannedDaemon) -> None:
    # The client's timeout is 0.2 s; events come 0.6 s apart, with no keep-alive.
    canned.routes["/v1/events"] = replay([0.6, b'data: {"n": 1}\n\n', 0.6, b'data: {"n": 2}\n\n', 60.0])

    with Client(canned.path, timeout=0.2) as dl:
        with contextlib.closing(dl.events()) as events:
            assert [next(events).data, next(events).data] == [{"n": 1}, {"n": 2}]

    async def main() -> list[dict]:
        async with AsyncClient(canned.path, timeout=0.2) as dl:
            async with contextlib.aclosing(dl.events()) as events:
                return [(await anext(events)).data, (await anext(events)).data]

    assert asyncio.run(main()) == [{"n": 1}, {"n": 2}]


def test_events_refused(canned: CannedDaemon) -> None:
    async def forbidden(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, 403, {"error": "forbidden", "error_description": "not for you"})

    canned.routes["/v1/events"] = forbidden
    with Client(canned.path) as dl, pytest.raises(DaemonError) as err:
        next(dl.events())
    assert (err.value.code, err.value.status, err.value.description) == ("forbidden", 403, "not for you")

    async def main() -> None:
        async with AsyncClient(canned.path) as dl:
            await anext(dl.events())

    with pytest.raises(DaemonError, match="forbidden"):
        asyncio.run(main())


def pairing_script(canned: CannedDaemon, already: bool = False) -> None:
    """/v1/status says pairing until the events stream has sent "paired"; the stream
    sends it only once status was asked, so a client that read the status before
    subscribing would wait forever."""
    asked = asyncio.Event()
    sent = []

    async def status(request: Request, writer: asyncio.StreamWriter) -> None:
        asked.set()
        await answer(writer, 200, {"state": "paired" if (sent or already) else "pairing",
                                   "account": {"sub": "alice", "name": "Alice"}})

    async def events(request: Request, writer: asyncio.StreamWriter) -> None:
        await stream_head(writer)
        await chunk(writer, b": keep-alive\n\n")
        await asked.wait()
        await chunk(writer, b'event: state\ndata: {"state": "refreshing"}\n\n')  # not a fresh pairing...
        sent.append(True)
        await chunk(writer, b'event: state\ndata: {"state": "paired"}\n\n')
        await asyncio.sleep(60)

    canned.routes.update({"/v1/status": status, "/v1/events": events})


def test_wait_until_paired_subscribes_first(canned: CannedDaemon) -> None:
    pairing_script(canned)
    with Client(canned.path) as dl:
        assert dl.wait_until_paired(timeout=10)["state"] == "paired"
    assert [r.path for r in canned.seen] == ["/v1/events", "/v1/status", "/v1/status"]


def test_async_wait_until_paired(canned: CannedDaemon) -> None:
    pairing_script(canned)

    async def main() -> dict:
        async with AsyncClient(canned.path) as dl:
            return await dl.wait_until_paired(timeout=10)

    assert asyncio.run(main())["account"]["name"] == "Alice"
    assert [r.path for r in canned.seen] == ["/v1/events", "/v1/status", "/v1/status"]


def test_wait_until_paired_when_already_paired(canned: CannedDaemon) -> None:
    pairing_script(canned, already=True)
    with Client(canned.path) as dl:
        assert dl.wait_until_paired()["state"] == "paired"
    assert [r.path for r in canned.seen] == ["/v1/events", "/v1/status"]


def test_wait_until_paired_times_out(canned: CannedDaemon) -> None:
    async def status(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, 200, {"state": "pairing"})

    async def keep_alives(request: Request, writer: asyncio.StreamWriter) -> None:
        await stream_head(writer)
        while True:
            await chunk(writer, b": keep-alive\n\n")
            await asyncio.sleep(0.05)

    async def silence(request: Request, writer: asyncio.StreamWriter) -> None:
        await stream_head(writer)
        await asyncio.sleep(60)

    for events in (keep_alives, silence):
        canned.routes.update({"/v1/status": status, "/v1/events": events})
        with Client(canned.path) as dl:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="not paired within 0.3 s|no event"):
                dl.wait_until_paired(timeout=0.3)
            assert time.monotonic() - started < 2

        async def main() -> None:
            async with AsyncClient(canned.path) as dl:
                await dl.wait_until_paired(timeout=0.3)

        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not paired within 0.3 s"):
            asyncio.run(main())
        assert time.monotonic() - started < 2


def test_step_up(canned: CannedDaemon) -> None:
    answers = [(202, {"state": "step_up", "verification_uri": "https://id.example.com/device"}),
               (200, {"access_token": "strong", "token_type": "Bearer", "expires_in": 300, "scope": "pay"})]

    async def step_up(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, *answers.pop(0))

    canned.routes["/v1/step-up"] = step_up
    with Client(canned.path) as dl:
        pending = dl.step_up(acr_values=["phr", "phrh"], max_age=300, min_ttl=120)
        assert pending.status == 202 and not pending.done
        assert pending.data["verification_uri"] == "https://id.example.com/device"

    async def main() -> StepUp:
        async with AsyncClient(canned.path) as dl:
            return await dl.step_up("phr")

    done = asyncio.run(main())
    assert done.done and isinstance(done.data, Token) and done.data.access_token == "strong"
    assert [json.loads(r.body) for r in canned.seen] == [{"acr_values": "phr phrh", "max_age": 300, "min_ttl": 120},
                                                         {"acr_values": "phr"}]
    assert all(r.method == "POST" and r.headers["content-type"] == "application/json" for r in canned.seen)


def test_dpop_proof(canned: CannedDaemon) -> None:
    answers = [(200, {"proof": "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.c2ln"}),
               (403, {"error": "forbidden", "error_description": "not one devicelink handed to 'x'"}),
               (200, {"proof": "p2"}), (200, {"prove": "nothing"})]

    async def proof(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, *answers.pop(0))

    canned.routes["/v1/dpop-proof"] = proof
    with Client(canned.path) as dl:
        assert dl.dpop_proof("GET", "https://api.example.com/x", access_token="at-1", nonce="n-1").startswith("eyJ")
        with pytest.raises(DaemonError) as err:
            dl.dpop_proof("GET", "https://api.example.com/x", access_token="at-2")
        assert (err.value.code, err.value.status) == ("forbidden", 403)

    async def main() -> str:
        async with AsyncClient(canned.path) as dl:
            return await dl.dpop_proof("POST", "https://id.example.com/token")

    assert asyncio.run(main()) == "p2"
    with Client(canned.path) as dl, pytest.raises(DaemonError, match="no proof"):
        dl.dpop_proof("GET", "https://api.example.com/x")
    assert [json.loads(r.body) for r in canned.seen] == [
        {"htm": "GET", "htu": "https://api.example.com/x", "access_token": "at-1", "nonce": "n-1"},
        {"htm": "GET", "htu": "https://api.example.com/x", "access_token": "at-2"},
        {"htm": "POST", "htu": "https://id.example.com/token"},
        {"htm": "GET", "htu": "https://api.example.com/x"}]
    assert all(r.method == "POST" and r.path == "/v1/dpop-proof" for r in canned.seen)


def test_a_device_token_is_asked_for_with_identity_device(canned: CannedDaemon) -> None:
    async def token(request: Request, writer: asyncio.StreamWriter) -> None:
        await answer(writer, 200, {"access_token": "device-at", "token_type": "Bearer", "expires_in": 900,
                                   "scope": "telemetry.write"})

    canned.routes["/v1/token"] = token
    with Client(canned.path) as dl:
        assert dl.token(identity="device", scope="telemetry.write").access_token == "device-at"
        assert dl.token().scope == "telemetry.write"

    async def main() -> Token:
        async with AsyncClient(canned.path) as dl:
            return await dl.token(identity="device", min_ttl=120)

    assert asyncio.run(main()).expires_in == 900
    assert [r.target for r in canned.seen] == ["/v1/token?identity=device&scope=telemetry.write", "/v1/token",
                                               "/v1/token?identity=device&min_ttl=120"]
    from devicelink.ipc import fastpath  # every one of them stays on the daemon's fast path

    for r in canned.seen:
        assert fastpath.simple_request(wire.request("GET", r.target))[1] == "token"


def test_an_error_without_an_error_object(canned: CannedDaemon) -> None:
    async def broken(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 X\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops")
        await writer.drain()

    canned.routes["/v1/status"] = broken
    with Client(canned.path) as dl, pytest.raises(DaemonError) as err:
        dl.status()
    assert (err.value.code, err.value.status) == ("invalid_response", 500)


# -- a hostile daemon: the strict reader against real sockets ---------------------------------


class RawDaemon:
    """A Unix-socket server, one thread per connection, that reads each request's head
    (and body) and answers with the next of ``answers``: bytes sent as they are, then
    what happens to the connection: ``keep`` (read the next request), ``close``,
    ``reset`` (closed with the request unread, which a Unix socket reports to the
    client as ECONNRESET) or ``hold`` (silent until the test ends).
    Only for tests: it sends whatever it is told, as a broken daemon might."""

    def __init__(self, path: str, *answers: tuple[bytes, str]) -> None:
        self.path = path
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def __enter__(self) -> RawDaemon:
        self._listener.bind(self.path)
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while self.answers:
                if self.answers[0][1] == "reset":
                    conn.recv(1)
                    conn.sendall(self.answers.pop(0)[0])
                    return
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head)
                while length and len(buf) < int(length[1]):
                    buf += conn.recv(65536)
                buf = buf[int(length[1]) if length else 0:]
                self.requests.append(head)
                data, then = self.answers.pop(0)
                conn.sendall(data)
                if then == "hold":
                    self._stop.wait()
                if then != "keep":
                    return


OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
STATUS_BODY = b'{"state": "paired"}'
GOOD = OK_HEAD + b"content-length: %d\r\n\r\n%s" % (len(STATUS_BODY), STATUS_BODY)


def ask_sync(path: str, timeout: float = 5.0) -> object:
    with Client(path, timeout=timeout) as dl:
        return dl.status()


def ask_async(path: str, timeout: float = 5.0) -> object:
    async def main() -> object:
        async with AsyncClient(path, timeout=timeout) as dl:
            return await dl.status()

    return asyncio.run(main())


HOSTILE = {
    "not http": (b"SSH-2.0-OpenSSH_9.2", "hold", "not an HTTP answer"),
    "not http, a line": (b"SSH-2.0-OpenSSH_9.2\r\n", "hold", "malformed status line"),
    "garbled status line": (b"HTTP/1.1 2000 OK\r\n\r\n", "close", "malformed status line"),
    "HTTP/2 status line": (b"HTTP/2 200\r\n\r\n", "hold", "malformed status line"),
    "bare LF": (b"HTTP/1.1 200 OK\ncontent-length: 2\n\n{}", "hold", "does not end in CRLF"),
    "folded field": (OK_HEAD + b"x-a: b\r\n c\r\ncontent-length: 2\r\n\r\n{}", "close", "malformed header field"),
    "control character": (OK_HEAD + b"x-a: b\x01c\r\ncontent-length: 2\r\n\r\n{}", "close", "control characters"),
    "oversize head": (OK_HEAD + b"x-pad: " + b"a" * (wire.MAX_HEAD + 10), "hold", "head is over 65536 bytes"),
    "too many fields": (OK_HEAD + b"x-a: b\r\n" * 100 + b"content-length: 2\r\n\r\n{}", "close",
                        "more than 100 header fields"),
    "oversize body": (OK_HEAD + b"content-length: 2000000\r\n\r\n{", "hold", "over 1048576 bytes"),
    "oversize chunk": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\nfffff0\r\n{", "hold", "over 1048576 bytes"),
    "oversize close-delimited body": (OK_HEAD + b"\r\n" + b" " * (wire.MAX_BODY + 1), "hold", "over 1048576 bytes"),
    "truncated body": (OK_HEAD + b"content-length: 10\r\n\r\n{\"a\"", "close", "closed 6 bytes before the end"),
    "truncated head": (OK_HEAD + b"content-le", "close", "in the middle of the answer's head"),
    "truncated chunk": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\n{\"", "close", "closed 3 bytes before"),
    "no last chunk": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n", "close", "before a chunk size"),
    "bad chunk size": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\nzz\r\n", "hold", "malformed chunk size line"),
    "chunk longer than its size": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", "hold",
                                   "chunk longer than its size"),
    "both framings": (OK_HEAD + b"transfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n", "hold",
                      "both transfer-encoding and content-length"),
    "gzip": (OK_HEAD + b"transfer-encoding: gzip, chunked\r\n\r\n", "hold", "unsupported transfer-encoding"),
    "conflicting lengths": (OK_HEAD + b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}", "hold",
                            "malformed content-length"),
    "a length in other digits": (OK_HEAD + b"content-length: \xb2\r\n\r\n{}", "hold", "malformed content-length"),
    "bad trailer": (OK_HEAD + b"transfer-encoding: chunked\r\n\r\n0\r\nx y: 1\r\n\r\n", "hold",
                    "malformed header field"),
    "switching protocols": (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n", "hold",
                            "unexpected interim answer 101"),
    "no answer": (b"", "close", "closed the connection without answering"),
    "reset": (b"", "reset", "closed the connection mid-request"),
    "reset mid-answer": (OK_HEAD + b"content-length: 10\r\n\r\n{", "reset", "closed the connection mid-request"),
}


@pytest.mark.parametrize("ask", [ask_sync, ask_async], ids=["sync", "async"])
@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_answer_is_one_clear_line(short_tmp: Path, case: str, ask) -> None:
    data, then, why = HOSTILE[case]
    path = str(short_tmp / "raw.sock")
    with RawDaemon(path, (data, then)):
        started = time.monotonic()
        with pytest.raises(DaemonUnreachable) as err:
            ask(path)
    message = str(err.value)
    assert why in message and path in message and "\n" not in message and len(message) < 300, message
    assert time.monotonic() - started < 4  # refused as soon as it shows, never at the timeout


@pytest.mark.parametrize("ask", [ask_sync, ask_async], ids=["sync", "async"])
def test_a_daemon_that_stops_mid_answer_is_a_timeout(short_tmp: Path, ask) -> None:
    path = str(short_tmp / "raw.sock")
    with RawDaemon(path, (OK_HEAD + b"content-length: 10\r\n\r\n{", "hold")):
        started = time.monotonic()
        with pytest.raises(DaemonUnreachable, match=f"daemon on {path} did not answer within 0.2s"):
            ask(path, timeout=0.2)
        assert time.monotonic() - started < 2


def test_a_trickle_cannot_stretch_the_deadline(short_tmp: Path) -> None:
    """A daemon sending one byte whenever the client looks at the clock, which here moves
    1 s per look: every read gets a byte, yet the request ends at its 10 s deadline."""
    from devicelink.ipc import transport

    path = str(short_tmp / "raw.sock")
    tick = threading.Semaphore(0)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        tick.release()
        return now[0]

    def trickle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client hangs up at its deadline
            conn.recv(65536)
            for byte in GOOD:
                if not tick.acquire(timeout=10):
                    return
                conn.send(bytes([byte]))

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        threading.Thread(target=lambda: trickle(listener.accept()[0]), daemon=True).start()
        pool = transport.Pool(path, clock=clock)
        with pytest.raises(TimeoutError):
            pool.request(wire.request("GET", "/v1/status"), 10.0, retry=False)
    assert 10 <= now[0] <= 14


@pytest.mark.parametrize("ask", [ask_sync, ask_async], ids=["sync", "async"])
def test_answers_the_reader_takes(short_tmp: Path, ask) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nx-a: b\r\n\r\n"
    chunked = OK_HEAD + b"transfer-encoding: Chunked\r\n\r\n3;ext=1\r\n{\"s\r\n10\r\ntate\": \"paired\"}\r\n0\r\nx-t: 1\r\n\r\n"
    for data in (GOOD, interim + GOOD, chunked, b"HTTP/1.0 200 \r\n\r\n" + STATUS_BODY,
                 b"HTTP/1.1 200\r\ncontent-length: 19, 19\r\n\r\n" + STATUS_BODY):
        path = str(short_tmp / "raw.sock")
        with RawDaemon(path, (data, "close")):
            assert ask(path) == {"state": "paired"}, data
        os.unlink(path)


def test_keep_alive_reuse_and_a_stale_connection(short_tmp: Path) -> None:
    path = str(short_tmp / "raw.sock")
    # Two answers on one connection, then one that closes it after answering (no
    # "connection: close": the client sees the close while the connection is idle).
    with RawDaemon(path, (GOOD, "keep"), (GOOD, "close"), (GOOD, "close")) as raw, Client(path) as dl:
        assert [dl.status() for _ in range(2)] == [{"state": "paired"}] * 2
        assert raw.connections == 1
        time.sleep(0.05)  # the daemon's close must arrive before the next request
        assert dl.status() == {"state": "paired"}
        assert raw.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_kept_connection_closed_unanswered(short_tmp: Path, method: str) -> None:
    """The daemon closes a kept connection just as the next request arrives: a GET is
    sent again on a new connection, a POST is not (it may have been done)."""
    path = str(short_tmp / "raw.sock")
    with RawDaemon(path, (GOOD, "keep"), (b"", "close"), (GOOD, "close")) as raw, Client(path) as dl:
        assert dl.status() == {"state": "paired"}
        if method == "GET":
            assert dl.status() == {"state": "paired"}
            assert raw.connections == 2
        else:
            with pytest.raises(DaemonUnreachable, match="closed the connection without answering"):
                dl.pair()
            assert raw.connections == 1


def test_a_broken_event_stream_is_unreachable(short_tmp: Path) -> None:
    stream = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
              b"10\r\ndata: {\"n\": 1}\n\n\r\n" + b"zz\r\n")
    path = str(short_tmp / "raw.sock")
    with RawDaemon(path, (stream, "hold")), Client(path) as dl:
        events = dl.events()
        assert next(events) == Event("message", {"n": 1})
        with pytest.raises(DaemonUnreachable, match="event stream from .* ended .*malformed chunk size"):
            next(events)


def h11_read(pieces: list[bytes]) -> tuple[int, bytes]:
    """The same answer as h11 reads it (the daemon's own HTTP library)."""
    import h11

    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=wire.MAX_HEAD)
    conn.send(h11.Request(method="GET", target="/v1/status", headers=[("host", "devicelink")]))
    conn.send(h11.EndOfMessage())
    for piece in [p for p in pieces if p]:
        conn.receive_data(piece)
    conn.receive_data(b"")  # the end of the connection
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body
        elif not isinstance(event, h11.InformationalResponse):
            raise ValueError(event)


def wire_read(pieces: list[bytes]) -> tuple[int, bytes]:
    reader = wire.ResponseReader()
    for piece in pieces:
        reader.feed(piece)
    reader.feed_eof()
    head, body = reader.next_event(), b""
    while (event := reader.next_event()) is not wire.END:
        body += event
    return head.status, body


SAMPLES = [GOOD, b"HTTP/1.1 503 \r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
                 b"content-length: 2\r\n\r\n{}",
           OK_HEAD + b"transfer-encoding: chunked\r\n\r\n2;a=b\r\n{}\r\n0\r\n\r\n",
           b"HTTP/1.1 100 Continue\r\n\r\n" + GOOD, OK_HEAD + b"\r\n" + STATUS_BODY]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SAMPLES), st.data())
def test_what_the_reader_takes_h11_reads_the_same(sample: bytes, data) -> None:
    """Mutate a good answer (a byte changed, inserted or dropped) and cut it anywhere:
    whatever the strict reader accepts, h11 accepts too, with the same status and body."""
    position = data.draw(st.integers(0, len(sample)))
    byte = data.draw(st.sampled_from(b"\r\n \t:;,0123456789abcfxHTP/\x00\x7f\xff"))
    kind = data.draw(st.sampled_from(["replace", "insert", "drop", "none"]))
    if kind == "replace":
        sample = sample[:position] + bytes([byte]) + sample[position + 1:]
    elif kind == "insert":
        sample = sample[:position] + bytes([byte]) + sample[position:]
    elif kind == "drop":
        sample = sample[:position] + sample[position + 1:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(sample)), max_size=4)))
    pieces = [sample[a:b] for a, b in zip([0, *cuts], [*cuts, len(sample)])]
    try:
        ours = wire_read(pieces)
    except wire.ProtocolError:
        return
    assert h11_read(pieces) == ours


def test_requests_are_what_the_fast_path_takes() -> None:
    from devicelink.ipc import fastpath

    request = wire.request("GET", wire.target("/v1/token", {"scope": "openid media.read", "min_ttl": "60",
                                                            "resource": "https://api.example.com/ä"}))
    assert fastpath.simple_get(request) == (b"/v1/token?scope=openid%20media.read&min_ttl=60"
                                           b"&resource=https%3A%2F%2Fapi.example.com%2F%C3%A4")


# -- small things --------------------------------------------------------------------


def test_token_is_a_dict_whose_repr_hides_the_token() -> None:
    token = Token({"access_token": "secret-at", "token_type": "Bearer", "expires_in": 300, "scope": "openid"})
    assert token["access_token"] == token.access_token == "secret-at"
    assert (token.token_type, token.expires_in, token.scope) == ("Bearer", 300, "openid")
    assert token == {"access_token": "secret-at", "token_type": "Bearer", "expires_in": 300, "scope": "openid"}
    assert "secret-at" not in repr(token) and "secret-at" not in str(token) and "expires_in=300" in repr(token)


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> None:
    monkeypatch.delenv("DEVICELINK_SOCKET", raising=False)
    assert default_socket_path() == "/run/devicelink/agent.sock"
    path = str(short_tmp / "elsewhere.sock")
    monkeypatch.setenv("DEVICELINK_SOCKET", path)
    with Client() as dl:
        assert dl.path == path
        with pytest.raises(DaemonUnreachable, match="no devicelink socket at " + path):
            dl.status()


def test_unreachable_async(short_tmp: Path) -> None:
    async def main() -> None:
        async with AsyncClient(short_tmp / "none.sock") as dl:
            await dl.token()

    with pytest.raises(DaemonUnreachable, match="no devicelink socket"):
        asyncio.run(main())


HEAVY = ("httpx", "httpcore", "h11", "ssl", "tomllib", "asyncio", "argparse", "logging", "devicelink.config")
WHICH = f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, devicelink.client; " + WHICH],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert set(client_module.__all__) >= {"Client", "AsyncClient", "Event", "Token", "DaemonError"}


TOKEN_ANSWER = b'{"access_token": "at-1", "token_type": "Bearer", "expires_in": 300, "scope": "openid"}'


@pytest.mark.parametrize("config", ["none", "without socket", "with socket"])
def test_the_token_command_imports_no_http_library_tls_or_toml(short_tmp: Path, config: str) -> None:
    """``devicelink token``, run to the end against a daemon, loads no httpx, no ssl and
    no argparse or logging; the TOML config only when the file sets ``[socket] path``."""
    import subprocess
    import sys

    sock = short_tmp / "agent.sock"
    path = short_tmp / "config.toml"
    if config == "with socket":
        write_config(short_tmp, "https://id.example.com", "tv")  # [socket] path = "agent.sock"
    elif config == "without socket":
        path.write_text('[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\n')
    # $DEVICELINK_SOCKET counts only without a config file (docs/cli.md).
    env = {**os.environ, "DEVICELINK_SOCKET": str(sock) if config == "none" else "/nowhere.sock",
           "DEVICELINK_CONFIG": str(path)}
    answer = b"HTTP/1.1 200 \r\ncontent-length: %d\r\n\r\n%s" % (len(TOKEN_ANSWER), TOKEN_ANSWER)
    code = "import sys; from devicelink import cli; code = cli.main(['token']); " + WHICH + "; print(code)"
    with RawDaemon(str(sock), (answer, "close")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    lines = out.stdout.splitlines()
    if config == "without socket":  # the file cannot move the socket: the default one, not $DEVICELINK_SOCKET
        assert lines == ["[]", "5"] and "no devicelink socket at /run/devicelink/agent.sock" in out.stderr
    elif config == "with socket":
        assert lines == ["at-1", "['devicelink.config', 'tomllib']", "0"], out
    else:
        assert lines == ["at-1", "[]", "0"], out


# -- against the real daemon ---------------------------------------------------------


def pair(daemon, srv) -> None:
    code = daemon.wait_for(r"pairing: enter code (\S+)").group(1)
    srv.approve(code, subject="alice", name="Alice Example")
    daemon.wait_for(r"state pairing -> paired")


def test_sync_client_against_the_daemon(short_tmp: Path, dev_server, daemons) -> None:
    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    with Client(d.socket) as dl:
        assert dl.status()["state"] == "pairing" and dl.health() is True
        with pytest.raises(DaemonError) as err:
            dl.token()
        assert (err.value.code, err.value.status) == ("pairing_in_progress", 503)
        pair(d, dev_server)
        token = dl.token(min_ttl=120)
        assert token.token_type == "Bearer" and token.expires_in > 120 and "refresh_token" not in token
        assert dev_server.access_token_info(token.access_token)["sub"] == "alice"
        assert "openid" in dl.token(scope="openid").scope.split()
        assert dl.status()["account"] == {"sub": "alice", "name": "Alice Example"}

        from devicelink_sim.settings import ACR_MFA

        pending = dl.step_up(ACR_MFA)
        assert pending.status == 202 and pending.data["user_code"]
        dev_server.approve(pending.data["user_code"], subject="alice", name="Alice Example")
        deadline = time.monotonic() + 30
        while not (stronger := dl.step_up(ACR_MFA)).done and time.monotonic() < deadline:
            time.sleep(0.2)  # an app asks again now and then, as it would after a 202
        assert isinstance(stronger.data, Token) and stronger.data["acr"] == ACR_MFA
        assert stronger.data.access_token != token.access_token

        answer = dl.unpair()
        assert answer["revoked"] is True
        with pytest.raises(DaemonError, match="not_paired"):
            dl.token()
        again = dl.pair()
        assert again["pairing"]["user_code"]
        dev_server.approve(again["pairing"]["user_code"], subject="bob", name="Bob")
        assert dl.wait_until_paired(timeout=30)["account"]["sub"] == "bob"
        assert dl.token().access_token != token.access_token
    assert token.access_token not in "".join(d.log)


def test_async_client_against_the_daemon(short_tmp: Path, dev_server, daemons) -> None:
    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    code = d.wait_for(r"pairing: enter code (\S+)").group(1)

    async def main() -> None:
        async with AsyncClient(d.socket) as dl:
            waiter = asyncio.create_task(dl.wait_until_paired(timeout=30))
            await asyncio.sleep(0)
            status = await dl.status()
            assert status["pairing"]["user_code"] == code
            await asyncio.to_thread(dev_server.approve, code, subject="alice", name="Alice Example")
            assert (await waiter)["state"] == "paired"
            first, second = await asyncio.gather(dl.token(min_ttl=60), dl.token(min_ttl=60))
            assert first.access_token == second.access_token
            assert await dl.health() is True
            assert (await dl.unpair())["revoked"] is True
            with pytest.raises(DaemonError, match="not_paired"):
                await dl.token()
            assert (await dl.pair())["state"] == "pairing"

    asyncio.run(main())


def test_events_from_the_daemon(short_tmp: Path, dev_server, daemons) -> None:
    import queue

    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    code = d.wait_for(r"pairing: enter code (\S+)").group(1)
    got: queue.Queue = queue.Queue()
    dl = Client(d.socket)

    def listen() -> None:
        try:
            for event in dl.events():
                got.put(event)
        except Exception as exc:  # handed to the test thread
            got.put(exc)

    threading.Thread(target=listen, daemon=True).start()
    try:
        first = got.get(timeout=2)  # the daemon may greet a subscriber with the current state
    except queue.Empty:
        first = None  # it does not: approve anyway, 2 s after subscribing is long enough
    if isinstance(first, DaemonError) and first.code in ("not_found", "method_not_allowed", "server_error"):
        pytest.skip(f"the daemon serves no GET /v1/events yet ({first.code})")
    seen = [first] if first is not None else []
    dev_server.approve(code, subject="alice", name="Alice Example")
    while not any(isinstance(e, Event) and e.name == "state" and e.data.get("state") == "paired" for e in seen):
        item = got.get(timeout=30)
        if isinstance(item, Exception):
            raise item
        seen.append(item)
    dl.close()
    text = json.dumps([e.data for e in seen if isinstance(e, Event)])
    for secret in dev_server.issued_secrets():
        assert secret not in text


# -- issue 10, item 18: hints that name what is there ----------------------------------


def _refused(path: str) -> str:
    import errno as errno_module

    return Client(path)._why_unreachable(PermissionError(errno_module.EACCES, "Permission denied"))


def test_permission_denied_names_the_sockets_real_group(short_tmp: Path) -> None:
    """The hint named a group ``devicelink`` whatever the socket's group was: root's socket
    (a daemon run as root) needs root, another group needs membership of that group."""
    import grp

    if os.geteuid() != 0:
        pytest.skip("needs root to give the socket another group")
    path = str(short_tmp / "agent.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        os.chown(path, -1, 0)
        message = _refused(path)
        assert "group is root" in message and "(devicelink)" not in message
        other = next(g for g in grp.getgrall() if g.gr_gid != 0)
        os.chown(path, -1, other.gr_gid)
        message = _refused(path)
        assert f"socket's group ({other.gr_name})?" in message and f"usermod -aG {other.gr_name}" in message
        assert message.count("?") == 1


def test_permission_denied_on_the_directory_says_so(short_tmp: Path) -> None:
    message = _refused(str(short_tmp / "missing" / "agent.sock"))
    assert f"its directory {short_tmp / 'missing'} is closed to it" in message
