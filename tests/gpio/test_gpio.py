"""The status LED and the pair/reset button.

The button's logic runs on a FakeClock (no real time passes); the pins run on
gpiozero's MockFactory. Where gpiozero's own threads drive the LED (blink,
pulse), the tests wait on the mock pin's state changes with a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import threading
import warnings

import httpx
import pytest

from devicelink.config import Config, GpioConfig, ProviderConfig, StorageConfig
from devicelink.errors import HardwareUnavailable
from devicelink.gpio import attach, ensure_lgpio_workdir
from devicelink.gpio.button import ButtonLogic, Debouncer, seconds_left
from devicelink.gpio.patterns import (BREATHING, FAST_BLINK, OFF, PATTERNS, RESET_COUNTDOWN, SLOW_WINK, SOLID,
                                      Pattern, pattern_for)
from devicelink.lifecycle import State
from tests.helpers import FakeClock

T0 = 1000.0  # FakeClock's start


# -- helpers --------------------------------------------------------------------


class Target:
    """Stand-in for Device's button and LED side - ONLY FOR TESTS. Records every call."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.calls: list[tuple] = []
        self.state = State.UNPAIRED
        self.listeners: list = []
        self.reset_gate: asyncio.Event | None = None  # factory_reset waits on it when set

    def _at(self) -> float | None:
        return self.clock() if self.clock else None

    def button_pressed(self) -> None:
        self.calls.append(("press", None, self._at()))

    def show_reset_countdown(self, seconds: int | None) -> None:
        self.calls.append(("countdown", seconds, self._at()))

    async def factory_reset(self) -> None:
        self.calls.append(("reset", None, self._at()))
        if self.reset_gate is not None:
            await self.reset_gate.wait()

    def move(self, state: State) -> None:
        self.state = state
        for listener in list(self.listeners):
            listener(state)

    def names(self) -> list:
        return [(name, arg) for name, arg, _ in self.calls]


async def settle() -> None:
    """Let every task that is ready run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def run_until(clock: FakeClock, when: float) -> None:
    """Move the fake clock to ``when``, firing every timer on the way in order."""
    await settle()
    while (wake := clock.next_wake) is not None and wake <= when:
        clock.advance(wake - clock.now)
        await settle()
    clock.advance(when - clock.now)
    await settle()


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Wait (real time, bounded) for something another thread or real I/O does."""
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def logic_on(clock: FakeClock, hold: float = 10.0, **kw) -> tuple[ButtonLogic, Target, list]:
    target = Target(clock)
    cues: list[bool] = []
    logic = ButtonLogic(target, hold, clock=clock, sleep=clock.sleep, on_countdown=cues.append, **kw)
    return logic, target, cues


# -- patterns.py ------------------------------------------------------------------


def test_every_state_has_its_pattern():
    assert set(PATTERNS) == set(State)
    assert pattern_for(State.UNPAIRED) == OFF
    assert pattern_for(State.PAIRING) == BREATHING and BREATHING.kind == "pulse"
    assert pattern_for(State.PAIRED) == pattern_for(State.REFRESHING) == SOLID
    assert pattern_for(State.OFFLINE) == SLOW_WINK
    assert pattern_for(State.REAUTH_REQUIRED) == FAST_BLINK
    # Apart from paired/refreshing (both "working"), no two states and not the reset
    # countdown look alike, with PWM or without.
    for pwm in (True, False):
        shown = {s: (p if pwm else p.without_pwm()) for s, p in PATTERNS.items()}
        distinct = {shown[s] for s in State if s is not State.REFRESHING}
        assert len(distinct) == len(State) - 1
        assert (RESET_COUNTDOWN if pwm else RESET_COUNTDOWN.without_pwm()) not in distinct


def test_patterns_without_pwm_and_validation():
    assert BREATHING.without_pwm() == Pattern("blink", 1.0, 1.0)
    assert FAST_BLINK.without_pwm() == FAST_BLINK and SOLID.without_pwm() == SOLID
    assert str(SLOW_WINK) == "blink 0.1/1.9 s" and str(OFF) == "off"
    with pytest.raises(ValueError):
        Pattern("strobe")
    with pytest.raises(ValueError):
        Pattern("blink", 0, 1)


