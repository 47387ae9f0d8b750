"""The kill harness against a strict server: the npm ``oidc-provider`` (issue 11, Tests and Measure).

``tests/e2e/test_kill.py`` kills the real daemon at random instants of its refresh-and-save
cycle against the development server, whose grace rule forgives a refresh token presented
again when its successor was never used. oidc-provider forgives nothing: a consumed refresh
token presented again is reuse (``refresh token already used``) and it revokes the whole grant.
A kill that lands after the server rotated the refresh token and before the daemon saved the
new one then loses the grant. Its own rotation rule (``OP_ROTATE_REFRESH_TOKEN=default``) rotates
the refresh tokens of public clients that are not sender-constrained, and keeps a DPoP-bound one
(RFC 9700 §4.14.2): with ``[provider] dpop = true`` there is no rotation, so no such window.

Each lane here is one device: its own oidc-provider (2-second access tokens, so the daemon
refreshes about once a second; nonces required when the lane uses DPoP; its record of issued
tokens, ``OP_RECORD_ISSUED_TO``), state directory and daemon, paired once through the scripted
phone. Kills are aimed as in ``test_kill.py`` (``Lane._aim``: about two in three right after
``-> refreshing``, over the time a refresh-and-save takes). After each kill the daemon is
restarted and judged by what a user would notice: the grant is **lost** when the restart does not
come back with it, or its refreshes end in ``reauth_required`` or ``unpaired`` (or none ends in
``paired`` within 30 s), or the server revoked the grant (``grant.revoked`` in the record; the
report also counts ``refresh_token.destroyed`` and refusals for ``refresh token already used``),
or ``devicelink token`` fails. A lost grant is counted and the lane pairs again (a new grant), so a bench run
can go on; the CI test wants none. Two short tests show the harness does see a loss: one places
the window by hand (the server rotates an unbound refresh token for the daemon just killed), one
revokes a DPoP-bound grant while the daemon is down.

Nothing here is judged against the clock: a refresh's outcome is a log line, and a served token
is not checked at the resource (a DPoP one would need a proof; ``test_dpop.py`` does that), so a
machine that does not run the harness for a while (``test_a_token_that_expires_after_it_was_
served_is_judged_as_served``) only makes the run longer.

``bench/kill_bench.py --server oidc-provider`` runs it for longer, with and without DPoP side by
side. Environment: ``DEVICELINK_DPOP_KILLS`` (45), ``DEVICELINK_KILL_LANES`` (3),
``DEVICELINK_KILL_SEED``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.e2e.test_kill import (LANES, REFRESH_ENDED, REFRESH_OK, REFRESH_STARTED, SEED, Lane, Results, TimedDaemon,
                                 run_kills)

KILLS = int(os.environ.get("DEVICELINK_DPOP_KILLS", "45"))
ACCESS_TOKEN_TTL = 2  # s, oidc-provider's OP_ACCESS_TOKEN_TTL: the daemon refreshes about once a second
SCOPE = "openid profile offline_access"
DPOP = "DPoP-bound (dpop = true)"
BEARER = "unbound (Bearer, rotated)"
OUTCOME = re.compile(r"state refreshing -> (\S+)")
CAME_UP = r"restored the grant|enter code|starting unpaired"


@dataclass
class OidcResults(Results):
    """:class:`Results` by lane kind (``DPOP`` or ``BEARER``)."""

    modes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    lost_how: Counter = field(default_factory=Counter)

    def report(self) -> str:
        lines = [
            f"kills {self.kills}, restarts {self.restarts} in {self.elapsed:.1f} s "
            f"({self.elapsed / max(1, self.kills):.2f} s a kill)",
            f"aimed: {self.aims['window']} in the refresh-and-save window, {self.aims['anywhere']} anywhere",
        ]
        for mode, c in sorted(self.modes.items()):
            per_1000 = 1000 * c["lost"] / max(1, c["kills"])
            lines += [
                f"{mode}: {c['kills']} kills, {c['lost']} grants lost = {per_1000:.0f} per 1,000 kills "
                f"({c['lost_in_flight']} of {c['in_flight']} kills with a refresh in flight)",
                f"  refreshes answered {c['refreshes']}, refresh tokens issued {c['refresh_tokens']} "
                f"over {c['pairings']} pairings, consumed (rotated) {c['consumed']}, "
                f"reuse refused {c['reuse']}, grants revoked {c['revoked']}, "
                f"refresh tokens destroyed {c['destroyed']}",
            ]
        if self.lost_how:
            lines.append("grants lost, as the restarted daemon showed it:")
            lines += [f"  {n:5d}  {how}" for how, n in self.lost_how.most_common()]
        return "\n".join(lines)


class OidcLane(Lane):
    """One device against its own oidc-provider, with ``dpop = true`` or as a plain public client."""

    def __init__(self, root: Path, rng: random.Random, results: OidcResults, dpop: bool) -> None:
        from tests.e2e.test_oidc_provider import Issued
        from tests.support.oidc_provider import OidcProvider

        root.mkdir(parents=True, exist_ok=True)
        self.rng, self.results, self.dpop = rng, results, dpop
        self.mode = DPOP if dpop else BEARER
        self.issued = Issued(root / "issued.jsonl")  # beside the state dir, not in it
        self.op = OidcProvider(access_token_ttl=ACCESS_TOKEN_TTL, dpop_nonce=dpop, rotation="default",
                               record_to=self.issued.path, device_poll_interval=1)  # pairs in seconds
        self.op.start()
        self.cfg = write_config(root, self.op.issuer, self.op.client_id, scope=SCOPE,
                                extra="dpop = true\n" if dpop else "")
        self.state_dir = root / "state"
        self.daemon: TimedDaemon | None = None
        self.durations: list[float] = []
        self.pairings = 0
        #: Runs between the kill and the restart (the tests below: what the server does meanwhile).
        self.after_kill = lambda: None

    def pair(self) -> None:
        if self.daemon is None or self.daemon.proc is None or self.daemon.proc.poll() is not None:
            self.daemon = TimedDaemon(self.cfg).start()
        d = self.daemon
        self.op.approve(d.wait_for(r"pairing: enter code (\S+)", timeout=60).group(1))
        d.wait_for(r"state pairing -> paired", timeout=60)
        self.pairings += 1

    def kill_and_restart(self) -> None:
        d = self.daemon
        assert d is not None
        aim = self._aim(d)
        d.kill()
        self.durations += d.refresh_durations()
        started = sum(bool(REFRESH_STARTED.search(line)) for line in d.log)
        ended = sum(bool(REFRESH_ENDED.search(line)) for line in d.log)
        in_flight = started > ended
        revoked_before = len(self.issued.events("grant.revoked"))
        self.after_kill()

        new = self.daemon = TimedDaemon(self.cfg).start()
        lost = self._judge(new, revoked_before)
        with self.results.lock:
            c = self.results.modes[self.mode]
            self.results.kills += 1
            self.results.restarts += 1
            self.results.aims[aim] += 1
            c["kills"] += 1
            c["in_flight"] += in_flight
            if lost:
                c["lost"] += 1
                c["lost_in_flight"] += in_flight
                self.results.lost_how[f"{self.mode}: {lost}"] += 1
        if lost:  # a new grant, so the lane goes on
            new.stop()
            for name in ("state.bin", "state.prev.bin"):
                (self.state_dir / name).unlink(missing_ok=True)
            self.daemon = None
            self.pair()

    def _judge(self, d: TimedDaemon, revoked_before: int) -> str | None:
        """Why the restarted daemon has no grant, or None when it has it and serves a token."""
        came_up = d.wait_for(CAME_UP, timeout=30).group(0)
        if came_up != "restored the grant":
            return f"came up without it ({came_up})"
        deadline = time.monotonic() + 30
        while True:  # until a refresh ends in paired (one ending in offline is tried again)
            try:
                outcome = d.wait_for(OUTCOME.pattern, timeout=max(1.0, deadline - time.monotonic())).group(1)
            except AssertionError:
                return "no refresh succeeded within 30 s"
            if outcome == "paired":
                break
            if outcome in ("reauth_required", "unpaired"):
                return f"its first refresh ended in {outcome}"
        if len(self.issued.events("grant.revoked")) > revoked_before:
            return "the server revoked the grant"
        out = d.cli("token")
        if out.returncode != 0:
            return f"devicelink token exited {out.returncode}"
        return None

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            self.op.stop()
            issued = self.issued
            with self.results.lock:
                c = self.results.modes[self.mode]
                c["pairings"] += self.pairings
                c["refreshes"] += len(issued.events("grant.success", grant_type="refresh_token"))
                c["refresh_tokens"] += len(issued.values("refresh_token.saved"))
                c["consumed"] += len(issued.values("refresh_token.consumed"))
                c["reuse"] += sum("already used" in (e.get("detail") or "")
                                  for e in issued.events("grant.error", grant_type="refresh_token"))
                c["revoked"] += len(issued.events("grant.revoked"))
                c["destroyed"] += len(issued.values("refresh_token.destroyed"))
                self.results.durations += self.durations


def run_oidc_kills(kills: int, lanes: int = LANES, seed: int = SEED, *, dpop: bool | None = True,
                   root: Path | None = None, progress=None) -> OidcResults:
    """``kills`` over ``lanes`` devices against oidc-provider: all with DPoP (``dpop=True``), none
    (``False``), or (``None``) alternating lanes, both kinds side by side in one run."""
    def kind(index: int) -> bool:
        return dpop if dpop is not None else index % 2 == 0

    results = OidcResults()
    return run_kills(kills, lanes=lanes, seed=seed, root=root, progress=progress, results=results,
                     lane_factory=lambda index, lane_root, rng, res: OidcLane(lane_root, rng, res, kind(index)))


# -- the test --------------------------------------------------------------------------


@pytest.mark.oidc_provider
def test_sigkill_with_dpop_bound_refresh_tokens_never_loses_the_grant_at_a_strict_server(short_tmp):
    """Issue 11: the kill harness against a strict server that does not rotate bound refresh
    tokens: 0 grants lost, and each grant kept the one refresh token it was issued."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    results = run_oidc_kills(KILLS, root=short_tmp, dpop=True)
    print("\n" + results.report())
    c = results.modes[DPOP]
    assert results.kills == results.restarts == c["kills"] == KILLS
    assert c["lost"] == 0, results.report()
    assert c["revoked"] == c["reuse"] == c["destroyed"] == 0
    # Bound, so never rotated: one refresh token per grant (one grant per lane), none consumed.
    assert c["pairings"] == LANES and c["refresh_tokens"] == c["pairings"] and c["consumed"] == 0
    # The harness reached what it is for: kills while a refresh was in flight, and refreshes.
    assert c["in_flight"] >= 1 and c["refreshes"] >= KILLS


