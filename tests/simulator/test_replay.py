"""The dev server's memory of one-time identifiers (simulator/devicelink_sim/replay.py): a jti
is refused again until its time is up, and purging in batches forgets only expired ones."""

from __future__ import annotations

from devicelink_sim.replay import SeenIds


def test_a_jti_is_refused_until_it_expires_then_taken_again():
    seen = SeenIds()
    assert seen.first_use(("dev-1", "a"), until=10, now=0)
    assert not seen.first_use(("dev-1", "a"), until=20, now=5)  # a replay
    assert seen.first_use(("dev-2", "a"), until=10, now=5)  # another client's jti may be the same
    assert not seen.first_use(("dev-1", "a"), until=20, now=10)  # still kept at its last second
    assert seen.first_use(("dev-1", "a"), until=30, now=10.5)  # expired (even before a purge): new again
    assert not seen.first_use(("dev-1", "a"), until=40, now=29)


def test_purges_forget_only_what_expired_and_run_once_per_interval():
    seen = SeenIds(purge_every=1.0)
    for i in range(1000):
        assert seen.first_use(i, until=5 if i % 2 else 100, now=0)
    assert len(seen) == 1000
    seen.first_use("x", until=100, now=0.5)  # within the interval: no purge yet
    assert len(seen) == 1001
    seen.first_use("y", until=100, now=6)  # the next check after the interval purges
    assert len(seen) == 500 + 2
    assert not any(seen.first_use(i, until=200, now=7) for i in range(0, 1000, 2))  # the live ones stay refused