# -- button.py: ButtonLogic on clean events -------------------------------------------


def test_seconds_left_rounds_up():
    assert [seconds_left(10, h) for h in (1.0, 1.5, 9.0, 9.999, 10.0)] == [9, 9, 1, 1, 0]
    assert seconds_left(10, 10.0000000001) == 0  # float noise does not add a second
    assert seconds_left(3.5, 1.0) == 3


def test_short_press_calls_button_pressed_once():
    async def main():
        clock = FakeClock()
        logic, target, cues = logic_on(clock)
        logic.down(clock.now)
        await run_until(clock, T0 + 0.3)
        logic.up(clock.now)
        await run_until(clock, T0 + 30)
        assert target.names() == [("press", None)]
        assert cues == [] and clock.next_wake is None
    run(main())


def test_a_press_just_under_the_threshold_is_a_press_and_shows_no_countdown():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock)
        logic.down(clock.now)
        await run_until(clock, T0 + 0.99)
        logic.up(clock.now)
        await settle()
        assert target.names() == [("press", None)]
    run(main())


def test_hold_counts_down_each_second_then_resets_once_and_ignores_the_release():
    async def main():
        clock = FakeClock()
        logic, target, cues = logic_on(clock, hold=10)
        logic.down(clock.now)
        await run_until(clock, T0 + 12)
        assert target.calls == [("countdown", n, T0 + 10 - n) for n in range(9, 0, -1)] + [("reset", None, T0 + 10)]
        assert cues == [True, False]
        logic.up(clock.now)  # the release after the reset
        await run_until(clock, T0 + 30)
        assert [c[0] for c in target.calls].count("reset") == 1
        assert ("press", None) not in target.names() and ("countdown", None) not in target.names()
        # ... and the button works normally afterwards
        logic.down(clock.now)
        logic.up(clock.now + 0.2)
        await settle()
        assert target.names()[-1] == ("press", None)
    run(main())


def test_cancelled_hold_clears_the_countdown_and_is_not_a_press():
    async def main():
        clock = FakeClock()
        logic, target, cues = logic_on(clock, hold=10)
        logic.down(clock.now)
        await run_until(clock, T0 + 3.5)
        logic.up(clock.now)
        await run_until(clock, T0 + 30)
        assert target.names() == [("countdown", 9), ("countdown", 8), ("countdown", 7), ("countdown", None)]
        assert cues == [True, False] and clock.next_wake is None
    run(main())


def test_fractional_hold_seconds_round_up():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock, hold=3.5)
        logic.down(clock.now)
        await run_until(clock, T0 + 5)
        assert target.calls == [("countdown", 3, T0 + 1), ("countdown", 2, T0 + 1.5), ("countdown", 1, T0 + 2.5),
                                ("reset", None, T0 + 3.5)]
    run(main())


def test_hold_as_short_as_the_threshold_resets_without_a_countdown():
    async def main():
        clock = FakeClock()
        logic, target, cues = logic_on(clock, hold=1)
        logic.down(clock.now)
        await run_until(clock, T0 + 2)
        assert target.calls == [("reset", None, T0 + 1)] and cues == []
    run(main())


def test_a_late_countdown_timer_catches_up_instead_of_replaying_seconds():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock, hold=10)
        logic.down(clock.now)
        await settle()
        clock.advance(4.2)  # the loop was busy: the first timer fires late
        await settle()
        assert target.names() == [("countdown", 6)]
    run(main())


def test_presses_during_a_running_reset_are_ignored():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock, hold=2)
        target.reset_gate = asyncio.Event()
        logic.down(clock.now)
        await run_until(clock, T0 + 2.5)
        logic.up(clock.now)
        assert logic.resetting
        logic.down(clock.now + 1)  # impatient owner: short press, then a full hold
        logic.up(clock.now + 1.2)
        logic.down(clock.now + 2)
        await run_until(clock, T0 + 10)
        logic.up(clock.now)
        assert target.names() == [("countdown", 1), ("reset", None)]
        target.reset_gate.set()
        await settle()
        assert not logic.resetting
        logic.down(clock.now)
        logic.up(clock.now + 0.1)
        assert target.names()[-1] == ("press", None)
    run(main())


