"""HTTP/1.1 on the client's side of the socket, without I/O: requests out, answers in.

The client trusts the daemon with nothing: what sits on the socket path may be
a wedged daemon, an older one, or another program. :class:`ResponseReader`
reads an answer strictly (RFC 9112) and within fixed bounds, and what it does
not accept is a :class:`ProtocolError` whose message is one line:

- the status line is ``HTTP/1.0`` or ``HTTP/1.1``, three digits and a reason of
  visible characters, possibly empty (h11 writes ``HTTP/1.1 200 \\r\\n``);
- every line ends in CRLF (§2.2 lets a reader take a bare LF; we don't);
  field names are tokens, values visible characters, no line folding (§5.2);
- the head is at most :data:`MAX_HEAD` bytes and :data:`MAX_FIELDS` fields;
- the body is framed by ``transfer-encoding: chunked`` alone (with a
  ``content-length`` beside it the answer is refused, §6.1), by one
  ``content-length`` (repeated only with the same value, §6.3), or by the
  end of the connection (§6.3, rule 8); 204 and 304 have none;
- a body read whole is at most ``max_body`` bytes, checked against the
  ``content-length`` or each chunk's size before the data arrives. A streamed
  body (the event stream) has no total; its reader bounds each event;
- interim 1xx answers are skipped, at most :data:`MAX_INTERIM` of them.

Time is the caller's business: the reader never blocks, it only says that it
needs more bytes.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_HEAD = 64 * 1024
MAX_FIELDS = 100
#: A whole answer read into memory. The daemon's largest (the status object) is a few KiB.
MAX_BODY = 1 << 20
MAX_CHUNK_LINE = 1024
MAX_INTERIM = 8

# Byte classes, checked with bytes.translate(None, allowed): what is left is not allowed.
# (No regular expressions: compiling them would be most of this module's import time.)
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN = _ALNUM + b"!#$%&'*+-.^_`|~"  # RFC 9110 §5.6.2
_TEXT = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))  # field values (§5.5), reasons: with obs-text
_HEX = b"0123456789ABCDEFabcdef"
_UNRESERVED = frozenset(_ALNUM + b"-._~")  # RFC 3986 §2.3


class ProtocolError(Exception):
    """The daemon's answer is not HTTP/1.1 as RFC 9112 allows, or is over a bound."""


class NoAnswer(ProtocolError):
    """The connection ended before the first byte of an answer."""


