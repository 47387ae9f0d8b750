"""The lifecycle table and the token model, stepped by hand."""

from __future__ import annotations

import random

import pytest

from devicelink.lifecycle import TRANSITIONS, Event, IllegalMove, State, next_state
from devicelink.tokens.model import Account, TokenSet


def test_pairing_then_refresh_cycle():
    s = State.UNPAIRED
    for event, expected in [(Event.PAIR_REQUESTED, State.PAIRING), (Event.CODE_REPLACED, State.PAIRING),
                            (Event.PAIRED, State.PAIRED), (Event.REFRESH_STARTED, State.REFRESHING),
                            (Event.REFRESH_FAILED, State.OFFLINE), (Event.REFRESH_STARTED, State.REFRESHING),
                            (Event.REFRESH_SUCCEEDED, State.PAIRED), (Event.REFRESH_STARTED, State.REFRESHING),
                            (Event.REFRESH_REJECTED, State.REAUTH_REQUIRED), (Event.PAIR_REQUESTED, State.PAIRING),
                            (Event.DENIED, State.REAUTH_REQUIRED)]:
        s = next_state(s, event)
        assert s is expected


@pytest.mark.parametrize("state", [State.PAIRED, State.REFRESHING, State.OFFLINE])
def test_a_held_grant_is_never_moved_into_pairing(state):
    with pytest.raises(IllegalMove):
        next_state(state, Event.PAIR_REQUESTED)


def test_illegal_moves_raise_and_every_state_can_unpair():
    for state in State:
        assert next_state(state, Event.UNPAIRED) is State.UNPAIRED
    with pytest.raises(IllegalMove, match="paired is not allowed in state unpaired"):
        next_state(State.UNPAIRED, Event.PAIRED)
    assert all(isinstance(k[0], State) and isinstance(v, State) for k, v in TRANSITIONS.items())


def tokens(obtained=100.0, lifetime=3600.0, **kw):
    return TokenSet("at", "Bearer", obtained, obtained + lifetime, refresh_token="rt", **kw)


def test_refresh_due_is_jittered_and_before_the_margin():
    t = tokens()
    dues = {round(t.refresh_due(random.Random(seed)), 3) for seed in range(50)}
    assert len(dues) > 40  # jitter spreads a fleet
    assert all(100 + 0.75 * 3600 <= d <= 100 + 0.85 * 3600 for d in dues)
    short = tokens(lifetime=30)
    assert short.refresh_due(random.Random(1)) <= 100 + 15  # never later than half of a short life


def test_rotation_keeps_old_refresh_token_when_none_is_sent():
    old = tokens(account=Account("u1", "Alice"))
    new = TokenSet("at2", "Bearer", 200.0, 3800.0)
    merged = old.rotated(new)
    assert merged.refresh_token == "rt" and merged.access_token == "at2" and merged.account.name == "Alice"
    rotated = old.rotated(TokenSet("at3", "Bearer", 200.0, 3800.0, refresh_token="rt2"))
    assert rotated.refresh_token == "rt2"


def test_record_round_trip_uses_wall_clock_only_across_restarts():
    t = tokens(obtained=100.0, lifetime=3600.0)
    rec = t.to_record(now=1100.0, wall_now=1_000_000.0)  # 2600 s left
    back = TokenSet.from_record(rec, now=5.0, wall_now=1_000_600.0)  # rebooted, 600 s later
    assert back.expires_in(5.0) == pytest.approx(2000.0)
    assert back.lifetime == pytest.approx(3600.0)


def test_record_from_a_clock_that_went_backwards_counts_as_expired():
    rec = tokens().to_record(now=100.0, wall_now=1_000_000.0)
    back = TokenSet.from_record(rec, now=5.0, wall_now=10.0)  # booted in 1970
    assert not back.valid_for(0, 5.0)


def test_a_record_from_before_sanitising_is_cleaned_when_read_back():
    """Issue 10, item 7: a grant saved before names were cleaned kept the server's words;
    read back, its name and scope reach the log, status and screen without control or bidi characters."""
    rec = tokens(account=Account("u1", "Alice\x1b]0;owned\x07\nINFO fake line\u202e")).to_record(100.0, 1_000_000.0)
    rec["scope"] = "openid\x1b[2J profile"
    back = TokenSet.from_record(rec, now=5.0, wall_now=1_000_000.0)
    assert back.account.name == "Alice]0;owned INFO fake line" and back.account.sub == "u1"
    assert back.scope == "openid[2J profile"