def test_a_release_without_a_press_is_ignored():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock)
        logic.up(clock.now)  # held since before the daemon started
        logic.down(clock.now + 1)
        logic.down(clock.now + 1.1)  # a lost up edge: the first down counts
        logic.up(clock.now + 1.2)
        await settle()
        assert target.names() == [("press", None)]
    run(main())


def test_close_during_the_countdown_clears_it():
    async def main():
        clock = FakeClock()
        logic, target, cues = logic_on(clock)
        logic.down(clock.now)
        await run_until(clock, T0 + 2.5)
        await logic.close()
        await run_until(clock, T0 + 30)
        assert target.names() == [("countdown", 9), ("countdown", 8), ("countdown", None)]
        assert cues == [True, False]
    run(main())


def test_close_lets_a_running_reset_finish():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock, hold=2)
        target.reset_gate = asyncio.Event()
        logic.down(clock.now)
        await run_until(clock, T0 + 2)
        closing = asyncio.ensure_future(logic.close())
        await settle()
        assert not closing.done()
        target.reset_gate.set()
        await asyncio.wait_for(closing, 5)
        assert not logic.resetting
    run(main())


def test_a_failing_target_does_not_break_the_button(caplog):
    class Broken(Target):
        def button_pressed(self):
            super().button_pressed()
            raise RuntimeError("display gone")

        async def factory_reset(self):
            await super().factory_reset()
            raise RuntimeError("disk gone")

    async def main():
        clock = FakeClock()
        target = Broken(clock)
        logic = ButtonLogic(target, 2, clock=clock, sleep=clock.sleep)
        for _ in range(2):
            logic.down(clock.now)
            logic.up(clock.now + 0.1)
        logic.down(clock.now)
        await run_until(clock, T0 + 3)
        logic.up(clock.now)
        await settle()
        assert target.names() == [("press", None), ("press", None), ("countdown", 1), ("reset", None)]
        assert not logic.resetting

    with caplog.at_level(logging.ERROR, logger="devicelink.gpio.button"):
        run(main())
    assert "display gone" in caplog.text and "the factory reset failed" in caplog.text


# -- button.py: Debouncer -----------------------------------------------------------


async def raw_edges(clock: FakeClock, debouncer: Debouncer, edges: list[tuple[float, bool]]) -> None:
    for at, pressed in edges:
        await run_until(clock, T0 + at)
        debouncer.edge(pressed, clock.now)


def test_contact_bounce_makes_one_press_timed_from_the_stable_edge():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock)
        downs: list[float] = []
        real_down = logic.down
        logic.down = lambda at: (downs.append(at), real_down(at))
        debouncer = Debouncer(logic, sleep=clock.sleep)
        await raw_edges(clock, debouncer, [(0.0, True), (0.002, False), (0.004, True),  # press bounce
                                           (0.3, False), (0.302, True), (0.305, False)])  # release bounce
        await run_until(clock, T0 + 5)
        assert target.names() == [("press", None)]
        assert downs == [T0 + 0.004]
    run(main())


def test_a_glitch_shorter_than_the_window_is_nothing():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock)
        debouncer = Debouncer(logic, sleep=clock.sleep)
        await raw_edges(clock, debouncer, [(0.0, True), (0.01, False)])
        await run_until(clock, T0 + 5)
        assert target.calls == [] and not logic.pressed
    run(main())


def test_a_bounce_in_the_middle_of_a_hold_does_not_cancel_it():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock, hold=10)
        debouncer = Debouncer(logic, sleep=clock.sleep)
        await raw_edges(clock, debouncer, [(0.0, True), (5.0, False), (5.003, True)])
        await run_until(clock, T0 + 12)
        assert target.names() == [("countdown", n) for n in range(9, 0, -1)] + [("reset", None)]
        assert target.calls[-1][2] == T0 + 10  # timed from the first, debounced, edge
        await debouncer.close()
    run(main())


