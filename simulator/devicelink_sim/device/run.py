"""``devicelink-sim device``: the development server, the virtual device and its page, together.

:class:`Simulation` starts the three (the demo uses it too); :func:`main` is the
command, which prints the page's address and runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from devicelink.identity.settings import SERIAL

from ..authserver import DevServer
from ..faults import ENDPOINTS, SWITCH_DEFAULTS, SWITCH_KINDS
from .board import SCREENS, DeviceFailed, VirtualDevice
from .hub import Hub
from .web import PageServer, build_app

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8628  # RFC 8628; another free port when it is taken
RECENT_REQUESTS = 14
#: What each switch does to a request, for the page (faults.py: SWITCH_DEFAULTS).
FAULT_LABELS = {
    "ok": "latency: the real answer after 3 s",
    "status": "503 with a proxy's HTML page",
    "reset": "connection reset (TCP RST), no answer",
    "close": "connection closed (FIN), no answer",
    "timeout": "no answer for 60 s (release ends it)",
    "malformed": "200 with truncated JSON",
    "oversized": "a 200 of more than 1 MiB",
    "revoke": "every grant revoked, then the real answer",
    "slow_down": "400 slow_down",
    "rate_limit": "429 with Retry-After: 5",
    "error_body": "200 with {\"error\": \"server_error\"}",
}


class Simulation:
    """A development server, a :class:`VirtualDevice` paired with it, and the page showing both.

    ``directory`` holds the device's config, state, screen and logs (a new temp dir by
    default, removed at :meth:`stop` unless ``keep``)."""

    def __init__(self, directory: Path | None = None, *, screen: str = "oled", hold_seconds: float = 5.0,
                 port: int = 0, port_fallback: bool = False, access_token_lifetime: int = 60,
                 interval: int = 2, device_code_lifetime: int = 600, keep: bool = False,
                 scope: str | None = None, extra_config: str = "", env: dict[str, str] | None = None,
                 register: bool = True, serial: str | None = None) -> None:
        self.keep = keep or directory is not None
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="dlsim-", dir="/tmp"))
        self.hub = Hub()
        # register: the server takes dynamic registration (RFC 7591, no software statement needed) and
        # the device registers itself with its key and serial, so the phone's page can name it.
        self.server = DevServer(interval=interval, access_token_lifetime=access_token_lifetime,
                                device_code_lifetime=device_code_lifetime, registration=register)
        self._device_args: dict[str, Any] = dict(screen=screen, hold_seconds=hold_seconds,
                                                 extra_config=extra_config, env=env, register=register,
                                                 serial=serial)
        if scope is not None:
            self._device_args["scope"] = scope
        self.device: VirtualDevice | None = None
        self.page: PageServer | None = None
        self._port, self._port_fallback = port, port_fallback
        self._t0 = time.monotonic()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        assert self.page is not None and self.page.url is not None
        return self.page.url

    @property
    def issuer(self) -> str:
        return self.server.issuer

    def start(self) -> Simulation:
        self.server.start()
        self.hub.publish("server", {"issuer": self.server.issuer, "client_id": self.server.client_id,
                                    "verification_uri": f"{self.server.issuer}/device",
                                    "access_token_lifetime": self.server.settings.access_token_lifetime})
        self.server.faults.watchers.append(self.publish_faults)
        self.publish_faults()
        self.device = VirtualDevice(self.directory, self.server.issuer, self.server.client_id, hub=self.hub,
                                    **self._device_args)
        self.page = PageServer(build_app(self.hub, self.device, self.server.faults), self._port,
                               fallback=self._port_fallback).start()
        self.device.start()
        self._ticker = threading.Thread(target=self._tick, name="sim-faults-tick", daemon=True)
        self._ticker.start()
        return self

    def publish_faults(self) -> None:
        faults = self.server.faults
        snapshot = faults.snapshot()
        with faults.lock:
            recent = list(itertools.islice(reversed(faults.log), RECENT_REQUESTS))
        self.hub.publish("faults", {
            "endpoints": list(ENDPOINTS),
            "kinds": [{"kind": k, "label": FAULT_LABELS.get(k, k), "fields": SWITCH_DEFAULTS[k]}
                      for k in SWITCH_KINDS],
            "switches": snapshot["switches"],
            "rules": {e: snapshot.get(e, []) for e in ENDPOINTS},
        })
        self.hub.publish("requests", {
            "counts": snapshot["requests"],
            "recent": [{"at": round(hit.at - self._t0, 1), "request": hit.request, "fault": hit.fault,
                        "outcome": hit.outcome} for hit in recent],
        })

    def _tick(self) -> None:
        # A request's outcome is known after it arrived (and told the watchers): look again.
        while not self._stop.wait(1.0):
            self.publish_faults()

    def stop(self) -> int | None:
        """Stop the daemon (its exit status is returned), the page, the server; remove the
        directory unless kept."""
        self._stop.set()
        code = self.device.stop() if self.device is not None else None
        self.hub.close()
        if self.page is not None:
            self.page.stop()
        if self.publish_faults in self.server.faults.watchers:
            self.server.faults.watchers.remove(self.publish_faults)
        self.server.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def __enter__(self) -> Simulation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def uninterrupted(stop, sigterm_after=signal.SIG_DFL):
    """``stop()`` with SIGINT and SIGTERM ignored (no second interruption halfway through stopping
    the daemon), then SIGINT raising KeyboardInterrupt again and SIGTERM set to ``sigterm_after``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return stop()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, sigterm_after)


