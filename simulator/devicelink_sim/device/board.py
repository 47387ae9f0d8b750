"""The virtual device: the real daemon, a screen you can watch and pins you can touch.

:class:`VirtualDevice` runs ``devicelink run`` as a child process (pinhost.py: the
installed command's own code on gpiozero's MockFactory) with

- the ``png`` display driver writing into ``screen/``, watched by frames.py;
- ``[gpio] led = 17, button = 27``, their mock pins wired to :class:`PinBoard`
  over the Unix socket ``pins.sock``: the LED's level comes in, presses go out;
- its socket ``agent.sock``, whose events (and a look once a second, for the
  countdowns) give its status.

Everything it sees is published on a :class:`~devicelink_sim.device.hub.Hub`,
which the page (web.py) pushes to browsers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from devicelink.gpio.patterns import pattern_for
from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable
from devicelink.lifecycle import State

from ..devconfig import write_config
from .frames import FrameWatcher
from .hub import Hub
from .pinhost import json_lines

logger = logging.getLogger(__name__)

SCOPE = "openid profile offline_access"
LED_PIN = 17  # BCM, as in hardware/'s profiles
BUTTON_PIN = 27
#: --screen: the png driver's size. Up to 128x64 it draws like a mono OLED, above like an HDMI TV.
SCREENS = {"oled": (128, 64), "oled32": (128, 32), "hdmi": (1280, 720)}
NAME = "devicelink virtual device"  # its client_name when it registers
READY_TIMEOUT = 30.0  # s for the daemon to log "devicelink ready on"
TICK = 1.0  # s between looks at the status (countdowns, last_error while the state stays)
LOG_LINES = 40


class DeviceFailed(Exception):
    """The virtual device could not start or died; one line."""


def pin_name(bcm: int) -> str:
    return f"GPIO{bcm}"


class PinBoard:
    """The simulator's end of the pin wire (pinhost.py): the daemon connects, reports its pins'
    levels, and takes drive commands. One daemon at a time."""

    def __init__(self, path: Path, on_pin) -> None:
        self.path = path
        self.on_pin = on_pin  # called with each message from the daemon, on the board's thread
        self.connected = threading.Event()
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> PinBoard:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)  # a previous run's, in a kept folder
        self._server.bind(str(self.path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, name="sim-pinboard", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._conn = conn
            self.connected.set()
            try:
                for message in json_lines(conn):
                    self.on_pin(message)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._conn = None
                self.connected.clear()
                conn.close()

    def drive(self, bcm: int, low: bool, held: float | None = None) -> bool:
        """Drive an input pin of the daemon low (pressed, to GND) or high; False if no daemon listens.
        ``held``: how long it was low here, which the daemon's side keeps it low at least."""
        command: dict[str, Any] = {"pin": pin_name(bcm), "drive": "low" if low else "high"}
        if held is not None:
            command["held"] = round(held, 3)
        line = json.dumps(command) + "\n"
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.sendall(line.encode())
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class VirtualDevice:
    """The real daemon with a png screen and mock pins, in ``directory``, paired with ``issuer``."""

    def __init__(self, directory: Path, issuer: str, client_id: str, *, screen: str = "oled",
                 hold_seconds: float = 5.0, scope: str = SCOPE, extra_config: str = "",
                 register: bool = False, serial: str | None = None, name: str = NAME,
                 hub: Hub | None = None, env: dict[str, str] | None = None,
                 python: list[str] | None = None) -> None:
        if screen not in SCREENS:
            raise ValueError(f"screen must be one of {', '.join(SCREENS)}")
        if not hold_seconds > 0:
            raise ValueError("hold_seconds must be more than 0")
        self.directory = Path(directory)
        self.issuer, self.client_id, self.scope = issuer, client_id, scope
        self.screen, self.size = screen, SCREENS[screen]
        self.hold_seconds = hold_seconds
        self.extra_config = extra_config
        self.register, self.name = register, name
        self.serial = serial or f"SIM-{secrets.token_hex(4).upper()}"
        self.hub = hub or Hub()
        self.env = env
        self.python = python or [sys.executable]
        self.config = self.directory / "config.toml"
        self.socket = str(self.directory / "agent.sock")
        self.screen_dir = self.directory / "screen"
        self.log_path = self.directory / "daemon.log"
        self.pins = PinBoard(self.directory / "pins.sock", self._on_pin)
        self.frames = FrameWatcher(self.screen_dir, self._on_frame)
        self.client = Client(self.socket, timeout=5)
        self.proc: subprocess.Popen | None = None
        self.log_tail: deque[str] = deque(maxlen=LOG_LINES)
        self._ready = threading.Event()
        self._ready_seen = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._frame_count = 0
        self._button_down = False
        self._pressed_at: float | None = None
        self._status_lock = threading.Lock()

    # -- start and stop ---------------------------------------------------------------

    def write_config(self) -> Path:
        width, height = self.size
        # With register: the device's own key, serial and client_id, as a unit from the factory line
        # has (docs/identity.md): it registers (RFC 7591) before it pairs, and the phone's page names it.
        provider = 'client_auth = "private_key_jwt"\n' if self.register else ""
        identity = f"""
[identity]
serial = {json.dumps(self.serial)}
""" + (f"""
[registration]
client_name = {json.dumps(self.name)}
""" if self.register else "")
        write_config(self.directory, self.issuer, self.client_id, scope=self.scope, display="png",
                     display_extra=f'png_dir = "screen"\nwidth = {width}\nheight = {height}\n',
                     extra=provider + self.extra_config + identity + f"""
[gpio]
led = {LED_PIN}       # BCM 17, physical pin 11: a mock pin, its level shown on the page
button = {BUTTON_PIN}    # BCM 27, physical pin 13, to GND: pressed from the page
hold_seconds = {self.hold_seconds:g}
""")
        return self.config

    def start(self) -> VirtualDevice:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.write_config()
        self.hub.publish("device", {"screen": self.screen, "width": self.size[0], "height": self.size[1],
                                    "serial": self.serial, "name": self.name, "registers": self.register,
                                    "led_pin": LED_PIN, "button_pin": BUTTON_PIN,
                                    "hold_seconds": self.hold_seconds, "config": str(self.config),
                                    "socket": self.socket})
        self.hub.publish("button", {"pressed": False, "level": None})
        self.hub.publish("led", {"value": None})
        self.pins.start()
        self.frames.start()
        self._start_daemon()
        self._spawn(self._follow_events, "sim-events")
        self._spawn(self._tick, "sim-tick")
        return self

    def _start_daemon(self) -> None:
        env = {k: v for k, v in (self.env or os.environ).items()
               if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "DEVICELINK_CONFIG",
                            "GPIOZERO_PIN_FACTORY")}
        # The virtual board's clock is this machine's: count it as synchronised (docs/clock.md), or an
        # unsynchronised host would show "waiting for network time" in place of the code and QR.
        env.setdefault("DEVICELINK_CLOCK_SYNCED", "1")
        argv = [*self.python, "-m", "devicelink_sim.device.pinhost", "--pins", str(self.pins.path), "--",
                "--config", str(self.config), "run"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.hub.publish("daemon", {"running": True, "pid": self.proc.pid, "exit": None})
        self._spawn(self._read_log, "sim-daemon-log")
        if not self._ready.wait(READY_TIMEOUT):
            raise DeviceFailed(f"the daemon did not get ready within {READY_TIMEOUT:g} s")
        if not self._ready_seen:
            self.proc.wait(timeout=10)
            raise DeviceFailed(f"the daemon exited with status {self.proc.returncode}")
        if not self.pins.connected.wait(5):
            raise DeviceFailed("the daemon did not connect its pins")
        self.refresh_status()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "a") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.log_tail.append(line.rstrip("\n"))
                self.hub.publish("log", list(self.log_tail))
                if not self._ready_seen and "devicelink ready on" in line:
                    self._ready_seen = True
                    self._ready.set()
        self._ready.set()
        code = self.proc.wait()
        self.hub.publish("daemon", {"running": False, "pid": self.proc.pid, "exit": code})

    def stop(self) -> int | None:
        """Stop the daemon (SIGTERM, as systemd does), then everything else; its exit status."""
        self._stop.set()
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        self.frames.stop()
        self.pins.stop()
        self.client.close()
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what the daemon shows ------------------------------------------------------------

    def _on_frame(self, data: bytes) -> None:
        self._frame_count += 1
        self.hub.publish("frame", {"n": self._frame_count, "width": self.size[0], "height": self.size[1],
                                   "png": base64.b64encode(data).decode("ascii")})
        self.refresh_status()  # a new screen: the state or its message moved

    def _on_pin(self, message: dict[str, Any]) -> None:
        name, state = message.get("pin"), message.get("state")
        if name == pin_name(LED_PIN) and isinstance(state, (int, float)):
            self.hub.publish("led", {"value": round(float(state), 3)})
        elif name == pin_name(BUTTON_PIN) and isinstance(state, (int, float)):
            # Pulled up: the level is low while the button is held down.
            self.hub.publish("button", {"pressed": self._button_down, "level": int(state)})

    def refresh_status(self) -> dict[str, Any] | None:
        with self._status_lock:
            try:
                status = self.client.status()
            except (DaemonUnreachable, DaemonError):
                return None
            self.hub.publish("status", status)
            try:
                pattern = str(pattern_for(State(status.get("state"))))
            except ValueError:
                pattern = None
            self.hub.publish("led_pattern", {"state": status.get("state"), "pattern": pattern})
            return status

    def _follow_events(self) -> None:
        """The daemon's events as they come: each one is a moment to read its status."""
        while not self._stop.is_set():
            try:
                for _ in self.client.events():
                    self.refresh_status()
                    if self._stop.is_set():
                        return
            except (DaemonUnreachable, DaemonError):
                if self._stop.wait(0.5):  # the daemon restarts or stops: subscribe again
                    return

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            if self.running:
                self.refresh_status()

    # -- what the owner does --------------------------------------------------------------

    def press(self) -> bool:
        """The finger goes down on the button (the pin is driven low)."""
        self._button_down, self._pressed_at = True, time.monotonic()
        self.hub.publish("button", {"pressed": True, "level": self.hub.get("button", {}).get("level")})
        return self.pins.drive(BUTTON_PIN, low=True)

    def release(self) -> bool:
        """The finger comes up. The press lasts as long on the daemon's side as it did here,
        however late the two reach it: a loaded machine must not shorten a click to contact bounce."""
        self._button_down = False
        self.hub.publish("button", {"pressed": False, "level": self.hub.get("button", {}).get("level")})
        held = None if self._pressed_at is None else time.monotonic() - self._pressed_at
        self._pressed_at = None
        return self.pins.drive(BUTTON_PIN, low=False, held=held)

    def wait_for_status(self, predicate, timeout: float) -> dict[str, Any]:
        """The status once ``predicate(status)`` holds, as the hub hears it (no polling):
        :class:`DeviceFailed` if the daemon exits first, TimeoutError after ``timeout``."""
        def settled(values: dict[str, Any]) -> bool:
            if (values.get("daemon") or {}).get("running") is False:
                return True
            return values.get("status") is not None and predicate(values["status"])

        self.hub.wait_for(settled, timeout)
        status = self.hub.get("status")
        if status is not None and predicate(status):
            return status
        daemon = self.hub.get("daemon") or {}
        if daemon.get("running") is False:
            raise DeviceFailed(f"the daemon exited with status {daemon.get('exit')}")
        raise TimeoutError(f"not within {timeout:g} s (state {status and status.get('state')}, "
                           f"last error {status and status.get('last_error')})")
