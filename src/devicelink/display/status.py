"""What a screen without a pairing code says: a title, its colour, and the lines below it.

The words only; :mod:`~devicelink.display.compact` and
:mod:`~devicelink.display.full` place them on a panel.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicelink.display.base import Screen
from devicelink.display.text import clean
from devicelink.lifecycle import State


@dataclass(frozen=True)
class Status:
    title: str
    title_colour: str = "fg"
    body: tuple[tuple[str, str, bool, str], ...] = ()  # (role, text, bold, colour)
    number: str | None = None  # the factory-reset seconds, drawn very large


def status_for(screen: Screen) -> Status:
    message = clean(screen.message) if screen.message else None
    if screen.reset_in is not None:
        return Status("Factory reset in", "error", (("body", "Release the button to cancel", False, "fg"),),
                       number=str(max(0, screen.reset_in)))
    if screen.clock_synced is False and screen.state in (State.UNPAIRED, State.PAIRING):
        body = [("body", "Check the network connection. Pairing starts once the clock is set.", False, "dim")]
        if message:
            body.insert(0, ("message", message, False, "fg"))
        return Status("Waiting for network time", "warn", tuple(body))
    account = clean(screen.account) if screen.account else None
    if screen.state is State.PAIRING:  # no code yet
        return Status("Getting a code…", "fg", (("message", message, False, "warn"),) if message else ())
    if screen.state in (State.PAIRED, State.REFRESHING):
        body = [("account", account, True, "fg")] if account else []
        if message:
            body.append(("message", message, False, "dim"))
        return Status("Paired as" if account else "Paired", "ok", tuple(body))
    if screen.state is State.OFFLINE:
        body = [("body", "Still working; retrying", False, "fg")]
        if account:
            body.append(("account", account, True, "dim"))
        if message:
            body.append(("message", message, False, "dim"))
        return Status("Offline", "warn", tuple(body))
    if screen.state is State.REAUTH_REQUIRED:
        default = "Access was withdrawn. Press the button for a new code."
        return Status("Pair again", "error", (("message", message or default, False, "fg"),))
    default = "Press the button or run `devicelink pair`"
    return Status("Not paired", "fg", (("message", message or default, False, "fg"),))
