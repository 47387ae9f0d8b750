"""The fault matrix: the daemon against a development server that misbehaves on purpose.

Each fault (simulator/devicelink_sim/faults.py, docs/faults.md) is aimed at the
endpoint where it hurts, and the tests assert what a user would notice: the
daemon never crashes, never asks earlier than allowed (the server's own arrival
times against the interval, backoff and Retry-After it was given), caps its
backoff at about 5 minutes, keeps serving the cached token while it is valid
(state ``offline``), says what is wrong in ``last_error``, and is healthy again
within one backoff step after the server heals. Only ``invalid_grant``, a
refusal of the grant confirmed by one retry, or a denial ends the grant.

Most tests run the engine in-process with the daemon and the server on one
FakeClock, so the timing checks are exact; a few run the real daemon process
against real-time faults (resets, oversized and malformed answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devicelink.config import Config, ProviderConfig, StorageConfig
from devicelink.doctor.daemon import judge_status
from devicelink.engine import Device
from devicelink.errors import Refused
from devicelink.ipc import routes
from devicelink.ipc.routes import TokenQuery
from devicelink.lifecycle import State
from devicelink.oauth.http import ClientAuth, OAuthHttp
from devicelink.tokens.store import EncryptedFileStore
from devicelink_sim.authserver import DevServer
from devicelink_sim.faults import Fault, Faults, parse_spec
from tests.conftest import write_config
from tests.helpers import shaped, FakeClock, StateLog
from tests.engine.test_device import Rig, run

CAP = 300.0  # the backoff cap, seconds (docs/behaviour.md)
REFRESH_BASE = 5.0  # refresh backoff: 5 s doubling (device.py)
SETUP_BASE = 2.0  # discovery and device authorization backoff (grant.Backoff default)
MIN_SPACING = 1.0  # device.MIN_REFRESH_SPACING
EPS = 1e-6


# -- the rig ----------------------------------------------------------------------


class TaggedClock(FakeClock):
    """FakeClock that knows which timers belong to the pairing screen's 1-second ticker, so a
    test can jump straight to the device's next *request* instead of stepping through ticks."""

    def __init__(self) -> None:
        super().__init__()
        self._ticker_ids: set[int] = set()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        import heapq

        future = asyncio.get_running_loop().create_future()
        ident = next(self._ids)
        task = asyncio.current_task()
        if task is not None and task.get_coro().__qualname__.endswith(("._tick", ".tick")):
            self._ticker_ids.add(ident)
        heapq.heappush(self._sleepers, (self.now + seconds, ident, future))
        if self._slept is not None:
            self._slept.set()
        await future

    def timers(self) -> list[float]:
        """Wake times of live timers other than the ticker's."""
        return sorted(when for when, ident, f in self._sleepers if not f.done() and ident not in self._ticker_ids)


class CountingHttp(OAuthHttp):
    inflight = 0

    async def send(self, request):
        self.inflight += 1
        try:
            return await super().send(request)
        finally:
            self.inflight -= 1


class FaultRig(Rig):
    """Rig (test_device.py) with a short exchange deadline (so held requests time out in
    half a second), a count of requests in flight, and ``step()``: advance the shared clock
    to the device's next timer once it is idle."""

    def __init__(self, state_dir: Path, lifetime: int = 7200, deadline: float = 0.5, *,
                 refresh_floor: float | None = None, **server_kw) -> None:
        self.refresh_floor = refresh_floor
        # Rig's fields, with a clock that tells the ticker apart
        self.clock = TaggedClock()
        self.srv = DevServer(clock=self.clock, interval=5, access_token_lifetime=lifetime, **server_kw).start()
        self.state_dir, self.key = state_dir, os.urandom(32)
        self.clock_synced = lambda: True
        self.faults: Faults = self.srv.faults
        self.deadline = deadline

    def device(self, **provider) -> Device:
        provider = {"client_id": self.srv.client_id, "scope": "openid offline_access", **provider}
        cfg = Config(provider=ProviderConfig(issuer=self.srv.issuer, allow_insecure_http=True, **provider),
                     storage=StorageConfig(state_dir=self.state_dir))
        self.client = httpx.AsyncClient()
        self.http = CountingHttp(self.client, ClientAuth(self.srv.client_id), clock=self.clock,
                                 deadline=self.deadline)
        self.dev = Device(cfg, EncryptedFileStore(self.state_dir, self.key), self.http, clock=self.clock,
                          sleep=self.clock.sleep, rng=random.Random(7), clock_synced=self.clock_synced,
                          refresh_floor=self.refresh_floor)
        self.states = StateLog(self.dev)
        return self.dev

    async def idle(self, timeout: float = 15.0) -> None:
        """Until no request is in flight and the device waits on a timer (or has nothing to wait for)."""
        end = time.monotonic() + timeout
        settled = 0
        while settled < 3:
            if time.monotonic() > end:
                raise AssertionError(f"the device did not settle (state {self.dev.state}, "
                                     f"{self.http.inflight} in flight)")
            quiet = self.http.inflight == 0 and (
                self.clock.timers() or self.dev.state in (State.UNPAIRED, State.REAUTH_REQUIRED))
            settled = settled + 1 if quiet else 0
            await asyncio.sleep(0 if settled else 0.001)

    async def step(self) -> float:
        """Advance to the device's next timer and let it act; returns the new time."""
        await self.idle()
        timers = self.clock.timers()
        assert timers, f"nothing scheduled (state {self.dev.state})"
        self.clock.advance(max(0.0, timers[0] - self.clock.now))
        await self.idle()
        return self.clock.now

    async def until(self, condition, max_steps: int = 200) -> None:
        for _ in range(max_steps):
            await self.idle()
            if condition():
                return
            await self.step()
        assert condition(), f"not reached in {max_steps} steps (state {self.dev.state})"

    def hits(self, request: str):
        return self.faults.hits(request)

    async def close(self, device: Device | None = None) -> None:
        self.faults.clear()
        await super().close(device or self.dev)