def _killed(short_tmp, dpop: bool, path: str, form: dict[str, str], kills: int = 1) -> OidcResults:
    """``kills`` kills of one lane, each just after a refresh was reported (so saved), a second
    before the next; after the first (only), before the restart, the server gets ``form`` at
    ``path`` with the refresh token on disk as ``refresh_token`` and ``token`` and answers 200."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    import httpx

    results = OidcResults()
    lane = OidcLane(short_tmp / "l0", random.Random(SEED), results, dpop)

    def idle(d: TimedDaemon) -> str:
        d.wait_next(REFRESH_OK)
        return "anywhere"

    def meanwhile() -> None:
        on_disk = lane._refresh_token_on_disk()
        answer = httpx.post(f"{lane.op.issuer}{path}", timeout=10, data={
            "client_id": lane.op.client_id, "refresh_token": on_disk, "token": on_disk, **form})
        assert answer.status_code == 200, answer.text
        lane.after_kill = lambda: None

    lane._aim, lane.after_kill = idle, meanwhile
    try:
        lane.pair()
        for _ in range(kills):
            lane.kill_and_restart()
    finally:
        lane.close()
    return results


@pytest.mark.oidc_provider
def test_a_refresh_answered_after_the_kill_loses_an_unbound_grant_at_the_strict_server(short_tmp):
    """The window DPoP closes, placed by hand: the killed daemon's refresh (the refresh token on
    disk) reaches the server, which rotates it, and the answer is lost with the process. The
    restart presents the token on disk again: reuse, the grant is revoked, and the harness counts
    it lost and pairs the lane again (so the test above could see a loss). The second kill: the
    new grant survives it as usual."""
    results = _killed(short_tmp, False, "/token", {"grant_type": "refresh_token"}, kills=2)
    c = results.modes[BEARER]
    assert c["kills"] == 2 and c["lost"] == 1, results.report()
    assert results.lost_how == Counter({f"{BEARER}: its first refresh ended in reauth_required": 1})
    assert c["reuse"] == c["revoked"] == 1 and c["pairings"] == 2 and c["consumed"] >= 1


@pytest.mark.oidc_provider
def test_a_grant_the_server_revoked_while_the_daemon_was_down_is_counted_lost(short_tmp):
    """The harness sees a loss with DPoP too: the grant revoked (RFC 7009, the refresh token on
    disk) between the kill and the restart is lost, however the kill landed."""
    results = _killed(short_tmp, True, "/token/revocation", {"token_type_hint": "refresh_token"})
    c = results.modes[DPOP]
    assert c["kills"] == 1 and c["lost"] == 1 and c["pairings"] == 2, results.report()