def test_a_zero_window_passes_edges_straight_through():
    async def main():
        clock = FakeClock()
        logic, target, _ = logic_on(clock)
        debouncer = Debouncer(logic, 0, sleep=clock.sleep)
        debouncer.edge(True, clock.now)
        assert logic.pressed
        debouncer.edge(False, clock.now + 0.2)
        assert target.names() == [("press", None)]
    run(main())


# -- pins.py on gpiozero's MockFactory ---------------------------------------------------


def _recording(base):
    class Recording(base):
        """A mock pin whose state changes can be waited for (gpiozero's blink thread sets them)."""

        def __init__(self, factory, info):
            self.changed = threading.Condition()
            super().__init__(factory, info)

        def _change_state(self, value):
            with self.changed:
                result = super()._change_state(value)
                self.changed.notify_all()
            return result

        def values(self) -> list:
            with self.changed:
                return [s.state for s in self.states]

        def wait_values(self, predicate, timeout: float = 5.0) -> list:
            with self.changed:
                ok = self.changed.wait_for(lambda: predicate([s.state for s in self.states]), timeout)
                values = [s.state for s in self.states]
            assert ok, f"pin states never matched: {values}"
            return values

    return Recording


@pytest.fixture
def gz():
    """A MockFactory with PWM pins that record, passed to attach as pin_factory; reset afterwards."""
    pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=_recording(MockPWMPin))
    yield factory
    factory.reset()


@pytest.fixture
def gz_no_pwm():
    pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory, MockPin

    factory = MockFactory(pin_class=_recording(MockPin))
    yield factory
    factory.reset()


def toggles(values: list) -> int:
    return sum(1 for a, b in zip(values, values[1:]) if a != b)


def test_led_follows_the_device_through_every_state(gz):
    async def main():
        device = Target()
        gpio = await attach(device, GpioConfig(led=17), pin_factory=gz)
        pin = gz.pin(17)
        assert gpio.led is not None and gpio.led.pwm
        assert pin.values() == [0.0]  # unpaired: off

        device.move(State.PAIRING)  # breathing: brightness rises in small steps from 0
        rising = pin.wait_values(lambda v: len(v) >= 6)[:6]
        assert rising[0] == 0.0 and all(0 < b - a <= 0.1 for a, b in zip(rising, rising[1:]))
        assert gpio.led.pattern == BREATHING

        device.move(State.PAIRING)  # a new code: the breathing goes on, not restarted
        assert gpio.led.pattern == BREATHING

        device.move(State.PAIRED)  # solid; gpiozero stops the pulse before returning
        assert pin.values()[-1] == 1.0
        pin.clear_states()
        device.move(State.REFRESHING)
        device.move(State.PAIRED)
        assert pin.values() == [1.0]  # untouched by refreshes

        device.move(State.REFRESHING)
        device.move(State.OFFLINE)  # a short wink: on 0.1 s, then off for 1.9 s
        values = pin.wait_values(lambda v: 0.0 in v)
        assert values == [1.0, 0.0] and 0.05 <= pin.states[1].timestamp <= 0.5
        assert gpio.led.pattern == SLOW_WINK

        device.move(State.REFRESHING)
        pin.clear_states()
        device.move(State.REAUTH_REQUIRED)  # fast blink, 0.1 s each way
        values = pin.wait_values(lambda v: toggles(v) >= 5)
        assert set(values) == {0.0, 1.0}
        assert all(0.05 <= s.timestamp <= 0.5 for s in pin.states[2:6])

        device.move(State.UNPAIRED)
        assert pin.values()[-1] == 0.0 and gpio.led.pattern == OFF

        await gpio.close()
        assert device.listeners == []
    run(main())