@pytest.fixture
def no_crash(caplog):
    """The engine never logs a traceback (``logger.exception`` on an unforeseen answer)."""
    caplog.set_level(logging.INFO)
    yield caplog
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith("devicelink")]
    assert not crashes, [r.getMessage() for r in crashes]


# -- what "never earlier than allowed" means ----------------------------------------


def step_bound(base: float, failures: int) -> float:
    return min(CAP, base * 2 ** (failures - 1))


def check_retries(hits, base: float, retry_after: float = 0.0) -> list[float]:
    """Consecutive requests of one kind: after the k-th failure in a row the next one waits
    at least the jittered backoff (half of base·2^(k-1), capped at 300 s) or Retry-After,
    and at most the full step (the cap keeps it near 5 minutes). Returns the gaps."""
    failures, gaps = 0, []
    for prev, nxt in zip(hits, hits[1:]):
        gap = nxt.at - prev.at
        gaps.append(gap)
        assert gap >= MIN_SPACING - EPS, gap  # never two requests back to back
        if prev.outcome == "ok":
            failures = 0
            continue
        failures += 1
        step = step_bound(base, failures)
        assert gap >= max(step / 2, retry_after) - EPS, (failures, gap, step)
        assert gap <= max(step, min(retry_after, 3600)) + EPS, (failures, gap, step)
    return gaps


def check_polls(hits, interval: float = 5, retry_after: float = 0.0) -> None:
    """RFC 8628 §3.5: polls at least ``interval`` apart, +5 s for every slow_down (a bare 429
    counts as one) for this and all later polls; transient failures back off (from the
    interval the code came with) and never poll faster than the current interval."""
    base, transient = interval, 0
    for prev, nxt in zip(hits, hits[1:]):
        gap = nxt.at - prev.at
        if prev.outcome in ("slow_down", "http_429"):
            interval += 5
            transient = 0
            assert gap >= max(interval, retry_after) - EPS, (prev.outcome, gap, interval)
        elif prev.outcome in ("authorization_pending",):
            transient = 0
            assert gap >= interval - EPS, (gap, interval)
        else:  # reset, timeout, 5xx, malformed, oversized, server_error, ...
            transient += 1
            step = step_bound(base, transient)
            assert gap >= max(interval, step / 2, retry_after) - EPS, (prev.outcome, gap, step)
            assert gap <= max(interval, step, retry_after) + EPS, (prev.outcome, gap, step)


# -- refresh against every transient fault -------------------------------------------