class Head(NamedTuple):
    """An answer's status line and fields; names lower-case, values decoded as Latin-1."""

    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The value of field ``name`` (lower-case), several joined with ``, ``; None if absent."""
        values = [v for k, v in self.fields if k == name]
        return ", ".join(values) if values else None


class _End:
    def __repr__(self) -> str:
        return "END"


#: What :meth:`ResponseReader.next_event` returns once the answer is complete.
END = _End()


def target(path: str, params: dict[str, str] | None = None) -> str:
    """``path?k=v&...`` with the values percent-encoded (RFC 3986 §2.1; a space is ``%20``)."""
    if not params:
        return path
    return path + "?" + "&".join(f"{k}={_quote(v)}" for k, v in params.items())


def _quote(value: str) -> str:
    # surrogatepass: even a command line argument that is not UTF-8 makes a request
    # (the daemon then refuses its value), never an exception here.
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))


def request(method: str, target: str, body: bytes | None = None,
            fields: tuple[tuple[str, str], ...] = ()) -> bytes:
    """One request. A body is sent as JSON with its length; ``b""`` sends ``content-length: 0``."""
    head = [f"{method} {target} HTTP/1.1", "host: devicelink"]
    head += [f"{name}: {value}" for name, value in fields]
    if body is not None:
        if body:
            head.append("content-type: application/json")
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b"")


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """Bytes in (:meth:`feed`, :meth:`feed_eof`), one answer out (:meth:`next_event`).

    ``max_body`` bounds the body (None: unbounded, for a stream read piece by piece).
    """

    def __init__(self, max_body: int | None = MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._eof = False
        self._state = _HEAD
        self._remaining = 0  # body bytes due: of the content-length, or of this chunk
        self._received = 0  # body bytes so far
        self._interim = 0
        self._version = 1
        self._keep_alive = False
        self._status_checked = False

    @property
    def reusable(self) -> bool:
        """The answer is complete and the connection may carry another request."""
        return self._state == _DONE and self._keep_alive and not self._buf and not self._eof

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_event(self) -> Head | bytes | _End | None:
        """The :class:`Head`, then pieces of the body (``bytes``), then :data:`END`;
        None while more bytes are needed. Raises :class:`ProtocolError`."""
        state = self._state
        if state == _HEAD:
            return self._head()
        if state in (_LENGTH, _CHUNK_DATA):
            return self._data()
        if state == _CHUNK_SIZE:
            return self._chunk_size()
        if state == _CHUNK_END:
            return self._chunk_end()
        if state == _TRAILERS:
            return self._trailers()
        if state == _UNTIL_CLOSE:
            return self._until_close()
        return END

    # -- the head -----------------------------------------------------------------------

    def _head(self) -> Head | bytes | _End | None:
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end + 4 > MAX_HEAD:
                self._check_partial_head()
                return None
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            self._status_checked = False
            head = self._parse_head(lines)
            if 100 <= head.status < 200:  # interim (§15.2): the real answer follows
                self._interim += 1
                if head.status == 101 or self._interim > MAX_INTERIM:
                    raise ProtocolError(f"unexpected interim answer {head.status}")
                continue
            self._frame(head)
            return head

    def _check_partial_head(self) -> None:
        """Refuse a head that can never be valid as soon as it shows, rather than at the bound."""
        buf = self._buf
        if len(buf) > MAX_HEAD:
            raise ProtocolError(f"the answer's head is over {MAX_HEAD} bytes")
        if not self._status_checked:
            line_end = buf.find(b"\r\n")
            if line_end >= 0:
                self._status_line(bytes(buf[:line_end]))
                self._status_checked = True
            elif not b"HTTP/1."[:len(buf)] == buf[:7]:
                raise ProtocolError(f"not an HTTP answer: {_show(buf)}")
        if buf.count(b"\n") != buf.count(b"\r\n") or buf.count(b"\r") != buf.count(b"\r\n") + buf.endswith(b"\r"):
            raise ProtocolError("a line of the answer's head does not end in CRLF")
        if self._eof:
            if not buf and not self._interim:
                raise NoAnswer("the connection closed without an answer")
            raise ProtocolError("the connection closed in the middle of the answer's head")

    def _parse_head(self, lines: list[bytes]) -> Head:
        version, status, reason = self._status_line(lines[0])
        self._version = version
        self._keep_alive = version == 1  # HTTP/1.0: one answer per connection
        return Head(status, reason, _fields(lines[1:]))

    @staticmethod
    def _status_line(line: bytes) -> tuple[int, int, str]:
        """``HTTP/1.x SP 3DIGIT [SP reason]`` (§4; h11 also takes a missing reason), the
        status 100 to 599 (RFC 9110 §15)."""
        version, status, reason = line[7:8], line[9:12], line[13:]
        if (line[:7] != b"HTTP/1." or version not in (b"0", b"1") or line[8:9] != b" " or len(status) != 3
                or not status.isdigit() or not b"100" <= status <= b"599" or line[12:13] not in (b"", b" ")
                or reason.translate(None, _TEXT)):
            raise ProtocolError(f"a malformed status line: {_show(line)}")
        return int(version), int(status), reason.decode("latin-1")

    def _frame(self, head: Head) -> None:
        """Choose how the body ends (RFC 9112 §6.3)."""
        connection = head.get("connection")
        if connection is not None and "close" in (t.strip().lower() for t in connection.split(",")):
            self._keep_alive = False
        coding, length = head.get("transfer-encoding"), head.get("content-length")
        if head.status in (204, 304):
            self._state = _DONE
        elif coding is not None:
            if length is not None:
                raise ProtocolError("the answer has both transfer-encoding and content-length")
            if coding.lower() != "chunked":  # one field, one coding
                raise ProtocolError(f"unsupported transfer-encoding: {_show(coding.encode('latin-1'))}")
            if self._version == 0:  # §6.1: faulty framing in an HTTP/1.0 message
                raise ProtocolError("transfer-encoding in an HTTP/1.0 answer")
            self._state = _CHUNK_SIZE
        elif length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not (value := values.pop()).isascii() or not value.isdigit() or len(value) > 18:
                raise ProtocolError(f"a malformed content-length: {_show(length.encode('latin-1'))}")
            self._remaining = int(value)
            self._check_size(self._remaining)
            self._state = _LENGTH
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE

    # -- the body ------------------------------------------------------------------------

    def _check_size(self, more: int) -> None:
        if self.max_body is not None and self._received + more > self.max_body:
            raise ProtocolError(f"an answer over {self.max_body} bytes")

    def _data(self) -> bytes | _End | None:
        if self._state == _LENGTH and self._remaining == 0:
            self._state = _DONE
            return END
        buf = self._buf
        if not buf:
            if self._eof:
                raise ProtocolError(f"the connection closed {self._remaining} bytes before the end of the answer")
            return None
        piece = bytes(buf[:self._remaining])
        del buf[:len(piece)]
        self._remaining -= len(piece)
        self._received += len(piece)
        if self._state == _CHUNK_DATA and self._remaining == 0:
            self._state = _CHUNK_END
        return piece

    def _chunk_size(self) -> bytes | _End | None:
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_CHUNK_LINE or b"\n" in buf:
                raise ProtocolError("a malformed chunk size line")
            return self._need("a chunk size")
        line = bytes(buf[:end])
        size_hex, semicolon, extensions = line.partition(b";")  # §7.1.1: extensions are ignored
        if not semicolon:
            size_hex = size_hex.rstrip(b" \t")
        if not 0 < len(size_hex) <= 16 or size_hex.translate(None, _HEX) or extensions.translate(None, _TEXT):
            raise ProtocolError(f"a malformed chunk size line: {_show(line)}")
        del buf[:end + 2]
        size = int(size_hex, 16)
        if size == 0:
            self._state = _TRAILERS
            return self._trailers()
        self._check_size(size)
        self._remaining = size
        self._state = _CHUNK_DATA
        return self._data()

    def _chunk_end(self) -> bytes | _End | None:
        buf = self._buf
        if len(buf) < 2:
            if buf[:1] not in (b"", b"\r"):
                raise ProtocolError("a chunk longer than its size")
            return self._need("the end of a chunk")
        if buf[:2] != b"\r\n":
            raise ProtocolError("a chunk longer than its size")
        del buf[:2]
        self._state = _CHUNK_SIZE
        return self._chunk_size()

    def _trailers(self) -> _End | None:
        """Trailer fields (§7.1.2) are read and dropped: the daemon sends none."""
        buf = self._buf
        if buf[:2] == b"\r\n":
            end = -2
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ProtocolError(f"trailer fields over {MAX_HEAD} bytes")
                return self._need("the end of the answer")
            _fields(bytes(buf[:end]).split(b"\r\n"))
        del buf[:end + 4]
        self._state = _DONE
        return END

    def _until_close(self) -> bytes | _End | None:
        buf = self._buf
        if buf:
            self._check_size(len(buf))
            self._received += len(buf)
            piece = bytes(buf)
            buf.clear()
            return piece
        if self._eof:
            self._state = _DONE
            return END
        return None

    def _need(self, what: str) -> None:
        if self._eof:
            raise ProtocolError(f"the connection closed before {what}")
        return None


def _fields(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Header (or trailer) field lines, checked: ``(name, value)``, the name lower-case."""
    if len(lines) > MAX_FIELDS:
        raise ProtocolError(f"the answer has more than {MAX_FIELDS} header fields")
    fields = []
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise ProtocolError("a line of the answer's head does not end in CRLF")
        name, colon, value = line.partition(b":")
        if not colon or name.translate(None, _TOKEN) or not name:
            raise ProtocolError(f"a malformed header field: {_show(line)}")
        value = value.strip(b" \t")
        if value.translate(None, _TEXT):
            raise ProtocolError(f"a header field with control characters: {_show(name)}")
        fields.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return tuple(fields)


def _show(data: bytes | bytearray, limit: int = 60) -> str:
    """Bytes from the peer, made safe for a one-line message."""
    text = repr(bytes(data[:limit]))
    return text + ("..." if len(data) > limit else "")