def test_led_without_pwm_blinks_instead_of_breathing(gz_no_pwm):
    async def main():
        device = Target()
        device.state = State.PAIRING
        gpio = await attach(device, GpioConfig(led=17), pin_factory=gz_no_pwm)
        assert gpio.led is not None and not gpio.led.pwm
        assert gpio.led.pattern == Pattern("blink", 1.0, 1.0)
        assert gz_no_pwm.pin(17).wait_values(lambda v: True in v) == [False, True]
        device.move(State.PAIRED)
        assert gz_no_pwm.pin(17).values()[-1] is True
        await gpio.close()
    run(main())


def test_pin_edges_from_gpiozero_threads_arrive_on_the_loop(gz):
    from devicelink.gpio.pins import ButtonPin

    async def main():
        clock = FakeClock()
        loop = asyncio.get_running_loop()
        seen: list[tuple[bool, float, int]] = []
        button = ButtonPin(27, lambda pressed, at: seen.append((pressed, at, threading.get_ident())),
                           loop=loop, clock=clock, pin_factory=gz)
        pin = gz.pin(27)
        assert pin.values()[-1] is True  # the internal pull-up holds it high: released
        drivers: list[int] = []

        def press_and_release():
            drivers.append(threading.get_ident())
            pin.drive_low()
            clock.now += 0.25
            pin.drive_high()

        await asyncio.to_thread(press_and_release)
        await eventually(lambda: len(seen) == 2)
        loop_thread = threading.get_ident()
        assert drivers[0] != loop_thread
        assert seen == [(True, T0, loop_thread), (False, T0 + 0.25, loop_thread)]
        button.close()
    run(main())


def test_attach_press_and_hold_through_mock_pins(gz):
    async def main():
        clock = FakeClock()
        device = Target(clock)
        device.state = State.PAIRED
        gpio = await attach(device, GpioConfig(led=17, button=27, hold_seconds=3), pin_factory=gz,
                            clock=clock, sleep=clock.sleep)
        led, button = gz.pin(17), gz.pin(27)
        assert led.values()[-1] == 1.0

        button.drive_low()  # a short press
        await run_until(clock, T0 + 0.2)
        button.drive_high()
        await run_until(clock, T0 + 1)
        assert device.names() == [("press", None)]

        button.drive_low()  # a hold, cancelled at 2.5 s
        await run_until(clock, T0 + 2)
        assert device.names()[-1] == ("countdown", 2) and gpio.led.pattern == RESET_COUNTDOWN
        led.wait_values(lambda v: 0.0 in v)  # the LED blinks while the countdown runs
        await run_until(clock, T0 + 3.5)
        button.drive_high()
        await run_until(clock, T0 + 4)
        assert device.names()[1:] == [("countdown", 2), ("countdown", 1), ("countdown", None)]
        assert gpio.led.pattern == SOLID and led.values()[-1] == 1.0

        button.drive_low()  # a hold to the end
        await run_until(clock, T0 + 8)
        assert device.names()[-1] == ("reset", None)
        button.drive_high()
        await run_until(clock, T0 + 9)
        assert device.names()[-1] == ("reset", None)  # the release did nothing
        assert [c[2] for c in device.calls[-3:]] == [T0 + 5, T0 + 6, T0 + 7]  # timed from the press edge
        await gpio.close()
    run(main())


def test_attach_with_only_a_button_or_nothing(gz):
    async def main():
        clock = FakeClock()
        device = Target(clock)
        gpio = await attach(device, GpioConfig(button=27, hold_seconds=2), pin_factory=gz,
                            clock=clock, sleep=clock.sleep)
        assert gpio.led is None and device.listeners == []
        gz.pin(27).drive_low()
        await run_until(clock, T0 + 3)
        gz.pin(27).drive_high()
        await settle()
        assert device.names() == [("countdown", 1), ("reset", None)]
        await gpio.close()
        await gpio.close()  # twice is fine
        empty = await attach(device, GpioConfig(), pin_factory=gz)
        await empty.close()
    run(main())


def test_the_real_device_is_a_gpio_target():
    """Device has what attach() calls, with the signatures it uses."""
    import inspect

    from devicelink.engine import Device

    assert inspect.iscoroutinefunction(Device.factory_reset)
    assert list(inspect.signature(Device.show_reset_countdown).parameters) == ["self", "seconds"]
    assert list(inspect.signature(Device.button_pressed).parameters) == ["self"]