#: Faults a refresh meets. Every one keeps the grant: invalid_grant ends it, and so does
#: a 4xx that is not a recognised retryable answer, once confirmed (GRANT_REFUSALS below).
#: A refused client (401 invalid_client) is the config, not the grant: kept.
REFRESH_FAULTS = {
    "503 temporarily_unavailable": lambda t: t.fail(503, error="temporarily_unavailable", times=None),
    "500 html page": lambda t: t.fail(500, times=None),
    "502 html page": lambda t: t.fail(502, times=None),
    "429 retry-after": lambda t: t.rate_limit(retry_after=120, times=None),
    "503 retry-after http-date": lambda t: t.fail(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", times=None),
    "connection reset": lambda t: t.reset(times=None),
    "connection closed": lambda t: t.close(times=None),
    "timeout": lambda t: t.timeout(times=None),
    "malformed json": lambda t: t.malformed(times=None),
    "oversized body": lambda t: t.oversized(times=None),
    "200 with error body": lambda t: t.error_body("server_error", times=None),
    "slow_down storm": lambda t: t.slow_down(times=None),
    "401 invalid_client": lambda t: t.fail(401, error="invalid_client", times=None),
    "latency then 503": lambda t: t.fail(503, delay=0.2, times=None),
}
RETRY_AFTER = {"429 retry-after": 120.0}
FAILED_ATTEMPTS = 6


@pytest.mark.parametrize("fault", list(REFRESH_FAULTS))
def test_refresh_fault_keeps_the_grant_and_serves_the_cached_token(tmp_path, no_crash, fault):
    async def main():
        rig = FaultRig(tmp_path, lifetime=7200)
        device = await rig.paired()
        paired_at = rig.clock.now
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        REFRESH_FAULTS[fault](rig.faults.token)
        retry_after = RETRY_AFTER.get(fault, 0.0)

        await rig.step()  # the proactive refresh meets the fault
        first = rig.hits("refresh")[0]
        assert first.at >= paired_at + min(0.75 * 7200, 7200 - 60) - EPS  # never before it is due
        assert device.state is State.OFFLINE and shaped(device.status())["state"] == "offline"
        assert shaped(device.status())["last_error"], "the user is told what is wrong"
        assert device.healthy()

        while len(rig.hits("refresh")) < FAILED_ATTEMPTS:
            before = len(rig.hits("refresh"))
            for _ in range(10):  # apps keep asking, even for more than the cached token has left ...
                answer = shaped(await device.token(TokenQuery(min_ttl=3500)))
                assert answer["access_token"] == cached and 0 < answer["expires_in"] <= 7200 - 5400
            assert len(rig.hits("refresh")) == before  # ... and never make it retry sooner
            await rig.step()
            assert device.state is State.OFFLINE and shaped(device.status())["last_error"]
        check_retries(rig.hits("refresh"), REFRESH_BASE, retry_after)

        # the server heals: the attempt already scheduled succeeds, within one backoff step
        healed_at = rig.clock.now
        rig.faults.clear()
        last_failure = rig.hits("refresh")[-1].at
        await rig.step()
        success = rig.hits("refresh")[-1]
        assert success.outcome == "ok" and len(rig.hits("refresh")) == FAILED_ATTEMPTS + 1
        assert success.at - healed_at <= max(step_bound(REFRESH_BASE, FAILED_ATTEMPTS), retry_after) + EPS
        assert success.at - last_failure <= CAP + retry_after
        assert device.state is State.PAIRED and shaped(device.status())["last_error"] is None
        fresh = shaped(await device.token(TokenQuery()))
        assert fresh["access_token"] != cached and fresh["expires_in"] > 7000
        assert (tmp_path / "state.bin").exists() and rig.srv.stats.reuse_detections == 0
        await rig.close()

    run(main())


def test_backoff_is_capped_at_five_minutes_and_apps_never_speed_it_up(tmp_path, no_crash):
    """Three hours of a dead server: retries settle at one every 2.5-5 minutes, well inside
    any hourly budget, and the token expiring in between changes nothing about the pace."""
    async def main():
        rig = FaultRig(tmp_path, lifetime=3600)
        device = await rig.paired()
        rig.faults.token.fail(503, times=None)
        start = rig.clock.now
        while rig.clock.now < start + 3 * 3600:
            await rig.step()
            for _ in range(5):
                try:
                    shaped(await device.token(TokenQuery()))
                except Refused as exc:
                    assert exc.code == "upstream_unavailable" and routes.STATUS_BY_CODE[exc.code] == 502
            assert device.state in (State.OFFLINE, State.PAIRED)
        hits = rig.hits("refresh")
        gaps = check_retries(hits, REFRESH_BASE)
        assert max(gaps) <= CAP and min(gaps[7:]) >= CAP / 2  # capped, and reached the cap
        for h in hits:  # no more than a retry every 2.5 minutes once capped
            assert sum(1 for o in hits if h.at <= o.at < h.at + 3600) <= 30
        assert device.state is State.OFFLINE and not device.healthy()
        assert "503" in shaped(device.status())["last_error"]

        rig.faults.clear()
        healed_at = rig.clock.now
        await rig.step()
        assert device.state is State.PAIRED and device.healthy()
        assert rig.hits("refresh")[-1].at - healed_at <= CAP
        assert (shaped(await device.token(TokenQuery())))["expires_in"] > 3500
        await rig.close()

    run(main())


def test_token_expiring_while_offline_is_a_clear_error_and_recovers(tmp_path, no_crash):
    async def main():
        rig = FaultRig(tmp_path, lifetime=600)
        device = await rig.paired()
        rig.faults.token.reset(times=None)
        await rig.until(lambda: device.tokens is not None and not device.tokens.valid_for(0, rig.clock.now))
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "upstream_unavailable" and "cannot be reached" in info.value.description
        assert device.state is State.OFFLINE and not device.healthy()  # still holds the grant
        assert shaped(device.status())["access_token_expires_in"] == 0
        rig.faults.clear()
        healed_at = rig.clock.now
        await rig.step()
        assert device.state is State.PAIRED and device.healthy()
        assert rig.hits("refresh")[-1].at - healed_at <= CAP
        await rig.close()

    run(main())


def test_a_lost_refresh_answer_keeps_the_grant(tmp_path, no_crash):
    """The server rotated the refresh token but the answer never arrived (reset after the
    server acted): the device retries with the token it has; the server's grace rule for an
    unused successor (state.py) lets that through once, and the grant lives on."""
    async def main():
        rig = FaultRig(tmp_path, lifetime=600)
        device = await rig.paired()
        rig.faults.token.reset(after=True)
        await rig.step()
        assert device.state is State.OFFLINE
        await rig.step()
        assert device.state is State.PAIRED and [h.outcome for h in rig.hits("refresh")] == ["reset", "ok"]
        assert rig.srv.stats.reuse_detections == 0
        await rig.close()

    run(main())


def test_many_apps_during_a_slow_refresh_make_one_request(tmp_path, no_crash):
    async def main():
        rig = FaultRig(tmp_path, lifetime=7200)
        device = await rig.paired()
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        rig.faults.token.delay(0.3)
        rig.clock.advance(5500)  # less than half the lifetime left: apps asking for more refresh
        answers = [shaped(a) for a in await asyncio.gather(*(device.token(TokenQuery(min_ttl=3600)) for _ in range(30)))]
        assert len(rig.hits("refresh")) == 1 and len({a["access_token"] for a in answers}) == 1
        assert answers[0]["access_token"] != cached
        await rig.close()

    run(main())


# -- what ends a grant, and what does not ----------------------------------------------


@pytest.mark.parametrize("how", ["revoked behind its back", "revoked as the refresh arrives", "200 invalid_grant"])
def test_invalid_grant_ends_the_grant_and_the_device_stops_asking(tmp_path, no_crash, how):
    async def main():
        rig = FaultRig(tmp_path, lifetime=600)
        device = await rig.paired()
        if how == "revoked behind its back":
            assert rig.faults.revoke_grants() == 1
        elif how == "revoked as the refresh arrives":
            rig.faults.token.revoke()
        else:
            rig.faults.token.error_body("invalid_grant")
        await rig.step()
        assert device.state is State.REAUTH_REQUIRED
        assert "invalid_grant" in shaped(device.status())["last_error"]
        assert not (tmp_path / "state.bin").exists()
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "reauth_required"
        rig.clock.advance(86400)
        await rig.idle()
        assert len(rig.hits("refresh")) == 1  # no retries, no storm: it waits for the owner
        await rig.close()

    run(main())


def test_denial_ends_pairing(tmp_path, no_crash):
    async def main():
        rig = FaultRig(tmp_path)
        device = rig.device()
        await device.start()
        await rig.until(lambda: device.pairing is not None)
        rig.srv.deny(device.pairing.user_code)
        await rig.until(lambda: device.state is State.REAUTH_REQUIRED)
        assert shaped(device.status())["last_error"]
        polls = len(rig.hits("token"))
        rig.clock.advance(3600)
        await rig.idle()
        assert len(rig.hits("token")) == polls
        await rig.close()

    run(main())


# -- pairing against faults -------------------------------------------------------------

#: Faults on discovery and device authorization: each is transient, retried with backoff.
SETUP_FAULTS = {
    "503": lambda e: e.fail(503, times=3),
    "429 retry-after": lambda e: e.rate_limit(retry_after=30, times=3),
    "reset": lambda e: e.reset(times=3),
    "timeout": lambda e: e.timeout(times=3),
    "malformed": lambda e: e.malformed(times=3),
    "oversized": lambda e: e.oversized(times=3),
    "200 server_error": lambda e: e.error_body("server_error", times=3),
    "latency": lambda e: e.delay(0.2, times=3),
}


@pytest.mark.parametrize("endpoint", ["discovery", "device"])
@pytest.mark.parametrize("fault", list(SETUP_FAULTS))
def test_pairing_rides_out_setup_faults(tmp_path, no_crash, endpoint, fault):
    async def main():
        rig = FaultRig(tmp_path)
        SETUP_FAULTS[fault](rig.faults.endpoint(endpoint))
        device = rig.device()
        await device.start()
        saw_error = False
        for _ in range(50):
            if device.pairing is not None:
                break
            await rig.step()
            saw_error |= bool(shaped(device.status())["last_error"])
        assert device.state is State.PAIRING and device.pairing is not None, "a code is shown"
        hits = rig.hits(endpoint)
        if fault == "latency":
            assert [h.outcome for h in hits] == ["ok"]
        else:
            assert [h.outcome for h in hits][-1] == "ok" and len(hits) == 4
            assert saw_error  # while it retried, status said why
            check_retries(hits, SETUP_BASE, 30.0 if "retry-after" in fault else 0.0)
        assert shaped(device.status())["last_error"] is None  # cleared once the code is up
        rig.srv.approve(device.pairing.user_code)
        await rig.until(lambda: device.state is State.PAIRED)
        await rig.close()

    run(main())


def test_a_dead_device_endpoint_is_retried_at_most_every_five_minutes(tmp_path, no_crash):
    async def main():
        rig = FaultRig(tmp_path)
        rig.faults.device.fail(503, times=None)
        device = rig.device()
        await device.start()
        start = rig.clock.now
        while rig.clock.now < start + 2 * 3600:
            await rig.step()
        hits = rig.hits("device")
        gaps = check_retries(hits, SETUP_BASE)
        assert max(gaps) <= CAP and len(hits) <= 8 + 2 * 3600 / (CAP / 2)  # 8 to reach the cap, then >= 150 s apart
        assert device.state is State.PAIRING and "503" in shaped(device.status())["last_error"]
        rig.faults.clear()
        healed_at = rig.clock.now
        await rig.step()
        assert device.pairing is not None and rig.hits("device")[-1].at - healed_at <= CAP
        await rig.close()

    run(main())


#: Faults on the polls once a code is shown.
POLL_FAULTS = {
    "slow_down storm": (lambda t: t.slow_down(times=6), 0.0),
    "200 slow_down (GitHub)": (lambda t: t.error_body("slow_down", times=3), 0.0),
    "200 authorization_pending (GitHub)": (lambda t: t.error_body("authorization_pending", times=3), 0.0),
    "bare 429 with retry-after": (lambda t: t.rate_limit(retry_after=30, times=3), 30.0),
    "503": (lambda t: t.fail(503, times=4), 0.0),
    "reset": (lambda t: t.reset(times=4), 0.0),
    "timeout": (lambda t: t.timeout(times=4), 0.0),
    "malformed": (lambda t: t.malformed(times=4), 0.0),
    "oversized": (lambda t: t.oversized(times=4), 0.0),
    "mixed": (lambda t: t.reset().slow_down().fail(502).timeout().malformed().slow_down(), 0.0),
}


@pytest.mark.parametrize("fault", list(POLL_FAULTS))
def test_polling_rides_out_faults_and_never_polls_too_soon(tmp_path, no_crash, fault):
    async def main():
        rig = FaultRig(tmp_path)
        device = rig.device()
        await device.start()
        await rig.until(lambda: device.pairing is not None)
        inject, retry_after = POLL_FAULTS[fault]
        inject(rig.faults.token)
        rig.srv.approve(device.pairing.user_code)  # approved at once: only the faults stand in the way
        await rig.until(lambda: device.state is not State.PAIRING)
        assert device.state is State.PAIRED
        polls = rig.hits("token")
        assert polls[-1].outcome == "ok" and all(h.fault for h in polls[:-1]), [(h.at, h.outcome, h.fault) for h in polls]
        assert polls[0].at - rig.hits("device")[-1].at >= 5 - EPS  # §3.5: the first poll waits too
        check_polls(polls, interval=5, retry_after=retry_after)
        assert rig.srv.stats.token_requests.get("urn:ietf:params:oauth:grant-type:device_code") == len(polls)
        await rig.close()

    run(main())


# -- unpair against a faulty revocation endpoint --------------------------------------

REVOCATION_FAULTS = {
    "503": lambda r: r.fail(503, times=None),
    "429 retry-after": lambda r: r.rate_limit(retry_after=60, times=None),
    "reset": lambda r: r.reset(times=None),
    "timeout": lambda r: r.timeout(times=None),
    "oversized": lambda r: r.oversized(times=None),
}


@pytest.mark.parametrize("fault", list(REVOCATION_FAULTS))
def test_unpair_with_a_faulty_revocation_endpoint_stops_serving_and_retries(tmp_path, no_crash, fault):
    async def main():
        rig = FaultRig(tmp_path)
        device = await rig.paired()
        refresh_token = device.tokens.refresh_token
        REVOCATION_FAULTS[fault](rig.faults.revocation)
        answer = shaped(await device.unpair())
        assert answer["revoked"] is False and answer["revocation"] == "pending" and answer["revocation_error"]
        assert device.state is State.UNPAIRED and shaped(device.status())["pending_revocations"] == 1
        with pytest.raises(Refused) as info:  # not served from this instant
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "not_paired"
        for _ in range(4):
            await rig.step()
        retry_after = 60.0 if "retry-after" in fault else 0.0
        check_retries(rig.hits("revocation"), REFRESH_BASE, retry_after)
        assert shaped(device.status())["pending_revocations"] == 1 and not rig.srv.revoked(refresh_token)
        rig.faults.clear()
        healed_at = rig.clock.now
        await rig.step()
        assert shaped(device.status())["pending_revocations"] == 0 and rig.srv.revoked(refresh_token)
        assert rig.hits("revocation")[-1].at - healed_at <= max(step_bound(REFRESH_BASE, 5), retry_after)
        await rig.close()

    run(main())


@pytest.mark.parametrize("answer", ["400 unsupported_token_type", "400 html page"])
def test_a_refused_revocation_is_not_reported_as_revoked(tmp_path, answer):
    """RFC 7009 §2.2.1: only 200 means revoked. A 400 (unsupported_token_type, or a proxy's page)
    is not retried, fine, but ``devicelink unpair`` must not tell the owner the grant was revoked."""
    async def main():
        rig = FaultRig(tmp_path)
        device = await rig.paired()
        refresh_token = device.tokens.refresh_token
        if answer == "400 html page":
            rig.faults.revocation.fail(400)
        else:
            rig.faults.revocation.fail(400, error="unsupported_token_type")
        result = shaped(await device.unpair())
        try:
            assert not rig.srv.revoked(refresh_token)
            assert result["revoked"] is False and result["revocation"] == "refused" and result["revocation_error"]
        finally:
            await rig.close()

    run(main())


def test_a_public_clients_refused_revocation_says_the_grant_stays_valid_and_claims_no_retry(tmp_path):
    """Issue 10, item 10: glewlwyd refuses revocation from a public client with 401. Unpair
    stops serving and does not retry a definite refusal, but neither the answer, the status
    nor doctor may suggest the grant is gone at the server or that anything is retried."""
    async def main():
        rig = FaultRig(tmp_path)
        device = await rig.paired()
        refresh_token = device.tokens.refresh_token
        rig.faults.revocation.fail(401, error="invalid_client", times=None)
        result = shaped(await device.unpair())
        status = shaped(device.status())
        try:
            assert result["revoked"] is False and result["revocation"] == "refused"
            assert "stays valid at the server" in result["revocation_error"]
            assert "401" in result["revocation_error"] and "retried" not in result["revocation_error"]
            assert status["last_error_kind"] == "not_revoked" and status["pending_revocations"] == 0
            assert any("stays valid at the server" in w for w in status["warnings"])
            advice = " ".join(f"{f.what} {f.fix}" for f in judge_status(status))
            assert "retr" not in advice and "remove this device in your account" in advice
            assert not rig.clock.timers()  # nothing is scheduled: no retry
            assert len(rig.hits("revocation")) == 1 and not rig.srv.revoked(refresh_token)
        finally:
            await rig.close()

    run(main())


# -- the hourly request budget (issue 4) ---------------------------------------------


def per_rolling_hour(hits) -> int:
    """The most requests in any hour-long window (a request counts for 3600 s after it was sent,
    written as the budget writes it, so that float rounding does not move the edge)."""
    return max((sum(1 for o in hits if o.at <= h.at < o.at + 3600) for h in hits), default=0)


def test_hourly_request_budget_against_a_dead_server(tmp_path, no_crash):
    """Backoff spaces retries; the budget bounds their number. With the budget cut to 3 (plus
    the one refresh a 2-hour token calls for), a dead server sees 4 requests an hour, the
    refusals say so, the grant is kept and the cached token served while valid."""
    async def main():
        rig = FaultRig(tmp_path, lifetime=7200)
        device = await rig.paired()
        assert device.budget.limit == 60  # the default
        device.budget.limit = 3
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        rig.faults.token.fail(503, times=None)
        start, errors = rig.clock.now, set()
        while rig.clock.now < start + 4 * 3600:
            await rig.step()
            errors.add(shaped(device.status())["last_error"] or "")
            try:
                assert (shaped(await device.token(TokenQuery())))["access_token"] == cached
            except Refused as exc:
                assert exc.code == "upstream_unavailable"
                assert not device.tokens.valid_for(0, rig.clock.now)
            assert device.state is State.OFFLINE
        hits = rig.hits("refresh")
        assert per_rolling_hour(hits) <= 3 + 1 and len(hits) >= 8  # bounded, and still retrying
        assert any("request budget" in e for e in errors) and any("503" in e for e in errors)
        rig.faults.clear()
        await rig.until(lambda: device.state is State.PAIRED)
        assert shaped(device.status())["last_error"] is None and per_rolling_hour(rig.hits("refresh")) <= 4
        await rig.close()

    run(main())


def test_hourly_request_budget_with_the_default_limit(tmp_path, no_crash):
    """A server issuing 20-second tokens that fails every other refresh: success resets the
    backoff, so the retries alone would be ~260 an hour on top of the 360 refreshes the token
    lifetime calls for (twice over). The budget (60 beyond those) holds every rolling hour to 420."""
    async def main():
        rig = FaultRig(tmp_path, lifetime=20, refresh_floor=1.0)  # under the default 30 s floor
        device = await rig.paired()
        rig.faults.token.schedule(Fault("status", status=503) if i % 2 == 0 else Fault("ok") for i in range(4000))
        start, errors = rig.clock.now, set()
        while rig.clock.now < start + 5400:
            await rig.step()
            errors.add(shaped(device.status())["last_error"] or "")
            assert device.state in (State.PAIRED, State.OFFLINE)  # the budget never ends the grant
        hits = rig.hits("refresh")
        allowance = 2 * 3600 // 20
        assert per_rolling_hour(hits) <= device.budget.limit + allowance
        assert per_rolling_hour(hits) >= device.budget.limit + allowance - 5  # it did bite
        assert any("request budget" in e for e in errors)
        assert rig.srv.stats.reuse_detections == 0 and (tmp_path / "state.bin").exists()
        await rig.close()

    run(main())


def test_budget_refusal_waits_until_the_budget_is_free(tmp_path, caplog):
    """One request an hour against a dead server, each hour woken exactly when the budget
    frees (as a virtual clock does, and a real one can within its resolution). A refusal must
    never be retried at once: (t0 + 3600) - 3600 < t0 for about one t0 in eight."""
    async def main():
        rig = FaultRig(tmp_path, lifetime=7200)
        device = await rig.paired()
        device.budget.limit = 0  # only the refresh a 2-hour token calls for
        rig.faults.token.fail(503, times=None)
        spins = 0
        try:
            for _ in range(24):
                timers = rig.clock.timers()
                rig.clock.advance(max(0.0, timers[0] - rig.clock.now))
                before = sum("request budget" in r.getMessage() for r in caplog.records)
                try:
                    await rig.idle(timeout=1.0)
                except AssertionError:
                    pass
                spins = max(spins, sum("request budget" in r.getMessage() for r in caplog.records) - before)
                if spins > 3:
                    rig.clock.advance(1.0)  # a moment later the budget is free: let the loop go
                    await rig.idle()
                    break
        finally:
            await rig.close()
        assert spins <= 1, f"{spins} budget refusals at one instant (a busy loop on the event loop)"

    run(main())


# -- the fault API itself ---------------------------------------------------------------


def test_rules_are_a_schedule_and_every_request_is_logged():
    clock = FakeClock()
    with DevServer(clock=clock, interval=1) as srv:
        srv.faults.token.fail(503, times=2).schedule([{"kind": "slow_down"}, Fault("ok"), Fault("reset")])
        http = httpx.Client(base_url=srv.issuer)
        form = {"grant_type": "refresh_token", "refresh_token": "nope", "client_id": srv.client_id}
        statuses = []
        for _ in range(6):
            try:
                statuses.append(http.post("/token", data=form).status_code)
            except httpx.TransportError:
                statuses.append("no answer")
        assert statuses == [503, 503, 400, 400, "no answer", 400]
        assert [e.outcome for e in srv.stats.token_log] == [
            "http_503", "http_503", "slow_down", "invalid_grant", "reset", "invalid_grant"]
        assert [h.fault for h in srv.faults.log] == ["status", "status", "status", "ok", "reset", None]
        assert srv.faults.counts()["requests"] == {"refresh": 6}
        assert not srv.faults.active


def test_probabilities_follow_the_seed():
    with DevServer(interval=1) as srv, httpx.Client(base_url=srv.issuer) as http:
        def pattern(seed):
            srv.faults.clear()
            srv.faults.seed(seed)
            srv.faults.discovery.fail(503, probability=0.5, times=None)
            return [http.get("/.well-known/openid-configuration").status_code for _ in range(20)]

        three = pattern(3)
        assert pattern(3) == three and set(three) == {200, 503} and pattern(4) != three


def test_holds_are_released_at_once():
    with DevServer(interval=1) as srv:
        srv.faults.device.timeout(hold=60)
        began = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.issuer + "/device_authorization", data={"client_id": srv.client_id}, timeout=0.3)
        srv.faults.release()
        assert httpx.post(srv.issuer + "/device_authorization",
                          data={"client_id": srv.client_id}).status_code == 200
        assert time.monotonic() - began < 5
    # stop() released the rest too: a hold outliving its test would have kept stop() waiting