def build_parser() -> argparse.ArgumentParser:
    from ..cli import _Help  # defaults shown, but not a None

    parser = argparse.ArgumentParser(
        prog="devicelink-sim device", formatter_class=_Help,
        description="The real daemon (devicelink run) on a virtual board: a png screen, a status LED and a "
                    "button on gpiozero's mock pins, paired with the development server. Serves one page that "
                    "shows them live, the phone's verification page and the server's fault switches.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the page's port on 127.0.0.1 ({DEFAULT_PORT}: another free one when that is taken; "
                             "0: any)")
    parser.add_argument("--screen", choices=sorted(SCREENS), default="oled",
                        help="oled: 128x64, oled32: 128x32, hdmi: 1280x720")
    parser.add_argument("--hold-seconds", type=float, default=5.0, metavar="S",
                        help="how long the button is held for a factory reset")
    parser.add_argument("--access-token-lifetime", type=int, default=60, metavar="S",
                        help="the server's access token lifetime: short, so refreshes (and faults) show soon")
    parser.add_argument("--interval", type=int, default=2, metavar="S", help="the polling interval given to the device")
    parser.add_argument("--serial", default=None,
                        help="the device's serial ([identity] serial), shown on the phone's page (default: SIM- and "
                             "8 random hex digits)")
    parser.add_argument("--no-register", dest="register", action="store_false",
                        help="do not register (RFC 7591): pair as the server's built-in public client, which "
                             "carries no name, serial or key for the phone's page to show")
    parser.add_argument("--dir", type=Path, default=None,
                        help="the device's folder (config, state, screen, logs), kept (default: a temp dir, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        build_parser().error("--port: expected 0 to 65535")
    if not args.hold_seconds > 0:
        build_parser().error("--hold-seconds: expected more than 0")
    if args.serial is not None and not SERIAL.fullmatch(args.serial):
        build_parser().error("--serial: 1 to 128 printable ASCII characters, no spaces")
    sim = Simulation(args.dir, screen=args.screen, hold_seconds=args.hold_seconds, port=args.port,
                     port_fallback=args.port == DEFAULT_PORT, access_token_lifetime=args.access_token_lifetime,
                     interval=args.interval, register=args.register, serial=args.serial)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    ended = threading.Event()
    try:
        try:
            sim.start()
        except (OSError, DeviceFailed) as exc:
            print(f"devicelink-sim device: cannot start: {exc}", flush=True)
            return 1
        print(f"devicelink-sim device: the real daemon on a virtual board\n"
              f"  open {sim.url}  to watch its screen and LED, press its button, approve on the phone "
              f"and break the server\n"
              f"  issuer {sim.issuer}   (its verification page: {sim.issuer}/device)\n"
              f"  the daemon: devicelink --config {sim.device.config} status   (its log: {sim.device.log_path})\n"
              f"  faults from here: devicelink-sim faults --issuer {sim.issuer} on token:status\n"
              f"Ctrl-C stops it.", flush=True)
        watcher = threading.Thread(target=lambda: (sim.device.proc.wait(), ended.set()), daemon=True)
        watcher.start()
        ended.wait()
        print("devicelink-sim device: the daemon exited; see its log above", flush=True)
        for line in sim.device.log_tail:
            print(f"  | {line}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        code = uninterrupted(sim.stop, previous)
        print(f"devicelink-sim device: stopped the daemon (exit {code}) and the servers", flush=True)
