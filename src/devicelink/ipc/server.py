"""The socket API over a Unix socket: the listener, and who it lets in.

The parts, as uvicorn splits its server: here :class:`SocketServer` (the
socket file through :mod:`.sockfile`, accepting, admission, refusals,
shutdown); :mod:`.peer` (who is calling, from the kernel); :mod:`.fastpath`
(the protocol every connection starts with: one simple GET alone in a read,
answered without h11 or a transport); :mod:`.connection` and
:mod:`.answering` (the h11 protocol, for everything else); :mod:`.eventstream`
(server-sent events); :mod:`.canned` (the limits, and the answers written
without the Api).

We accept connections ourselves (``loop.add_reader`` on the listening
socket), so a connection is judged before anything is built for it:

- The peer's credentials are read from the kernel. If the kernel can't say
  who is calling, we hang up.
- The caps count open connections: ``max_connections`` in total and
  ``max_connections_per_uid`` for the caller's uid. A client that closes a
  connection and at once opens the next (curl, the CLI) is often accepted
  before the loop has read the first one's EOF. So every connection is also
  in an epoll set that reports only hang-ups, and at a cap, before refusing,
  one ``epoll_wait`` on it finds the connections whose client has closed its
  end; those with nothing left to read or answer are closed, and no longer count.
- Beyond a cap the caller gets a pre-built 503 ``server_busy`` written
  straight to the socket, so a client hammering the socket costs us little.
  We then shut down our side only and close a second later, so a client that
  writes its request after our answer (it connected before we accepted)
  doesn't get EPIPE instead of the 503; httpcore < 1.0 (Bookworm's) would not
  read the answer then. At most ``_REFUSED_KEPT`` sockets wait like that; a
  flood just closes them sooner. Refusals are logged at most once a minute
  per uid, with a count.
- The listen backlog is 1024 and each wake-up accepts up to 128: connects
  come in bursts, and on AF_UNIX a non-blocking ``connect()`` to a full
  backlog fails with EAGAIN, which asyncio mistakes for "in progress" and
  turns into a socket that was never connected (CPython gh-117208).

Shutdown follows uvicorn's ``Server.shutdown``: stop accepting, unlink the
socket file, close idle connections, end streams at once (last chunk, then
close), let in-flight requests finish (their answers carry ``connection:
close``), and after ``shutdown_timeout`` cancel what is still running and
abort what is left.

Memory is bounded: one read buffer shared by all connections, h11's buffer
capped by the head limit, bodies by the body limit, write buffers by flow
control, and per-uid bookkeeping dropped when it reaches zero.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import select
import socket
import struct
import termios
from collections.abc import ValuesView
from typing import Any

from devicelink.errors import SocketInUse
from devicelink.ipc import sockfile
from devicelink.ipc.canned import BUSY, timeout_answer
from devicelink.ipc.connection import H11Connection
from devicelink.ipc.fastpath import FastConnection, IdleConnections
from devicelink.ipc.peer import peer_credentials
from devicelink.ipc.routes import Api

__all__ = ["SocketInUse", "SocketServer", "peer_credentials"]

logger = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0  # seconds between "refusing connections" warnings per uid
# Accepts per wake-up: enough to drain the backlog (a refusal costs ~10 µs), few
# enough that a flood of connects can't starve open connections for long.
_ACCEPT_BATCH = 128
_ACCEPT_RETRY_DELAY = 1.0  # after EMFILE and the like, as asyncio's own accept loop does
_REFUSED_KEPT = 64  # refused sockets half-closed at once, waiting to be closed
_REFUSED_SECONDS = 1.0
_READ_SIZE = 64 * 1024
_INT = struct.Struct("i")

Connection = FastConnection | H11Connection


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
        self.path = path if sock is None else sockfile.sock_name(sock)
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
        self._file_id: sockfile.FileId | None = None
        self._by_fd: dict[int, Connection] = {}  # the connections that count
        self._per_uid: dict[int, int] = {}  # uid -> open connections; no zero entries
        self._hangups: select.epoll | None = None  # every connection's fd, for EPOLLHUP only
        self._refused: dict[int, list[float]] = {}  # uid -> [last warning, refused since]
        self._half_closed: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self._half_closed_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drained: asyncio.Future[None] | None = None
        self._stopping = False
        self._read_buffer = memoryview(bytearray(_READ_SIZE))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: IdleConnections
        self._timeout_answer = timeout_answer(request_timeout)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bind (unless given a socket) and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("the server is already running")
        loop = self._loop = asyncio.get_running_loop()
        self._idle = IdleConnections(loop, self.idle_timeout)
        self._hangups = select.epoll()
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
        self._idle.cancel()
        if self._hangups is not None:
            self._hangups.close()
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

    @property
    def _connections(self) -> ValuesView[Connection]:
        return self._by_fd.values()

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
        """Who is it, and is there room for them? Then the fast path has the socket."""
        try:
            sock.setblocking(False)
            peer = peer_credentials(sock)
        except OSError as exc:
            logger.warning("cannot read the peer's credentials (%s); hanging up", exc)
            sock.close()
            return
        uid = peer.uid
        why = self._no_room(uid)
        if why is not None:
            self._note_refusal(uid, why, peer.pid)
            self._refuse(sock)
            return
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        conn = self._by_fd[sock.fileno()] = FastConnection(self, sock, peer)
        assert self._hangups is not None
        self._hangups.register(conn.fd, 0)  # EPOLLHUP is always reported; _connection_lost unregisters
        conn.start()

    def _no_room(self, uid: int) -> str | None:
        """Why a connection from ``uid`` can't be admitted now; None if it can."""
        if len(self._connections) >= self.max_connections:
            self._sweep()
            if len(self._connections) >= self.max_connections:
                return f"{self.max_connections} connections open in total"
        if self._per_uid.get(uid, 0) >= self.max_connections_per_uid:
            self._sweep()
            count = self._per_uid.get(uid, 0)
            if count >= self.max_connections_per_uid:
                return f"uid {uid} has {count} connections open"
        return None

    def _sweep(self) -> None:
        """Close the connections whose client has closed its end, with nothing unread or unanswered."""
        assert self._hangups is not None
        for fd, _ in self._hangups.poll(0, len(self._connections) or 1):
            conn = self._by_fd.get(fd)
            if conn is not None and not conn.busy and not _unread(fd):
                conn.retire()
                self._connection_lost(conn)

    def _refuse(self, sock: socket.socket) -> None:
        """503, then EOF; the close comes a second later (see the module docstring)."""
        try:
            sock.send(BUSY)  # a fresh socket's buffer always has room for it
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
        assert self.path is not None
        if sockfile.prepare(self.path):
            raise SocketInUse(f"another process is already listening on {self.path}")
        sock, self._file_id = sockfile.bind(self.path, self.mode)
        return sock

    def _unlink(self) -> None:
        file_id, self._file_id = self._file_id, None
        if file_id is not None:
            assert self.path is not None
            sockfile.unlink_if_ours(self.path, file_id)

    # -- bookkeeping for the connections -----------------------------------

    def _hand_over(self, fast: FastConnection, sock: socket.socket, **state: Any) -> None:
        """The fast path gives up ``sock``: an asyncio transport with the h11 protocol takes it."""
        conn = self._by_fd[fast.fd] = H11Connection(self, fast.peer, fast.fd, **state)
        loop = self._loop
        assert loop is not None
        # What connect_accepted_socket() does, without its task and future: the
        # selector loop's own transport, set up from this callback.
        make_transport = getattr(loop, "_make_socket_transport", None)
        if make_transport is None:  # another loop
            task = loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))  # type: ignore[arg-type]
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._connected(t, conn, sock))
            return
        try:
            make_transport(sock, conn)
        except Exception as exc:
            logger.warning("cannot set up a connection: %s", exc)
            self._connection_lost(conn)
            sock.close()

    def _connected(self, task: asyncio.Task[Any], conn: H11Connection, sock: socket.socket) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.warning("cannot set up a connection: %s", task.exception())
            self._connection_lost(conn)
            sock.close()

    def _connection_lost(self, conn: Connection) -> None:
        """``conn`` no longer counts; called before its socket is closed."""
        if self._by_fd.get(conn.fd) is not conn:
            return
        del self._by_fd[conn.fd]
        try:  # before the fd is closed: it can't have been reused yet
            self._hangups.unregister(conn.fd)  # type: ignore[union-attr]
        except (OSError, ValueError):  # the fd closed already; the epoll set closed by stop()
            pass
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


def _unread(fd: int) -> int:
    """Bytes the client sent that we haven't read yet (``FIONREAD``)."""
    try:
        return _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * _INT.size))[0]
    except OSError:
        return 0