def test_faults_over_http():
    with DevServer(interval=1) as srv:
        url = srv.issuer + "/sim/faults"
        body = {"clear": True, "seed": 1, "token": [{"kind": "rate_limit", "retry_after": 7, "times": 1}],
                "discovery": [{"kind": "malformed"}]}
        snapshot = httpx.post(url, json=body).json()
        assert snapshot["token"][0]["status"] == 429 and snapshot["discovery"][0]["kind"] == "malformed"
        answer = httpx.post(srv.issuer + "/token", data={"grant_type": "refresh_token", "refresh_token": "x",
                                                         "client_id": srv.client_id})
        assert answer.status_code == 429 and answer.headers["retry-after"] == "7"
        assert httpx.get(srv.issuer + "/.well-known/oauth-authorization-server").status_code == 200  # malformed
        state = httpx.get(url).json()
        assert state["token"] == [] and state["requests"] == {"refresh": 1, "discovery": 1}
        bad = httpx.post(url, json={"token": [{"kind": "explode"}]})
        assert bad.status_code == 400 and "explode" in bad.json()["error_description"]
        assert httpx.post(url, json={"device": [{"kind": "reset", "times": None}]}).json()["device"]
        assert httpx.delete(url).json()["device"] == []
        assert httpx.post(url, json={"revoke_grants": True}).status_code == 200