# -- errors ------------------------------------------------------------------------------


def test_a_pin_in_use_names_the_pin_and_releases_the_led(gz):
    async def main():
        with pytest.raises(HardwareUnavailable, match=r"\[gpio\] button = 17 \(GPIO17\).*in use"):
            await attach(Target(), GpioConfig(led=17, button=17), pin_factory=gz)
        gpio = await attach(Target(), GpioConfig(led=17), pin_factory=gz)  # the LED's pin was released
        await gpio.close()
    run(main())


def test_a_pin_that_is_not_on_the_header(gz):
    async def main():
        with pytest.raises(HardwareUnavailable, match=r"GPIO60.*not a GPIO on this board"):
            await attach(Target(), GpioConfig(led=60), pin_factory=gz)
    run(main())


def test_no_pin_factory_at_all_says_what_to_install(monkeypatch):
    gpiozero = pytest.importorskip("gpiozero")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.delenv("LG_WD", raising=False)  # restored if ensure_lgpio_workdir sets it
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)

    async def main():
        with pytest.raises(HardwareUnavailable, match=r"GPIO17.*no GPIO driver could be loaded.*lgpio.*Pi 5"):
            await attach(Target(), GpioConfig(led=17))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpiozero's PinFactoryFallback, one per factory tried
        run(main())


def test_permission_and_missing_chip_messages():
    pytest.importorskip("gpiozero")
    from devicelink.gpio.pins import unavailable

    denied = unavailable("button", 27, PermissionError(13, "Permission denied", "/dev/gpiochip0"))
    assert "[gpio] button = 27 (GPIO27)" in str(denied) and "group gpio" in str(denied)
    assert "group gpio" in str(unavailable("led", 17, OSError("can not open gpiochip: permission denied")))
    chip = str(unavailable("led", 17, Exception("can not open gpiochip")))
    assert "no GPIO chip" in chip and "gpiochip0" in chip and "gpiochip4" in chip
    assert "in use" in str(unavailable("led", 17, Exception("GPIO busy")))


def test_gpiozero_missing_names_the_extra(monkeypatch):
    import devicelink.gpio

    monkeypatch.setitem(sys.modules, "gpiozero", None)  # import gpiozero -> ImportError
    monkeypatch.delitem(sys.modules, "devicelink.gpio.pins", raising=False)
    monkeypatch.delattr(devicelink.gpio, "pins", raising=False)

    async def main():
        with pytest.raises(HardwareUnavailable, match=r"pip install 'devicelink\[gpio\]'"):
            await attach(Target(), GpioConfig(led=17), pin_factory=object())
    run(main())


# -- lgpio's working directory ----------------------------------------------------------------


def test_lgpio_workdir_left_alone_when_the_cwd_is_writable(tmp_path):
    env: dict[str, str] = {"RUNTIME_DIRECTORY": str(tmp_path)}
    assert ensure_lgpio_workdir(env, cwd=str(tmp_path)) is None
    assert "LG_WD" not in env


def test_lgpio_workdir_keeps_what_the_unit_set(tmp_path, caplog):
    env = {"LG_WD": str(tmp_path)}
    assert ensure_lgpio_workdir(env, cwd="/") == str(tmp_path)
    env = {"LG_WD": str(tmp_path / "missing")}
    with caplog.at_level(logging.WARNING):
        assert ensure_lgpio_workdir(env, cwd="/") == str(tmp_path / "missing")
    assert "not a writable directory" in caplog.text


def test_lgpio_workdir_uses_the_runtime_directory_when_the_cwd_is_not_writable(tmp_path):
    runtime, state = tmp_path / "run", tmp_path / "state"
    runtime.mkdir()
    state.mkdir()
    env = {"RUNTIME_DIRECTORY": f"{runtime}:{tmp_path}", "STATE_DIRECTORY": str(state)}
    assert ensure_lgpio_workdir(env, cwd=str(tmp_path / "gone")) == str(runtime)
    assert env["LG_WD"] == str(runtime)
    env = {"RUNTIME_DIRECTORY": str(tmp_path / "nope"), "STATE_DIRECTORY": str(state)}
    assert ensure_lgpio_workdir(env, cwd=str(tmp_path / "gone")) == str(state)


