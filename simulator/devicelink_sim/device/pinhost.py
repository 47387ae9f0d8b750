"""The daemon's side of the virtual device's pins: ``devicelink run`` on gpiozero's MockFactory.

    python -m devicelink_sim.device.pinhost --pins SOCKET -- --config CONFIG run

is ``devicelink --config CONFIG run`` (devicelink.cli.main, the same code as the
installed command) with one difference: before the daemon starts, gpiozero's
default pin factory is a :class:`~gpiozero.pins.mock.MockFactory` whose pins
(:class:`WiredPin`, PWM-capable mock pins) are wired to the simulator over the Unix
socket ``SOCKET``:

- every change of a pin's level or duty cycle goes out as one JSON line,
  ``{"pin": "GPIO17", "function": "output", "state": 0.42}``;
- the simulator sends ``{"pin": "GPIO27", "drive": "low"}`` (or ``"high"``) to drive an
  input, as a finger on a button to GND does; a thread here calls
  ``MockPin.drive_low()``, which fires gpiozero's callbacks on that thread, as lgpio's
  callback thread does on a board. A ``"high"`` may carry ``"held"``, the seconds the
  pin was low at the simulator: it stays low here at least that long, so a click that
  reached the daemon late (a loaded machine) is not shortened to contact bounce.

The daemon itself is untouched: its gpio adapter (devicelink.gpio) opens its LED and
button with gpiozero's default pin factory, which is this one. gpiozero only finds
pin factories by entry-point name (``GPIOZERO_PIN_FACTORY``), and ``mock`` alone
would leave the pins out of the simulator's reach, hence the wrapper.

If the simulator goes away, the pins keep working unseen; the simulator stops the
daemon (SIGTERM) when it stops.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any

ENCODING = "utf-8"


class Wire:
    """The connection to the simulator: one JSON object per line each way."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._lock = threading.Lock()
        self._broken = False

    def send(self, message: dict[str, Any]) -> None:
        if self._broken:
            return
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode(ENCODING)
        try:
            with self._lock:
                self.sock.sendall(data)
        except OSError:
            self._broken = True  # the simulator is gone: the pins keep working unseen

    def commands(self):
        """The simulator's commands, until it closes the connection."""
        return json_lines(self.sock)


def json_lines(sock: socket.socket):
    """The JSON objects that arrive on ``sock``, one a line, until it closes (what is not one is skipped)."""
    with sock.makefile("r", encoding=ENCODING) as lines:
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                yield message


def wired_factory(wire: Wire):
    """A MockFactory whose pins report every change on ``wire``."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    class WiredPin(MockPWMPin):
        def _change_state(self, value):
            changed = super()._change_state(value)
            if changed:
                self._report()
            return changed

        def _set_function(self, value):
            super()._set_function(value)
            self._report()

        def _report(self) -> None:
            wire.send({"pin": self.info.name, "function": self._function, "state": float(self._state)})

    return MockFactory(pin_class=WiredPin)


MAX_HELD = 600.0  # seconds: a "held" beyond this is not a finger's


def serve_commands(wire: Wire, factory, clock=time.monotonic, sleep=time.sleep) -> None:
    low_since: dict[str, float] = {}
    for message in wire.commands():
        name, drive, held = message.get("pin"), message.get("drive"), message.get("held")
        if not isinstance(name, str) or drive not in ("low", "high"):
            continue
        try:
            pin = factory.pin(name)
            if pin.function != "input":
                continue
            if drive == "low":
                low_since[name] = clock()
                pin.drive_low()
                continue
            since = low_since.pop(name, None)
            if since is not None and isinstance(held, (int, float)) and 0 < held <= MAX_HELD:
                sleep(max(0.0, since + held - clock()))
            pin.drive_high()
        except Exception as exc:  # an unknown pin: say so in the daemon's log, keep going
            print(f"devicelink-sim pins: cannot drive {name} {drive}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devicelink_sim.device.pinhost",
                                     description="devicelink's own command line, on mock pins wired to the simulator")
    parser.add_argument("--pins", required=True, metavar="SOCKET", help="the simulator's pin socket")
    parser.add_argument("devicelink_args", nargs=argparse.REMAINDER, help="-- then devicelink's arguments")
    args = parser.parse_args(argv)
    rest = args.devicelink_args[1:] if args.devicelink_args[:1] == ["--"] else args.devicelink_args

    from gpiozero import Device

    wire = Wire(args.pins)
    factory = wired_factory(wire)
    Device.pin_factory = factory
    wire.send({"hello": "pins", "factory": "MockFactory", "pin_class": "MockPWMPin"})
    threading.Thread(target=serve_commands, args=(wire, factory), name="sim-pins", daemon=True).start()

    from devicelink.cli import main as devicelink

    return devicelink(rest)


if __name__ == "__main__":
    raise SystemExit(main())
