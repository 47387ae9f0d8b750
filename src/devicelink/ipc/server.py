"""The socket API over a Unix socket: asyncio, one h11.Connection per client.

Theory of operation
-------------------

We accept connections ourselves (``loop.add_reader`` on the listening
socket), so a connection is judged before any transport exists:

- The peer's credentials are read from the kernel (``SO_PEERCRED``, and
  ``SO_PEERGROUPS`` for the supplementary groups). If the kernel can't say
  who is calling, we hang up.
- Beyond ``max_connections`` in total or ``max_connections_per_uid`` for the
  caller's uid, it gets a pre-built 503 ``server_busy`` written straight to the
  socket: no transport, no task, no protocol, a few microseconds, so a client
  hammering the socket costs us little. We then shut down our side only and
  close a second later, so a client that writes its request after our answer
  (it connected before we accepted) doesn't get EPIPE instead of the 503;
  httpcore < 1.0 (Bookworm's) would not read the answer then. At most
  ``_REFUSED_KEPT`` sockets wait like that; a flood just closes them sooner.
- Refusals are logged at most once a minute per uid, with a count.
- The listen backlog is 1024 and each wake-up accepts up to 128: connects come
  in bursts (a flood, or many apps starting at once), and on AF_UNIX a
  non-blocking ``connect()`` to a full backlog fails with EAGAIN, which
  asyncio mistakes for "in progress" and turns into a socket that was never
  connected (CPython gh-117208).

Each admitted connection gets a :class:`_Connection` protocol, modelled on
uvicorn's ``H11Protocol`` (``uvicorn/protocols/http/h11_impl.py``):

- Each read feeds h11 and pulls events until h11 says ``NEED_DATA`` (wait for
  more bytes) or ``PAUSED`` (a complete request is waiting for our answer;
  stop reading until we have sent it). Pipelined requests therefore sit in
  h11's buffer and are answered strictly in order.
- A complete request becomes a :class:`routes.Request` for ``api.handle``,
  which returns a ``Response`` (written from the same callback: the fast
  path, no task), a ``Stream`` (see below), or an awaitable of a Response, run
  in a task; the connection reads no further request until it has answered.
  A whole answer goes out in one ``transport.write``.
- Limits, each answered with the JSON error shape and ``connection: close``:
  request line over 8 KiB: 414 (RFC 9112 §3); head over 16 KiB or more than
  100 header fields: 431; body over 16 KiB: 413; malformed: 400 (501 for an
  unknown transfer coding). After such an early answer we "linger": shut down
  our side, discard what the client still sends for a moment, then close.
- Timers (one per connection, re-armed only when it fires or a request
  arrives in pieces): once the first byte of a request has arrived, the whole
  request, head and body, must arrive within ``request_timeout`` or it gets
  408 and is closed (slowloris). Between requests, a keep-alive connection
  idle for ``idle_timeout`` is closed silently. Nothing times out while we
  answer.

The fast path: almost every request an app sends is one small ``GET`` alone in
one read of a keep-alive connection. When h11 is idle with nothing buffered and
the read is exactly such a request (``_simple_get``: ``GET origin-form
HTTP/1.1``, one ``Host``, only visible-ASCII fields, no body, ``connection``,
``expect`` or ``upgrade`` field, within the limits) for token, status, health
or metrics, it is answered without h11, which stays idle; while an answer
from a task is pending the connection reads nothing. Anything else goes
through h11 as described above, including every error answer. A differential
fuzz test checks that h11 reads whatever the fast path takes as the same
single GET. It saves about three quarters of the CPU a request costs.

Streams (server-sent events): the head goes out at once without a
content-length, so h11 frames the body with chunked coding (RFC 9112 §7.1),
or for an HTTP/1.0 client by closing the connection (§6.3). A task then
writes each chunk the iterator yields. While the transport's buffer is over
its high-water mark (``pause_writing``) the task waits for ``resume_writing``
before pulling the next chunk, so a client that doesn't read holds back the
producer instead of making us buffer. When the iterator ends, the last chunk
is sent and the connection carries on as keep-alive. When the client leaves
(EOF or a failed write) the task is cancelled; either way the iterator's
``aclose()`` is awaited exactly once, so the Api's subscription is released.
(An async generator that never got to run, because the client left at once,
runs no ``finally`` on ``aclose()``: acquire resources inside it, or return
an iterator whose ``aclose()`` releases them.)
A stream has no timeout (the Api sends its own keep-alive comments) but counts
toward the connection caps.

Shutdown follows uvicorn's ``Server.shutdown``: stop accepting, unlink the
socket file, close idle connections, end streams at once (last chunk, then
close), let in-flight requests finish (their answers carry ``connection:
close``), and after ``shutdown_timeout`` cancel what is still running and
abort what is left.

Memory is bounded: one read buffer shared by all connections, h11's buffer
capped by the head limit, bodies by the body limit, write buffers by flow
control, and per-uid bookkeeping dropped when it reaches zero.

Nothing here logs request data: not the query, not headers, not bodies.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import h11

from devicelink.errors import ConfigError, DeviceLinkError
from devicelink.ipc import routes
from devicelink.ipc.routes import Api, ApiError, Peer, Request, Response, Stream

__all__ = ["SocketInUse", "SocketServer", "peer_credentials"]

logger = logging.getLogger(__name__)

MAX_REQUEST_LINE_BYTES = 8 * 1024  # RFC 9112 §3 recommends supporting at least 8000
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 16 * 1024
LINGER_SECONDS = 2.0
REFUSAL_LOG_INTERVAL = 60.0  # seconds between "refusing connections" warnings per uid
# Accepts per wake-up: enough to drain the backlog (a refusal costs ~10 µs), few
# enough that a flood of connects can't starve open connections for long.
_ACCEPT_BATCH = 128
_ACCEPT_RETRY_DELAY = 1.0  # after EMFILE and the like, as asyncio's own accept loop does
_REFUSED_KEPT = 64  # refused sockets half-closed at once, waiting to be closed
_REFUSED_SECONDS = 1.0
_READ_SIZE = 64 * 1024

_SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_GROUPS_BUFLEN = 1024  # the most socket.getsockopt will take: 256 gid_t
_groups_supported = True

_CLOSE = ((b"connection", b"close"),)
_EOM = h11.EndOfMessage()
_CONTINUE = h11.InformationalResponse(status_code=100, headers=())


def _error(code: str, description: str, status: int | None = None) -> Response:
    return routes.error_response(ApiError(code, description), status)


_SERVER_ERROR = _error("server_error", "internal error; see the daemon's log")
_TOO_LARGE = _error("request_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
_URI_TOO_LONG = _error(
    "invalid_request", f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes", 414
)
_TOO_MANY_HEADERS = _error(
    "invalid_request", f"more than {MAX_HEADERS} header fields", 431
)
_PROTOCOL_ERRORS = {
    400: _error("invalid_request", "malformed HTTP request"),
    431: _error("invalid_request", f"request headers exceed {MAX_HEADER_BYTES} bytes", 431),
    501: _error("invalid_request", "unsupported transfer coding", 501),
}


def _raw(response: Response, close: bool = True) -> bytes:
    """A whole HTTP/1.1 answer as bytes, without h11: for a refused socket, and for
    the simple requests answered on the fast path (:func:`_simple_get`)."""
    return _raw_head(response.status, response.headers, close) + response.body


_raw_heads: dict[tuple[int, tuple[tuple[bytes, bytes], ...], bool], bytes] = {}


def _raw_head(status: int, headers: tuple[tuple[bytes, bytes], ...], close: bool) -> bytes:
    key = (status, headers, close)
    head = _raw_heads.get(key)
    if head is None:
        if len(_raw_heads) >= 256:
            _raw_heads.clear()
        fields = b"".join(b"%s: %s\r\n" % field for field in (*headers, *(_CLOSE if close else ())))
        head = _raw_heads[key] = (b"HTTP/1.1 %d %s\r\n" % (status, routes.REASONS.get(status, b""))
                                  + fields + b"\r\n")
    return head


# The fast path. Nearly every request an app sends is one small GET, alone in one
# read, on a keep-alive connection: h11's general machinery was three quarters of the
# daemon's time per request. Such a request is recognised here, strictly, and
# answered without h11; anything else (another method, a body, HTTP/1.0, pipelining,
# odd bytes, "connection", "expect" or "upgrade") goes to h11 exactly as before,
# which also produces every error answer.
_SIMPLE_LINE = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
_FIELD_VALUE_BYTES = bytes(range(0x20, 0x7F)) + b"\t"  # visible ASCII, space, tab (stricter than §5.5)
_NOT_SIMPLE = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade",
                         b"te", b"trailer"})
_SIMPLE_HANDLERS = frozenset({"token", "status", "health", "metrics"})


def _simple_get(data: bytes) -> bytes | None:
    """The target of ``data`` if it is exactly one simple ``GET`` (see above), else None."""
    if (len(data) > MAX_HEADER_BYTES or data.find(b"\r\n\r\n") != len(data) - 4
            or len(data) < 4):
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1 or len(lines[0]) > MAX_REQUEST_LINE_BYTES:
        return None
    line = _SIMPLE_LINE.fullmatch(lines[0])
    if line is None:
        return None
    hosts = 0
    for field in lines[1:]:
        name, colon, value = field.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None or value.translate(None, _FIELD_VALUE_BYTES):
            return None
        name = name.lower()
        if name in _NOT_SIMPLE:
            return None
        hosts += name == b"host"
    return line.group(1) if hosts == 1 else None  # RFC 9112 §3.2: exactly one Host


_BUSY = _raw(_error("server_busy", "too many connections; close idle ones, or retry later"))


class SocketInUse(DeviceLinkError):
    """Another process is already listening on the socket path."""


def peer_credentials(sock: Any) -> Peer:
    """The pid, uid, gid and supplementary groups of whoever connected ``sock`` (Linux).

    The kernel records them at ``connect()``, so they can't be changed after.
    """
    if _SO_PEERCRED is None:
        raise OSError(errno.ENOTSUP, "SO_PEERCRED is not available on this platform")
    raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(raw), _peer_groups(sock))


def _peer_groups(sock: Any) -> tuple[int, ...]:
    """``SO_PEERGROUPS``: the peer's supplementary groups, an array of 32-bit gid_t."""
    global _groups_supported
    if not _groups_supported:
        return ()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _GROUPS_BUFLEN)
    except OSError as exc:
        if exc.errno == errno.ERANGE:  # more than 256 groups: ask for the length
            raw = _peer_groups_large(sock.fileno())
        elif exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            _groups_supported = False
            logger.debug("SO_PEERGROUPS is not supported here (%s); peers get no groups", exc)
            return ()
        else:
            raise
    return struct.unpack(f"{len(raw) // 4}I", raw) if raw else ()


