"""Server-sent events (WHATWG HTML, "Parsing an event stream"): bytes in, events out.

What ``GET /v1/events`` sends, however the bytes are cut into chunks and reads.
"""

from __future__ import annotations

import json
import re

from devicelink.errors import DaemonError
from devicelink.ipc.client import MAX_EVENT_BYTES, Event

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseParser:
    """Turns the bytes of an event stream into :class:`Event` s, however they are chunked.

    Lines end in CRLF, LF or CR; ``:`` starts a comment (the daemon's keep-alives);
    ``event:``, ``data:`` (several are joined with newlines) and ``id:`` fill the
    event and a blank line dispatches it. An event without data is dropped, and so
    is one whose data is not a JSON object: the daemon sends only those, and a
    newer daemon's other kinds must not break an older app. Bytes after the last
    blank line are an unfinished event, dropped if the stream ends there.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the previous chunk ended in CR: a LF now is its CRLF
        self._first_line = True
        self._name = ""
        self._data: list[str] = []
        self._size = 0
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[Event] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            self._line(buffer[start:match.start()], events)
            start = match.end()
        self._buffer = buffer[start:]
        if buffer.endswith(b"\r") and start == len(buffer):
            self._skip_lf = True  # a CR at the very end: the line is done, but a LF may follow
        if len(self._buffer) + self._size > MAX_EVENT_BYTES:
            raise DaemonError("invalid_response", f"an event larger than {MAX_EVENT_BYTES} bytes", 200)
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            line = line.removeprefix("\ufeff")
            self._first_line = False
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
            self._size += len(raw)
        elif field == "id" and "\0" not in value:
            self.last_id = value or None
        # "retry" and unknown fields: ignored (we never reconnect on our own)

    def _dispatch(self, events: list[Event]) -> None:
        name, data = self._name or "message", self._data
        self._name, self._data, self._size = "", [], 0
        if not data:
            return
        try:
            obj = json.loads("\n".join(data))
        except ValueError:
            return
        if isinstance(obj, dict):
            events.append(Event(name, obj, self.last_id))