def test_lgpio_workdir_falls_back_to_a_private_temp_dir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env: dict[str, str] = {}
    chosen = ensure_lgpio_workdir(env, cwd=str(tmp_path / "gone"))
    assert chosen == env["LG_WD"] == str(tmp_path / f"devicelink-lgpio-{os.getuid()}")
    assert os.stat(chosen).st_mode & 0o777 == 0o700


# -- with the real Device ---------------------------------------------------------------------------


class ScreenLog:
    """A display that keeps every screen it was asked to show - ONLY FOR TESTS."""

    def __init__(self) -> None:
        self.screens: list = []

    def show(self, screen, now: float) -> None:
        self.screens.append(screen)

    def close(self) -> None:
        pass


def test_button_and_led_on_a_real_device(gz, tmp_path):
    """Device + MockFactory + a fake IdP: a press asks for a new code, a hold wipes and pairs again."""
    from devicelink.engine import Device
    from devicelink.oauth.http import ClientAuth, OAuthHttp
    from devicelink.tokens.store import EncryptedFileStore

    codes: list[str] = []

    def idp(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/device":
            codes.append(f"WDJB-MJH{len(codes)}")
            return httpx.Response(200, json={"device_code": f"dc-{len(codes)}", "user_code": codes[-1],
                                             "verification_uri": "https://id.example.com/activate",
                                             "expires_in": 600, "interval": 5})
        return httpx.Response(400, json={"error": "authorization_pending"})

    async def main():
        clock = FakeClock()
        cfg = Config(provider=ProviderConfig(issuer="https://id.example.com", client_id="tv",
                                             device_authorization_endpoint="https://id.example.com/device",
                                             token_endpoint="https://id.example.com/token"),
                     storage=StorageConfig(state_dir=tmp_path))
        client = httpx.AsyncClient(transport=httpx.MockTransport(idp))
        screens = ScreenLog()
        device = Device(cfg, EncryptedFileStore(tmp_path, os.urandom(32)), OAuthHttp(client, ClientAuth("tv"), clock=clock),
                        display=screens, clock=clock, sleep=clock.sleep)
        await device.start()
        await eventually(lambda: device.pairing is not None)
        gpio = await attach(device, GpioConfig(led=17, button=27, hold_seconds=3), pin_factory=gz,
                            clock=clock, sleep=clock.sleep)
        led, button = gz.pin(17), gz.pin(27)
        assert gpio.led is not None and gpio.led.pattern == BREATHING

        button.drive_low()  # short press while pairing: a new code
        await run_until(clock, clock.now + 0.2)
        button.drive_high()
        await run_until(clock, clock.now + 0.1)
        await eventually(lambda: device.pairing is not None and device.pairing.user_code == codes[-1] and len(codes) == 2)

        start = clock.now
        button.drive_low()  # hold to the end: countdown on screen, then wipe and a fresh code
        await run_until(clock, start + 2.5)
        shown = [s.reset_in for s in screens.screens if s.reset_in is not None]
        assert [n for n, _ in itertools.groupby(shown)] == [2, 1]  # the pairing screen's own ticks redraw too
        assert device.reset_in == 1 and gpio.led.pattern == RESET_COUNTDOWN
        await run_until(clock, start + 3.2)
        await eventually(lambda: len(codes) == 3 and device.state is State.PAIRING and device.pairing is not None)
        assert device.reset_in is None and screens.screens[-1].reset_in is None
        assert gpio.led.pattern == BREATHING
        button.drive_high()  # the release after the reset
        await run_until(clock, clock.now + 0.5)
        assert len(codes) == 3

        await gpio.close()
        await device.stop()
        await client.aclose()
        assert led.values()[-1] == 0.0

    run(main())