def _peer_groups_large(fd: int) -> bytes:
    """``SO_PEERGROUPS`` through libc: socket.getsockopt caps its buffer at 1024 bytes.

    On ERANGE the kernel writes the length it needs into optlen; the list is
    fixed at connect(), so the second call fits.
    """
    import ctypes  # only for callers in more than 256 groups

    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(0)
    buf = ctypes.create_string_buffer(0)
    for _ in range(2):
        if libc.getsockopt(fd, socket.SOL_SOCKET, _SO_PEERGROUPS, buf, ctypes.byref(size)) == 0:
            return buf.raw[: size.value]
        err = ctypes.get_errno()
        if err != errno.ERANGE:
            raise OSError(err, os.strerror(err))
        buf = ctypes.create_string_buffer(size.value)
    raise OSError(errno.ERANGE, "SO_PEERGROUPS: the group list keeps growing")


class SocketServer:
    """Serve ``api`` over HTTP/1.1 on a Unix socket.

    Either ``path`` (we create, chmod and later unlink the socket file) or
    ``sock``, an already bound socket such as one from systemd socket
    activation (we only listen on it and close it on stop; ``mode`` is not
    applied and the file is left to whoever made it).

    ::

        async with SocketServer(api, "/run/devicelink/agent.sock"):
            await stop_requested.wait()
    """

    def __init__(
        self,
        api: Api,
        path: str | None = None,
        mode: int = 0o660,
        *,
        sock: socket.socket | None = None,
        shutdown_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        request_timeout: float = 10.0,
        max_connections: int = 512,
        max_connections_per_uid: int = 64,
        backlog: int = 1024,
    ) -> None:
        if (path is None) == (sock is None):
            raise ValueError("give exactly one of path and sock")
        if sock is not None and (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM):
            raise ValueError("sock must be an AF_UNIX SOCK_STREAM socket")
        if min(idle_timeout, request_timeout) <= 0 or min(max_connections, max_connections_per_uid) < 1:
            raise ValueError("timeouts must be positive and connection caps at least 1")
        self.api = api
        self.path = path if path is not None else _sock_name(sock)
        self.mode = mode
        self.shutdown_timeout = shutdown_timeout
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid
        self._sock = sock
        self._owns_file = sock is None
        self._backlog = backlog
        self._listener: socket.socket | None = None
        self._file_id: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()
        self._per_uid: dict[int, int] = {}  # uid -> open connections; no zero entries
        self._refused: dict[int, list[float]] = {}  # uid -> [last warning, refused since]
        self._half_closed: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self._half_closed_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drained: asyncio.Future[None] | None = None
        self._stopping = False
        self._read_buffer = memoryview(bytearray(_READ_SIZE))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout_answer = _error(  # RFC 9110 §15.5.9
            "invalid_request", f"the request did not arrive within {request_timeout:g} s", 408
        )

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bind (unless given a socket) and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("the server is already running")
        loop = self._loop = asyncio.get_running_loop()
        sock = self._sock if self._sock is not None else self._bind()
        try:
            sock.listen(self._backlog)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            if self._owns_file:
                sock.close()
                self._unlink()
            raise
        self._listener = sock
        self._stopping = False
        logger.info("listening on %s", self.path)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, end streams, finish in-flight requests, cancel what is left after ``timeout``."""
        sock, self._listener = self._listener, None
        if sock is None:
            return
        assert self._loop is not None
        timeout = self.shutdown_timeout if timeout is None else timeout
        self._stopping = True
        self._loop.remove_reader(sock.fileno())
        sock.close()
        self._unlink()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drained
            except TimeoutError:
                logger.warning(
                    "%d connection(s) still busy after %.1fs; cancelling",
                    len(self._connections),
                    timeout,
                )
            self._drained = None
        # Left: Api calls on hung connections, calls whose client went away,
        # and streams whose client stopped reading.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for conn in list(self._connections):
            conn.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # abort() calls connection_lost on the next turn of the loop
        self._refused.clear()
        self._close_refused(everything=True)
        logger.info("stopped listening on %s", self.path)

    async def __aenter__(self) -> SocketServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def is_serving(self) -> bool:
        return self._listener is not None

    # -- accepting ---------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait, don't spin
                self._note_refusal(-1, f"cannot accept ({exc.strerror})")
                self._pause_accepting(listener)
                return
            self._admit(sock)

    def _pause_accepting(self, listener: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listener.fileno())

        def resume() -> None:
            if self._listener is listener:
                self._loop.add_reader(listener.fileno(), self._accept, listener)  # type: ignore[union-attr]

        self._loop.call_later(_ACCEPT_RETRY_DELAY, resume)

    def _admit(self, sock: socket.socket) -> None:
        """Who is it, and is there room for them? Then hand the socket to asyncio."""
        try:
            sock.setblocking(False)
            peer = peer_credentials(sock)
        except OSError as exc:
            logger.warning("cannot read the peer's credentials (%s); hanging up", exc)
            sock.close()
            return
        uid = peer.uid
        per_uid = self._per_uid.get(uid, 0)
        if len(self._connections) >= self.max_connections:
            why = f"{self.max_connections} connections open in total"
        elif per_uid >= self.max_connections_per_uid:
            why = f"uid {uid} has {per_uid} connections open"
        else:
            self._per_uid[uid] = per_uid + 1
            conn = _Connection(self, peer)
            self._connections.add(conn)
            assert self._loop is not None
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(lambda: conn, sock)  # type: ignore[arg-type]
            )
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._connected(t, conn, sock))
            return
        self._note_refusal(uid, why, peer.pid)
        self._refuse(sock)

    def _refuse(self, sock: socket.socket) -> None:
        """503, then EOF; the close comes a second later (see the module docstring)."""
        try:
            sock.send(_BUSY)  # a fresh socket's buffer always has room for it
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        assert self._loop is not None
        if len(self._half_closed) >= _REFUSED_KEPT:
            self._half_closed.popleft()[1].close()
        self._half_closed.append((self._loop.time() + _REFUSED_SECONDS, sock))
        if self._half_closed_timer is None:
            self._half_closed_timer = self._loop.call_later(_REFUSED_SECONDS, self._close_refused)

    def _close_refused(self, everything: bool = False) -> None:
        assert self._loop is not None
        now, waiting = self._loop.time(), self._half_closed
        while waiting and (everything or waiting[0][0] <= now):
            waiting.popleft()[1].close()
        if self._half_closed_timer is not None:
            self._half_closed_timer.cancel()
        self._half_closed_timer = (
            self._loop.call_at(waiting[0][0], self._close_refused) if waiting else None
        )

    def _connected(self, task: asyncio.Task[Any], conn: _Connection, sock: socket.socket) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.warning("cannot set up a connection: %s", task.exception())
            sock.close()
            self._connection_lost(conn)

    def _note_refusal(self, uid: int, why: str, pid: int = 0) -> None:
        """Warn at most once per REFUSAL_LOG_INTERVAL per uid; count the rest."""
        assert self._loop is not None
        now = self._loop.time()
        entry = self._refused.get(uid)
        if entry is not None and now - entry[0] < REFUSAL_LOG_INTERVAL:
            entry[1] += 1
            return
        since = int(entry[1]) if entry is not None else 0
        who = f"uid {uid} (pid {pid})" if uid >= 0 else "a client"
        logger.warning("refusing a connection from %s: %s (%d more refused since the last warning)",
                       who, why, since)
        for stale in [u for u, (t, _) in self._refused.items() if now - t >= REFUSAL_LOG_INTERVAL]:
            del self._refused[stale]
        self._refused[uid] = [now, 0]

    # -- the socket file ---------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > 107:
            raise ConfigError(f"socket path {path} is longer than the 107 bytes AF_UNIX allows")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the file with 0777 & ~umask. A umask of 0177 makes
            # that 0600, so nobody but us can connect before the chmod below.
            # umask is process-wide: this runs at start-up, before the daemon
            # starts any thread that creates files.
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, self.mode)
            st = os.stat(path)
            self._file_id = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _remove_stale(path: str) -> None:
        """Unlink a socket file nobody listens on; refuse anything else."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(
                f"socket path {path} exists and is not a socket; refusing to replace it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # stale: left behind by a daemon that died
        except BlockingIOError:  # EAGAIN: a listener whose backlog is full
            raise SocketInUse(f"another process is already listening on {path}") from None
        else:
            raise SocketInUse(f"another process is already listening on {path}")
        finally:
            probe.close()
        logger.info("removing stale socket %s", path)
        os.unlink(path)

    def _unlink(self) -> None:
        """Remove our socket file, unless someone has replaced it since."""
        file_id, self._file_id = self._file_id, None
        if file_id is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == file_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove socket %s: %s", self.path, exc)

    # -- bookkeeping for _Connection ---------------------------------------

    def _connection_lost(self, conn: _Connection) -> None:
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        uid = conn.peer.uid
        left = self._per_uid[uid] - 1
        if left:
            self._per_uid[uid] = left
        else:
            del self._per_uid[uid]
        drained = self._drained
        if drained is not None and not self._connections and not drained.done():
            drained.set_result(None)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _sock_name(sock: socket.socket | None) -> str:
    assert sock is not None
    name = sock.getsockname()
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class _Connection(asyncio.BufferedProtocol):
    """One client connection: h11 state, flow control, the request and idle timers."""

    def __init__(self, server: SocketServer, peer: Peer) -> None:
        self._server = server
        self._api = server.api
        self.peer = peer
        loop = server._loop
        assert loop is not None
        self._loop = loop
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._transport: asyncio.Transport | None = None
        self._method = b""
        self._target = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._task: asyncio.Task[None] | None = None  # an Api call or a stream still running
        self._streaming = False
        self._stream_started = False  # the stream task has begun: cancelling it runs its cleanup
        self._ending_stream = False  # stop(): end the stream cleanly, then close
        self._writable: asyncio.Future[None] | None = None  # a stream waiting for resume_writing
        self._keep_alive = True
        self._read_paused = False
        self._write_paused = False
        self._lingering = False
        self._timer: asyncio.TimerHandle | None = None
        # Waiting for a request since (None while answering one) ...
        self._idle_since: float | None = None
        # ... whose first byte came at (None until then).
        self._request_since: float | None = None

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server._stopping:
            transport.close()
            return
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        # An Api call still running is not cancelled: it may be a refresh
        # that other clients wait on too. Its answer is dropped in _finish.
        # A stream is ours alone: end it, which closes its iterator.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_stream_now()
        self._server._connection_lost(self)

    # A BufferedProtocol, so the transport reads into one preallocated
    # buffer: asyncio 3.11's data_received path allocates 256 KiB per read,
    # which cost more than the read itself. The buffer is shared by all
    # connections of the server: buffer_updated copies out of it at once.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._lingering:
            return
        data = self._server._read_buffer[:nbytes].tobytes()
        conn = self._conn
        if (self._request_since is None and self._task is None and self._keep_alive
                and conn.our_state is h11.IDLE and conn.their_state is h11.IDLE and not conn.trailing_data[0]):
            target = _simple_get(data)
            if target is not None and self._answer_simple(target):
                return
        if self._request_since is None:
            self._request_since = self._loop.time()
        conn.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        if self._lingering:
            return False  # the transport closes itself
        self._conn.receive_data(b"")
        self._handle_events()
        # Keep the transport open: a half-closed client still gets its answer,
        # and _handle_events or _finish close it once that is sent. After a
        # rejection there is nothing left to wait for, so close (flushing).
        return not self._lingering

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        writable, self._writable = self._writable, None
        if writable is not None:
            if not writable.done():
                writable.set_result(None)
        elif self._task is None and not self._lingering:
            self._resume()

    # -- used by SocketServer ----------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; end a stream now; otherwise close after the answer in flight."""
        self._keep_alive = False
        if self._streaming:
            self._ending_stream = True
            task = self._task
            if task is not None and self._stream_started and not task.cancelling():
                task.cancel()
        elif self._task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the h11 loop ------------------------------------------------------

    def _handle_events(self) -> None:
        """Pull events out of h11 until it needs data or waits for our answer."""
        conn = self._conn
        transport = self._transport
        assert transport is not None
        while not transport.is_closing():
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(self._protocol_error(exc))
                return
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    transport.write(conn.send(_CONTINUE))
                if self._request_since is not None:
                    self._arm_request_timer()  # a request arriving in pieces
                return
            if event is h11.PAUSED:  # pipelined: the next request waits for this answer
                self._pause_reading()
                return
            etype = type(event)
            if etype is h11.Request:
                self._method = event.method
                self._target = target = event.target
                self._body_size = 0
                # method SP target SP HTTP/1.1 CRLF (RFC 9112 §3); a longer one is
                # almost always a runaway query string.
                if len(event.method) + len(target) + 12 > MAX_REQUEST_LINE_BYTES:
                    self._reject(_URI_TOO_LONG)
                    return
                headers = event.headers
                if len(headers) > MAX_HEADERS:
                    self._reject(_TOO_MANY_HEADERS)
                    return
                # h11 enforces max_incomplete_event_size only on a request that
                # arrives in pieces; count here so one big read gets 431 too.
                size = len(target)
                for name, value in headers:
                    size += len(name) + len(value)
                    # len() first: h11 < 0.16 lets any number of digits through.
                    if name == b"content-length" and (
                        len(value) > 9 or int(value) > MAX_BODY_BYTES
                    ):
                        self._reject(_TOO_LARGE)
                        return
                if size > MAX_HEADER_BYTES:
                    self._reject(_PROTOCOL_ERRORS[431])
                    return
            elif etype is h11.Data:
                self._body_size += len(event.data)
                if self._body_size > MAX_BODY_BYTES:  # chunked bodies have no length up front
                    self._reject(_TOO_LARGE)
                    return
                self._body.append(event.data)
            elif etype is h11.EndOfMessage:
                self._idle_since = self._request_since = None
                if not self._dispatch():
                    return
                if self._request_since is None:
                    # Nothing pipelined behind it (_finish looked): skip the
                    # call to next_event() that would only say NEED_DATA.
                    return
            elif etype is h11.ConnectionClosed:
                if self._streaming:
                    self._end_stream_now()  # an SSE client that sends EOF has left
                    transport.close()
                elif self._task is None:
                    transport.close()
                return

    # -- the fast path -----------------------------------------------------

    def _answer_simple(self, target: bytes) -> bool:
        """Answer a simple GET without h11 (which stays IDLE). False: let h11 have it."""
        try:
            handler, query = routes.resolve(b"GET", target)
        except ApiError:
            return False
        if handler not in _SIMPLE_HANDLERS:
            return False
        self._method, self._target = b"GET", target
        self._idle_since = None
        try:
            result = self._api.handle(Request(handler, query, b"", self.peer))
        except ApiError as err:
            result = routes.error_response(err)
        except Exception:
            logger.exception("error answering %s", _path_only(target))
            result = _SERVER_ERROR
        if isinstance(result, Response):
            self._send_simple(result)
        elif hasattr(result, "__await__") and not isinstance(result, Stream):
            self._pause_reading()  # whatever the client sends next waits for this answer
            task = self._loop.create_task(self._answer_simple_later(result))
            self._task = task
            self._server._track(task)
        else:
            logger.error("the Api answered %s with a %s", _path_only(target), type(result).__name__)
            self._send_simple(_SERVER_ERROR)
        return True

    async def _answer_simple_later(self, pending: Awaitable[Response]) -> None:
        response = await self._awaited(pending, Response)
        self._task = None
        transport = self._transport
        try:
            if self._send_simple(response) and transport is not None and not self._write_paused:
                self._resume()  # reads again; h11 has the EOF, if the client sent one meanwhile
        except Exception:  # a bug here must not leave the client hanging
            logger.exception("error sending the answer to %s", _path_only(self._target))
            self.abort()

    def _send_simple(self, response: Response) -> bool:
        """Write the answer; then close (stop() has begun) or wait for the next request."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if logger.isEnabledFor(logging.DEBUG):
            self._log_answer(response.status)
        transport.write(_raw(response, close=not self._keep_alive))
        if not self._keep_alive:
            transport.close()
            return False
        self._method = self._target = b""
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)
        if self._write_paused:
            self._pause_reading()  # the client isn't reading its answers
            return False
        return True

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> Response:
        status = exc.error_status_hint
        if status == 431:
            # The head is over 16 KiB and still incomplete: is it the first line?
            buffered = self._conn.trailing_data[0]
            line_end = buffered.find(b"\n")
            if line_end < 0 or line_end > MAX_REQUEST_LINE_BYTES:
                return _URI_TOO_LONG
        return _PROTOCOL_ERRORS.get(status, _PROTOCOL_ERRORS[400])

    def _dispatch(self) -> bool:
        """Answer the request just read. True: answered, read the next one."""
        if self._body:
            body = b"".join(self._body)
            self._body = []
        else:
            body = b""
        try:
            handler, query = routes.resolve(self._method, self._target)
            result = self._api.handle(Request(handler, query, body, self.peer))
        except ApiError as err:
            return self._finish(routes.error_response(err))
        except Exception:
            logger.exception("error answering %s", _path_only(self._target))
            return self._finish(_SERVER_ERROR)
        if type(result) is Response:  # the fast path: answered from this callback
            return self._finish(result)
        if isinstance(result, Stream):
            self._start_stream(result)
            return False
        if isinstance(result, Response):
            return self._finish(result)
        if not hasattr(result, "__await__"):
            logger.error("the Api answered %s with a %s", _path_only(self._target), type(result).__name__)
            return self._finish(_SERVER_ERROR)
        # Stepping the coroutine by hand here, to skip the task when the Api
        # answers without waiting, measured no faster, and would run it
        # outside any task (asyncio.timeout() needs one).
        task = self._loop.create_task(self._answer_later(result))
        self._task = task
        self._server._track(task)
        # Anything pipelined behind this request stays in h11's buffer until
        # _resume; more data arriving meanwhile makes h11 say PAUSED.
        return False

    async def _answer_later(self, pending: Awaitable[Response | Stream]) -> None:
        response = await self._awaited(pending, (Response, Stream))
        self._task = None
        try:
            if isinstance(response, Stream):
                self._start_stream(response)
            elif self._finish(response):
                self._resume()
        except Exception:  # a bug here must not leave the client hanging
            logger.exception("error sending the answer to %s", _path_only(self._target))
            self.abort()

    async def _awaited(self, pending: Awaitable[Any], kinds: type | tuple[type, ...]) -> Any:
        """The Api's later answer; an ApiError as its error answer, anything else as 500."""
        try:
            response = await pending
            if not isinstance(response, kinds):
                raise TypeError(f"the Api's awaitable returned a {type(response).__name__}")
        except ApiError as err:
            return routes.error_response(err)
        except Exception:
            logger.exception("error answering %s", _path_only(self._target))
            return _SERVER_ERROR
        return response

    def _finish(self, response: Response) -> bool:
        """Send ``response``; then close, or get ready for the next request.

        True when the connection stays open and the next request may be read.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        conn = self._conn
        if logger.isEnabledFor(logging.DEBUG):
            self._log_answer(response.status)
        out = conn.send(_response_event(response, close=not self._keep_alive))
        if response.body and self._method != b"HEAD":
            out += conn.send(h11.Data(data=response.body))
        out += conn.send(_EOM)
        transport.write(out)
        return self._next_cycle()

    def _next_cycle(self) -> bool:
        """After our EndOfMessage: close, or wait for the next request."""
        conn = self._conn
        transport = self._transport
        assert transport is not None
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE or not self._keep_alive:
            transport.close()  # MUST_CLOSE: HTTP/1.0, "connection: close", client EOF, stop()
            return False
        conn.start_next_cycle()
        self._method = self._target = b""
        now = self._idle_since = self._loop.time()
        # A pipelined request already (partly) here has its clock running.
        self._request_since = now if conn.trailing_data[0] else None
        if self._timer is None:
            self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)
        if self._write_paused:
            # The client isn't reading its answers; read no more requests.
            self._pause_reading()
            return False
        return True

    def _resume(self) -> None:
        """Carry on after an answer sent from a task or after write backpressure."""
        if self._read_paused:
            self._read_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
            if self._request_since is not None:
                self._request_since = self._loop.time()  # its clock ran while we weren't reading
        self._handle_events()

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def _reject(self, response: Response) -> None:
        """Answer an unusable request, then close without resetting the client."""
        transport = self._transport
        assert transport is not None
        conn = self._conn
        self._body = []
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._keep_alive = False
                out = conn.send(_response_event(response, close=True))
                if self._method != b"HEAD":
                    out += conn.send(h11.Data(data=response.body))
                out += conn.send(_EOM)
                transport.write(out)
            except h11.LocalProtocolError:  # h11 won't let us answer: just close
                transport.close()
                return
        # Lingering close: stop writing, drop what the client still sends for
        # a moment, then close. Closing with unread data would reset the
        # connection, and the client could lose the answer.
        self._lingering = True
        self._idle_since = self._request_since = None
        if self._timer is not None:
            self._timer.cancel()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(LINGER_SECONDS, transport.close)

    # -- timers ------------------------------------------------------------

    def _arm_request_timer(self) -> None:
        """Make sure the timer fires by the deadline of the request arriving in pieces."""
        assert self._request_since is not None
        deadline = self._request_since + self._server.request_timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """408 a request that takes too long to arrive; close a connection idle too long.

        The timer is not re-armed per request (that cost a heap push and a
        cancel each time); it checks when it fires and re-arms itself then.
        """
        self._timer = None
        transport = self._transport
        if self._idle_since is None or transport is None or transport.is_closing():
            return  # answering a request; _next_cycle re-arms the timer
        now = self._loop.time()
        if self._request_since is not None and not self._read_paused:
            deadline = self._request_since + self._server.request_timeout
            if now >= deadline:
                logger.debug("request timeout (uid %d, pid %d)", self.peer.uid, self.peer.pid)
                self._reject(self._server._timeout_answer)
                return
        else:
            deadline = self._idle_since + self._server.idle_timeout
            if now >= deadline:
                transport.close()  # between requests: nothing to answer (RFC 9112 §9.5)
                return
        self._timer = self._loop.call_at(deadline, self._on_timer)

    # -- streams -----------------------------------------------------------

    def _start_stream(self, stream: Stream) -> None:
        """Send the head now; a task sends the chunks."""
        transport = self._transport
        self._streaming = True
        self._idle_since = self._request_since = None  # no timeout while streaming
        if transport is not None and not transport.is_closing():
            if logger.isEnabledFor(logging.DEBUG):
                self._log_answer(stream.status)
            # No content-length: h11 frames it chunked, or close-delimited for HTTP/1.0.
            transport.write(self._conn.send(_response_event(stream, close=not self._keep_alive)))
        else:
            self._ending_stream = True  # the client has gone: only close the iterator
        if not self._keep_alive:
            self._ending_stream = True  # stop() has begun: head, last chunk, close
        task = self._loop.create_task(self._stream(stream.chunks))
        self._task = task
        self._server._track(task)

    async def _stream(self, chunks: AsyncIterator[bytes]) -> None:
        self._stream_started = True
        transport = self._transport
        assert transport is not None
        conn = self._conn
        try:
            try:
                while not self._ending_stream and not transport.is_closing():
                    if self._write_paused:  # pull nothing while the client isn't reading
                        self._writable = self._loop.create_future()
                        await self._writable
                        continue
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(f"a stream chunk must be bytes, not {type(chunk).__name__}")
                    if chunk and not transport.is_closing():
                        transport.write(conn.send(h11.Data(data=chunk)))
            except asyncio.CancelledError:
                if not self._ending_stream or transport.is_closing():
                    raise  # the client left, or stop() gave up on us
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # stop(): end cleanly
            finally:
                await _aclose(chunks)
        except Exception:
            logger.exception("error in the stream of %s", _path_only(self._target))
            # Closing without the last chunk tells the client the stream was
            # cut short (RFC 9112 §7.1), rather than that it ended.
            self._streaming = False
            self._task = None
            transport.close()
            return
        ending, self._streaming = self._ending_stream, False
        self._stream_started = self._ending_stream = False
        self._task = None
        if transport.is_closing():
            return
        if ending and self._write_paused:
            transport.abort()  # stop(), and the client isn't reading: don't wait for it
            return
        transport.write(conn.send(_EOM))
        if self._next_cycle():
            self._resume()

    def _end_stream_now(self) -> None:
        """The client has gone: stop pulling chunks (the task closes the iterator)."""
        task = self._task
        if self._streaming and task is not None and self._stream_started and not task.cancelling():
            task.cancel()
        # Not started yet: it will find the transport closing and only close the iterator.

    def _log_answer(self, status: int) -> None:
        logger.debug(
            "%s %s -> %d (pid %d, uid %d)",
            self._method.decode("ascii", "replace"),
            _path_only(self._target),
            status,
            self.peer.pid,
            self.peer.uid,
        )


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    """Close a stream's iterator, whatever it is; a failure is the Api's bug, not ours."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("error closing an event stream")


# h11 validates every header of a Response event it is given, each time; that
# was a fifth of the cost of a request. The events are immutable, and token
# answers differ only in their body, so the events are built once per
# (status, headers) and reused. The cache stays small: content-length is the
# only header that varies.
_response_events: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], h11.Response] = {}


def _response_event(response: Response | Stream, close: bool) -> h11.Response:
    headers = response.headers + _CLOSE if close else response.headers
    key = (response.status, headers)
    event = _response_events.get(key)
    if event is None:
        if len(_response_events) >= 256:
            _response_events.clear()
        event = _response_events[key] = h11.Response(
            status_code=response.status,
            headers=headers,
            reason=routes.REASONS.get(response.status, b""),
        )
    return event


def _path_only(target: bytes) -> str:
    """The path of a request target, for logs: the query may name scopes."""
    return target.partition(b"?")[0][:200].decode("ascii", "replace")
