"""What the status LED does in each lifecycle state. Pure data: no gpiozero, no clock.

One LED has to answer the owner's one question, "do I need to do anything?",
from across the room, so every pattern is told apart by rhythm alone:

========================  ===================================  ===========================
state                     pattern                              meaning for the owner
========================  ===================================  ===========================
unpaired                  off                                  idle; press the button to pair
pairing                   breathing (1 s in, 1 s out)          waiting for you: scan the code
paired, refreshing        solid on                             working
offline                   slow wink (0.1 s on every 2 s)       working from the cached token;
                                                               nothing for you to do
reauth_required           fast blink (5 Hz)                    act: pair again
button held for a reset   2 Hz blink (over any of the above)   let go to cancel
========================  ===================================  ===========================

Why offline winks instead of blinking: an offline device still holds its grant
and serves the cached access token while it retries with backoff, so it is not
an error the owner must act on. A short flash on a mostly dark LED reads as
"alive, waiting" and cannot be mistaken for the fast error blink (act now) or
for breathing (a code is on screen). Refreshing stays solid, the same as
paired, so a refresh every hour does not make the LED flicker.

Without PWM (a plain ``LED``), breathing becomes a symmetric 1 s blink: still
distinct from the wink, the fast blink and the reset blink.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicelink.lifecycle import State

KINDS = ("off", "on", "blink", "pulse")


@dataclass(frozen=True)
class Pattern:
    """``kind`` is off, on, blink (``on``/``off`` seconds) or pulse (fade in/out seconds)."""

    kind: str
    on: float = 0.0
    off: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown LED pattern kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in ("blink", "pulse") and (self.on <= 0 or self.off <= 0):
            raise ValueError(f"a {self.kind} needs positive times, got {self.on!r}/{self.off!r}")

    def without_pwm(self) -> Pattern:
        """The same pattern on an LED that can only be on or off."""
        return Pattern("blink", self.on, self.off) if self.kind == "pulse" else self

    def __str__(self) -> str:
        return self.kind if self.kind in ("off", "on") else f"{self.kind} {self.on:g}/{self.off:g} s"


OFF = Pattern("off")
SOLID = Pattern("on")
BREATHING = Pattern("pulse", 1.0, 1.0)
SLOW_WINK = Pattern("blink", 0.1, 1.9)
FAST_BLINK = Pattern("blink", 0.1, 0.1)
#: Shown while the button is held past the countdown threshold, over the state's pattern.
RESET_COUNTDOWN = Pattern("blink", 0.25, 0.25)

PATTERNS: dict[State, Pattern] = {
    State.UNPAIRED: OFF,
    State.PAIRING: BREATHING,
    State.PAIRED: SOLID,
    State.REFRESHING: SOLID,
    State.OFFLINE: SLOW_WINK,
    State.REAUTH_REQUIRED: FAST_BLINK,
}


def pattern_for(state: State) -> Pattern:
    """The LED pattern for ``state``."""
    return PATTERNS[state]
