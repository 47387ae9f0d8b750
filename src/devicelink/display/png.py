"""``display.driver = "png"``: frames to a folder, for the simulator and tests.

Every pushed frame becomes ``frame-NNNNNN.png`` in ``png_dir`` (numbered from
1, or on from the highest number already there, so a restart never overwrites
history), and ``latest.png`` is replaced by the same picture atomically
(written to a temporary name in the folder, then renamed over), so a viewer
polling it never reads half a file.

Size: ``width`` x ``height``, default 128x64. Panels up to 128x64 are drawn in
mode "1" like a mono OLED, larger ones in RGB like a TV. ``rotate`` is
ignored: the PNG is what a viewer sees, not the panel's memory.

:meth:`close` writes a blank (black) frame, as the OLED and the framebuffer
blank the screen when the daemon stops.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from devicelink.config import DisplayConfig
from devicelink.display.panel import PanelDisplay
from devicelink.errors import ConfigError, HardwareUnavailable
from devicelink.files import write_atomic

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_SIZE = (128, 64)
LATEST = "latest.png"
_FRAME = re.compile(r"frame-(\d{6,})\.png")


def open_png(cfg: DisplayConfig, *, source: Path | None = None) -> PanelDisplay:
    """The png driver for ``cfg`` as a Display; ``source`` is the config file, for errors."""
    if cfg.png_dir is None:
        where = f"{source}: [display]" if source else "[display]"
        raise ConfigError(f"{where} png_dir: missing; driver 'png' writes its frames there")
    size = (cfg.width or DEFAULT_SIZE[0], cfg.height or DEFAULT_SIZE[1])
    return PanelDisplay(PngFolder(cfg.png_dir, size))


def mode_for(size: tuple[int, int]) -> str:
    """Mono like an OLED up to 128x64, RGB like a TV above."""
    return "1" if size[0] <= 128 and size[1] <= 64 else "RGB"


class PngFolder:
    """A folder of numbered PNGs as a :class:`~devicelink.display.panel.FrameSink`."""

    def __init__(self, directory: str | os.PathLike[str], size: tuple[int, int] = DEFAULT_SIZE,
                 mode: str | None = None) -> None:
        self.directory = Path(directory)
        self.size = size
        self.mode = mode or mode_for(size)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            existing = [int(m.group(1)) for m in map(_FRAME.fullmatch, os.listdir(self.directory)) if m]
        except OSError as exc:
            raise HardwareUnavailable(f"png: cannot use {self.directory}: {exc.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise HardwareUnavailable(f"png: {self.directory} is not writable by this user")
        self.count = max(existing, default=0)  # number of the last frame in the folder
        self.written = 0  # frames written by this instance
        self._open = True

    @property
    def latest(self) -> Path:
        return self.directory / LATEST

    def push(self, image: Image.Image) -> None:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        number = self.count + 1
        write_atomic(self.directory / f"frame-{number:06d}.png", data, mode=0o644, durable=False)
        write_atomic(self.latest, data, mode=0o644, durable=False)
        self.count = number
        self.written += 1

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if not self.written:  # nothing shown, nothing to blank
            return
        from PIL import Image

        try:
            self.push(Image.new(self.mode, self.size, 0))
        except OSError as exc:
            logger.warning("png: could not write the blank frame to %s: %s", self.directory, exc)
