"""Is the wall clock right yet? (A Raspberry Pi without an RTC boots with a wrong one.)

devicelink never needs the wall clock to expire a token within a run (that is
``time.monotonic()``, see ``tokens/model.py``). It needs to know whether the wall
clock can be trusted for three things:

- carrying an expiry across a restart: a token restored while the clock is not
  synchronised is of unknown age and is refreshed before it is served;
- ``clock_synced`` in the status answer, and the *waiting for network time* screen;
- explaining a TLS failure: before NTP has run, the clock may be earlier than a
  server certificate's ``notBefore`` and every handshake fails with
  *certificate is not yet valid* (:func:`explain_failure`).

Two sources, asked in this order (:class:`ClockProbe`):

1. systemd-timesyncd touches ``/run/systemd/timesync/synchronized`` each time it
   synchronises (``/run`` is a tmpfs, so the file never survives a reboot); when
   the kernel cannot be asked (below) but timesyncd's directory exists without
   that file, timesyncd has not synchronised yet;
2. the kernel's own view through ``adjtimex(2)`` with ``modes = 0`` (a read that
   needs no privilege): synchronised when ``STA_UNSYNC`` is clear and the call
   does not return ``TIME_ERROR``. Every NTP client that disciplines the kernel
   clock (timesyncd, chrony, ntpd) clears ``STA_UNSYNC``; setting the clock by
   hand (``date -s``, fake-hwclock, an RTC at boot) sets it again, and so does the
   kernel itself when nothing has disciplined the clock for many hours.

``None`` only when neither can be asked (not Linux, no libc, a seccomp filter).
``DEVICELINK_CLOCK_SYNCED=1`` (or ``0``) in the environment overrides both: for a
device whose RTC is known to be good but that never sees an NTP server, and for tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable, Mapping, NamedTuple

logger = logging.getLogger(__name__)

TIMESYNC_RUN_DIR = Path("/run/systemd/timesync")
SYNC_FLAG = "synchronized"
OVERRIDE_ENV = "DEVICELINK_CLOCK_SYNCED"

STA_UNSYNC = 0x0040  # <linux/timex.h>: the clock is not synchronised
TIME_ERROR = 5  # adjtimex's return value when the clock is not synchronised
TIMEX_SIZE = 256  # sizeof(struct timex) is 208 on 64-bit and 128 on 32-bit; the kernel writes all of it

CACHE_SECONDS = 1.0  # the answer is read for every status request and every screen

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

#: ``adjtimex(2)`` with ``modes = 0``: ``(return value, status)``. Raises ``OSError`` when
#: the call fails and ``NotImplementedError`` when there is no such call here.
Adjtimex = Callable[[], "tuple[int, int]"]


class ClockReading(NamedTuple):
    synced: bool | None
    source: str  # "timesyncd", "kernel", "environment" or "unknown": for logs and `doctor`


def kernel_adjtimex() -> tuple[int, int]:
    """The real ``adjtimex(2)`` through libc, with ``modes = 0`` (read only)."""
    import ctypes

    call, timex = _libc_adjtimex()
    buf = timex()  # zeroed, so modes = 0: nothing is changed
    rc = call(ctypes.byref(buf))
    if rc == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"adjtimex: {os.strerror(errno)}")
    return rc, buf.status


_LIBC: tuple | None = None


def _libc_adjtimex() -> tuple:
    """libc's ``adjtimex`` and a ``struct timex`` type, built once.

    The plain ``adjtimex`` symbol is the call's native ABI: ``long`` fields are
    ``c_long`` (4 bytes on armhf/i386, 8 on arm64/x86-64). On a 32-bit system built
    with 64-bit ``time_t`` (Debian 13 armhf) C code is redirected to ``__adjtimex64``
    by the headers; ``dlsym("adjtimex")`` still returns the classic call, whose layout
    this is. Only the fields up to ``status`` are read; the rest is padding, as the
    kernel writes the whole struct.
    """
    global _LIBC
    if _LIBC is not None:
        return _LIBC
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("adjtimex(2) is Linux only")
    import ctypes

    class Timex(ctypes.Structure):
        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
        ]

    class TimexBuffer(ctypes.Union):
        _anonymous_ = ("fields",)
        _fields_ = [("fields", Timex), ("_room", ctypes.c_ubyte * TIMEX_SIZE)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.adjtimex
    except (OSError, AttributeError) as exc:
        raise NotImplementedError(f"no adjtimex in libc: {exc}") from exc
    call.argtypes = [ctypes.POINTER(TimexBuffer)]
    call.restype = ctypes.c_int
    _LIBC = (call, TimexBuffer)
    return _LIBC


class ClockProbe:
    """Whether the wall clock is synchronised, cached for ``cache_for`` seconds.

    Everything it reads is injectable: ``run_dir`` (timesyncd's runtime directory),
    ``adjtimex`` (the syscall), ``clock`` (monotonic, for the cache) and ``environ``.
    """

    def __init__(self, run_dir: Path | str = TIMESYNC_RUN_DIR, adjtimex: Adjtimex | None = kernel_adjtimex, *,
                 clock: Callable[[], float] = time.monotonic, cache_for: float = CACHE_SECONDS,
                 environ: Mapping[str, str] | None = None) -> None:
        self.flag = Path(run_dir) / SYNC_FLAG
        self.adjtimex = adjtimex
        self.clock, self.cache_for = clock, cache_for
        self.environ = os.environ if environ is None else environ
        self._cached: ClockReading | None = None
        self._read_at = float("-inf")
        self._warned = False

    def __call__(self) -> bool | None:
        return self.reading().synced

    def reading(self) -> ClockReading:
        now = self.clock()
        if self._cached is None or not 0 <= now - self._read_at < self.cache_for:
            self._cached, self._read_at = self.check(), now
        return self._cached

    def check(self) -> ClockReading:
        """Ask again, bypassing the cache."""
        forced = self._override()
        if forced is not None:
            return ClockReading(forced, "environment")
        try:
            if self.flag.exists():
                return ClockReading(True, "timesyncd")
        except OSError:  # e.g. EACCES on a locked-down /run: ask the kernel instead
            pass
        if self.adjtimex is None:
            return ClockReading(None, "unknown")
        try:
            rc, status = self.adjtimex()
        except (OSError, NotImplementedError, AttributeError, ValueError) as exc:
            if not self._warned:
                logger.info("cannot ask the kernel whether the clock is synchronised: %s", exc)
                self._warned = True
            # Under the unit's seccomp filter (ProtectClock= refuses adjtimex): timesyncd runs
            # (its directory exists) but has not synchronised yet (no flag).
            try:
                if self.flag.parent.is_dir():
                    return ClockReading(False, "timesyncd")
            except OSError:
                pass
            return ClockReading(None, "unknown")
        return ClockReading(rc != TIME_ERROR and not status & STA_UNSYNC, "kernel")

    def _override(self) -> bool | None:
        value = self.environ.get(OVERRIDE_ENV, "").strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        if value and not self._warned:
            logger.warning("%s=%r is neither 1 nor 0; ignored", OVERRIDE_ENV, value)
            self._warned = True
        return None


_default: ClockProbe | None = None


def default_probe() -> ClockProbe:
    global _default
    if _default is None:
        _default = ClockProbe()
    return _default


def clock_synced() -> bool | None:
    """True when the wall clock is synchronised, False when it is not, None when unknown.
    Cheap: the answer is cached for a second."""
    return default_probe()()


async def wait_for_sync(probe: Callable[[], bool | None] = clock_synced,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                        interval: float = 2.0) -> bool | None:
    """Return once the clock is synchronised (True), or at once when that cannot be known (None).

    For redrawing the *waiting for network time* screen when NTP arrives. Nothing in
    devicelink waits for this before talking to the server: the device grant does not
    need a correct clock, and a TLS failure caused by a wrong clock is retried anyway.
    """
    while True:
        synced = probe()
        if synced is not False:
            return synced
        await sleep(interval)


#: What OpenSSL says when a certificate's validity window does not contain the device's clock.
_TIME_FAILURES = ("certificate is not yet valid", "certificate has expired", "crl is not yet valid")


def explain_failure(reason: str, synced: bool | None) -> str:
    """A network failure's one-line reason, with the likely cause added when a TLS
    certificate was refused for its dates while the clock is not known to be right."""
    if synced is True or not any(text in reason.lower() for text in _TIME_FAILURES):
        return reason
    if synced is False:
        return (f"{reason} (the device clock is not set yet: waiting for network time; "
                "retrying until it is)")
    return f"{reason} (check the device clock: TLS certificates are checked against it)"
