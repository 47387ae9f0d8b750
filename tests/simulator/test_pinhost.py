"""The daemon's side of the virtual device's pins (device/pinhost.py): a press lasts on the
daemon's side at least as long as the simulator held it, however late the commands arrive."""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory

from devicelink_sim.device.pinhost import serve_commands


class Wire:
    def __init__(self, *messages: dict) -> None:
        self.messages = messages

    def commands(self):
        yield from self.messages


def drive(*messages: dict, now: float = 100.0):
    """Run the commands as they would arrive all at once (a loaded machine): when gpiozero's
    button (the daemon's, pulled up, to GND) saw itself pressed and released, in (fake) time."""
    from gpiozero import Button

    factory = MockFactory()
    button = Button(27, pin_factory=factory)
    clock = [now]
    seen = []
    button.when_pressed = lambda: seen.append((round(clock[0] - now, 3), "pressed"))
    button.when_released = lambda: seen.append((round(clock[0] - now, 3), "released"))
    try:
        serve_commands(Wire(*messages), factory, clock=lambda: clock[0],
                       sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    finally:
        button.close()
    return seen


def test_a_click_that_arrives_compressed_is_held_as_long_as_on_the_page():
    assert drive({"pin": "GPIO27", "drive": "low"}, {"pin": "GPIO27", "drive": "high", "held": 0.12}) == \
        [(0.0, "pressed"), (0.12, "released")]


def test_no_wait_without_held_or_with_a_held_that_is_no_finger():
    for held in (None, 0, -1, 1e9, "0.5"):
        release = {"pin": "GPIO27", "drive": "high", **({} if held is None else {"held": held})}
        assert drive({"pin": "GPIO27", "drive": "low"}, release) == [(0.0, "pressed"), (0.0, "released")], held
