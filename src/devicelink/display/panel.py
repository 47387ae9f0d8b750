"""The :class:`Display` for every pixel panel: render a frame, push it only if it changed.

The OLED, HDMI framebuffer and PNG-folder drivers differ only in where a
finished frame goes. Each is a :class:`FrameSink` (its pixel ``size`` and
``mode``, ``push(image)``, ``close()``); :class:`PanelDisplay` does the rest:

* every :meth:`~PanelDisplay.show` renders the screen with
  :func:`devicelink.display.render.render` at the sink's size and mode;
* the frame is pushed only when its pixels differ from the last frame pushed.
  A screen shown again costs a render and a hash, never bus or framebuffer
  traffic. The countdown is whole seconds (``PairingCode.expires_in``), so a
  pairing screen changes at most once per second of ``now`` however often the
  daemon calls: the rate limit falls out of the comparison and needs no timer
  that could hold back a new code;
* a push that raises is not remembered as shown, so the next call retries it
  (the daemon logs the error and carries on: a broken panel must not cost the
  grant);
* :meth:`~PanelDisplay.close` closes the sink, which leaves the panel blank:
  no pairing code outlives the daemon.

The frame is compared by a 128-bit BLAKE2b digest of its bytes rather than by
keeping the bytes: the same answer for our purpose (an accidental collision is
2^-128 a comparison, and nobody can craft a BLAKE2 collision)
and it does not hold a second 6 MB copy of a 1080p frame. Large frames are
hashed a strip at a time, which is faster than one ``tobytes()`` (the strip
stays in the CPU cache) and never allocates a frame-sized buffer.

Nothing here imports luma or segno: each sink's module imports its own
library, and :mod:`devicelink.display.factory` imports only the one the config
names.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from devicelink.display.base import Screen

    RenderFn = Callable[[Screen, tuple[int, int], str, float], Image.Image]

logger = logging.getLogger(__name__)


STRIP_BYTES = 256 * 1024  # hash large frames in strips of about this many bytes


def frame_digest(image: Image.Image) -> bytes:
    """A 16-byte digest of ``image``'s pixels (size and mode are the sink's, fixed)."""
    width, height = image.size
    rows = max(1, STRIP_BYTES // (4 * width))  # Pillow keeps up to 4 bytes a pixel
    if rows >= height:
        return hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    digest = hashlib.blake2b(digest_size=16)
    for top in range(0, height, rows):
        digest.update(image.crop((0, top, width, min(height, top + rows))).tobytes())
    return digest.digest()


class FrameSink(Protocol):
    """Where finished frames go: a panel, a framebuffer, a folder."""

    size: tuple[int, int]  # (width, height) the renderer draws, after any rotation
    mode: str  # "1" for mono panels, "RGB" otherwise

    def push(self, image: Image.Image) -> None:
        """Put ``image`` (exactly ``size`` and ``mode``) on the screen."""

    def close(self) -> None:
        """Blank the screen and release the device; a second call does nothing."""


class PanelDisplay:
    """A :class:`~devicelink.display.base.Display` over any :class:`FrameSink`.

    ``render`` is :func:`devicelink.display.render.render` unless given (a
    test or a simulator may draw its own frames).
    """

    #: Rendering plus a bus or framebuffer write: the daemon calls show() from a worker thread.
    draws_slowly = True

    def __init__(self, sink: FrameSink, *, render: RenderFn | None = None) -> None:
        if render is None:
            from devicelink.display.render import render
        self.sink = sink
        self._render = render
        self._shown: bytes | None = None  # digest of the frame on the panel
        self._closed = False
        self.pushes = 0  # frames sent to the sink, for tests and the benchmark

    def show(self, screen: Screen, now: float) -> None:
        if self._closed:
            return
        image = self._render(screen, self.sink.size, self.sink.mode, now)
        digest = frame_digest(image)
        if digest == self._shown:
            return
        self.sink.push(image)
        self._shown = digest
        self.pushes += 1
        logger.debug("pushed frame %d (%s)", self.pushes, screen.state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shown = None
        self.sink.close()