def test_spec_strings():
    assert parse_spec("token:status,status=503,times=3") == ("token", Fault("status", status=503, times=3))
    endpoint, fault = parse_spec("device:timeout,probability=0.25,times=none,hold=45")
    assert endpoint == "device" and fault.times is None and fault.probability == 0.25 and fault.hold == 45
    assert parse_spec("token:slow_down")[1].error == "slow_down"
    for bad in ("token", "nowhere:reset", "token:reset,times", "token:reset,colour=red", "token:teleport"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_cli_server_takes_faults():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root / 'simulator'}"}
    proc = subprocess.Popen([sys.executable, "-m", "devicelink_sim.cli", "server", "--interval", "1",
                             "--fault", "token:status,status=502,times=1", "--fault", "token:reset",
                             "--fault-seed", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        issuer = re.fullmatch(r"issuer (\S+)\n", proc.stdout.readline()).group(1)
        form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "devicelink-sim"}
        assert httpx.post(issuer + "/token", data=form).status_code == 502
        with pytest.raises(httpx.TransportError):
            httpx.post(issuer + "/token", data=form)
        assert httpx.post(issuer + "/token", data=form).json()["error"] == "invalid_grant"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "devicelink_sim.cli", "server", "--fault", "token:teleport"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "teleport" in bad.stderr


# -- the real daemon process ----------------------------------------------------------


def test_real_daemon_survives_resets_oversized_and_malformed_answers(short_tmp, daemons):
    """The real process, real time: hostile answers to discovery, device authorization, polls
    and refreshes. It never exits, never logs a traceback, reports each fault while it lasts,
    serves the cached token meanwhile, and recovers by itself."""
    with DevServer(interval=1, access_token_lifetime=6) as srv:
        srv.faults.discovery.malformed()
        srv.faults.device.reset()
        srv.faults.token.oversized()  # the first poll
        d = daemons(write_config(short_tmp, srv.issuer, srv.client_id))
        code = d.wait_for(r"pairing: enter code (\S+) at")
        srv.approve(code.group(1))
        d.wait_for(r"state pairing -> paired", timeout=60)
        assert [h.outcome for h in srv.faults.hits("discovery")][:2] == ["malformed", "ok"]
        assert [h.outcome for h in srv.faults.hits("device")] == ["reset", "ok"]
        assert [h.outcome for h in srv.faults.hits("token")] == ["oversized", "ok"]

        with d.client() as client:
            for inject in ("reset", "oversized", "malformed"):
                cached = client.token()["access_token"]
                getattr(srv.faults.token, inject)()
                d.wait_for(r"keeping the grant, next try in", timeout=30)
                status = client.status()
                assert status["state"] == "offline" and status["last_error"], status
                assert client.token()["access_token"] == cached  # still valid: still served
                d.wait_for(r"state refreshing -> paired", timeout=30)
                assert client.status()["last_error"] is None
                assert client.token()["access_token"] != cached
                assert d.proc.poll() is None

        refreshes = srv.faults.hits("refresh")
        for prev, nxt in zip(refreshes, refreshes[1:]):
            if prev.outcome != "ok":
                assert nxt.at - prev.at >= REFRESH_BASE / 2 - 0.05  # the first backoff step, at least
        assert srv.stats.reuse_detections == 0
    log = "".join(d.log)
    assert "Traceback" not in log and "unexpected" not in log
    assert d.stop() == 0


def test_real_daemon_unpair_with_the_revocation_endpoint_resetting(short_tmp, daemons, dev_server):
    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    code = d.wait_for(r"pairing: enter code (\S+) at")
    dev_server.approve(code.group(1))
    d.wait_for(r"state pairing -> paired")
    dev_server.faults.revocation.reset()
    out = d.cli("unpair")
    assert "unpaired on this device" in out.stdout and "revocation failed" in out.stderr
    assert d.cli("token").returncode != 0 and "not paired" in d.cli("token").stderr
    assert json.loads(d.cli("status", "--json").stdout)["state"] == "unpaired"
    assert d.proc.poll() is None and "Traceback" not in "".join(d.log)


# -- issue 10 item 9: a refusal of the grant ends it, after one confirming retry --------------

#: Moved out of REFRESH_FAULTS (where they kept the grant for ever, state offline): a 4xx
#: other than 429 that is not a recognised retryable answer is the server refusing the grant.
GRANT_REFUSALS = {
    "empty 400": lambda t: t.fail(400, times=None),
    "malformed json 400": lambda t: t.malformed(times=None, status=400),
    "400 invalid_request": lambda t: t.fail(400, error="invalid_request", times=None),
    "403 html page": lambda t: t.fail(403, times=None),
}


@pytest.mark.parametrize("fault", list(GRANT_REFUSALS))
def test_a_refusal_of_the_grant_ends_it_after_one_confirming_retry(tmp_path, no_crash, fault):
    async def main():
        rig = FaultRig(tmp_path, lifetime=7200)
        device = await rig.paired()
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        GRANT_REFUSALS[fault](rig.faults.token)

        await rig.step()  # the proactive refresh is refused: believed only when it comes again
        assert device.state is State.OFFLINE and (tmp_path / "state.bin").exists()
        status = shaped(device.status())
        last_error = status["last_error"]
        assert "the authorization server refused the grant" in last_error and "confirming" in last_error
        assert status["last_error_kind"] == "refused"
        assert all("retries by itself" not in f.fix for f in judge_status(status))
        assert (shaped(await device.token(TokenQuery())))["access_token"] == cached  # served meanwhile

        await rig.step()  # the one confirming retry, after the backoff
        first, second = rig.hits("refresh")
        check_retries([first, second], REFRESH_BASE)  # spaced as any retry: never at once
        assert device.state is State.REAUTH_REQUIRED and not (tmp_path / "state.bin").exists()
        status = shaped(device.status())
        last_error = status["last_error"]
        assert "the authorization server refused the grant" in last_error and "pair again" in last_error
        assert "cannot be reached" not in last_error and status["last_error_kind"] == "grant_ended"
        assert all("retries by itself" not in f.fix for f in judge_status(status))
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "reauth_required"
        rig.clock.advance(86400)
        await rig.idle()
        assert len(rig.hits("refresh")) == 2  # no more retries: it waits for the owner
        await rig.close()

    run(main())


# -- issue 10 item 4: refresh while the grant cannot be saved ---------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (a disk that fills up for real); unmounted whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system until it refuses another byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("how", ["disk full", "state.bin made a directory"])
def test_a_full_disk_stops_rotation_until_the_grant_is_saved(small_tmpfs, no_crash, how):
    """A full disk: the daemon rotated the refresh token in memory again and again, so the one
    on disk grew older, and after a kill the server saw reuse and revoked the grant. Now the
    save is retried first and nothing rotates meanwhile; the cached access token is served
    until it expires, last_error says why, and nothing is lost when space comes back."""
    async def main():
        state_dir = small_tmpfs / "state"
        state_dir.mkdir(mode=0o700)
        rig = FaultRig(state_dir, lifetime=600)
        device = await rig.paired()
        on_disk = lambda: EncryptedFileStore(state_dir, rig.key).load()["tokens"]["refresh_token"]  # noqa: E731
        paired_with = on_disk()
        if how == "disk full":
            filler = fill(small_tmpfs)
            why = "No space left on device"
        else:
            (state_dir / "state.bin").rename(state_dir / "state.prev.bin")  # a generation to fall back on
            (state_dir / "state.bin").mkdir()
            (state_dir / "state.bin" / "x").touch()
            why = "cannot write"

        await rig.until(lambda: len(rig.hits("refresh")) == 1)  # the proactive refresh rotates ...
        await rig.idle()
        rotated = device.tokens.refresh_token
        assert device.state_file.unsaved  # ... and the disk refuses it
        assert how != "disk full" or rotated != on_disk()
        served = shaped(await device.token(TokenQuery()))["access_token"]
        assert why in shaped(device.status())["last_error"]

        # an hour passes: the save is retried on its backoff, the refresh token is never used again
        start = rig.clock.now
        while rig.clock.now < start + 3600:
            await rig.step()
            assert len(rig.hits("refresh")) == 1, "rotated again while the grant was unsaved"
            status = shaped(device.status())
            last_error = status["last_error"]
            assert why in last_error and "not used again until the grant is saved" in last_error
            assert status["last_error_kind"] == "storage"
            found = [f for f in judge_status(status) if f.what.startswith("last error")]
            assert found[0].level == "fail" and "free space" in found[0].fix and "retries" not in found[0].fix
            if device.tokens.valid_for(0, rig.clock.now):
                assert shaped(await device.token(TokenQuery()))["access_token"] == served  # served while valid
            else:
                with pytest.raises(Refused) as info:
                    await device.token(TokenQuery())
                assert info.value.code == "upstream_unavailable" and "saved" in info.value.description
                assert len(rig.hits("refresh")) == 1  # apps asking do not rotate it either
        assert how != "disk full" or on_disk() == paired_with  # nothing rotated away landed meanwhile

        if how == "disk full":  # space comes back: the save lands first, then the overdue refresh
            filler.unlink()
        else:
            (state_dir / "state.bin" / "x").unlink()
            (state_dir / "state.bin").rmdir()
        await rig.until(lambda: not device.state_file.unsaved)
        await rig.until(lambda: len(rig.hits("refresh")) == 2 and device.state is State.PAIRED)
        assert on_disk() == device.tokens.refresh_token and shaped(device.status())["last_error"] is None
        assert shaped(await device.token(TokenQuery()))["expires_in"] > 500

        await device.stop()  # a restart (or a kill) finds the live refresh token on disk
        again = rig.device()
        await again.start()
        await again.refresh()
        assert again.state is State.PAIRED and rig.srv.stats.reuse_detections == 0
        await rig.close(again)

    run(main())
