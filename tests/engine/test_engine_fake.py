"""The device engine end to end against a behaving fake authorization server (tests/support/fake_server.py).

The engine is the real one: ``Device`` over ``OAuthHttp`` over ``httpx.AsyncClient``, a real
``EncryptedFileStore`` in tmp_path. Only the far side of the HTTP client is fake
(``httpx.MockTransport``), and time: the device and the server share one FakeClock, so
intervals, lifetimes and backoffs pass when the test moves the clock, and nothing waits.
The real-server tests (test_device.py, test_apps.py, test_daemon_oidc_provider.py) stay.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import httpx
import pytest

from devicelink.config import Config, ProviderConfig, StorageConfig
from devicelink.engine import Device
from devicelink.errors import DeviceLinkError
from devicelink.ipc.routes import TokenQuery
from devicelink.lifecycle import State
from devicelink.oauth.http import ClientAuth, OAuthHttp
from devicelink.policy import App
from devicelink.tokens.store import EncryptedFileStore
from tests.helpers import FakeClock, StateLog, shaped
from tests.support.fake_server import CLIENT_ID, ISSUER, FakeAuthServer

FULL = "openid profile email offline_access"
API = "https://api.example.com"
MFA = "urn:devicelink:acr:mfa"
PLAYER = App("player", scope=frozenset({"openid", "email"}), resources=None)
WALL_EPOCH = 1_700_000_000.0


class HeldStore(EncryptedFileStore):
    """A real store whose saves can be held (a slow SD card): what is served meanwhile shows
    whether the engine waits for the disk."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.saving, self.go = threading.Event(), threading.Event()
        self.go.set()

    def save(self, record) -> None:
        self.saving.set()
        assert self.go.wait(10)
        super().save(record)


class Bench:
    """The fake server and the devices under test, on one FakeClock."""

    def __init__(self, tmp_path: Path, *, auth: str = "none", secret: str | None = None, **server) -> None:
        self.clock = FakeClock()
        self.fake = FakeAuthServer(self.clock, wall=self.wall, client_auth=auth, client_secret=secret, **server)
        self.auth, self.secret = auth, secret
        self.state_dir, self.key = tmp_path, os.urandom(32)
        self.clients: list[httpx.AsyncClient] = []
        self._served = asyncio.Event()
        self.device_kw: dict = {}  # more Device arguments (refresh_floor)
        self.config_kw: dict = {}  # more Config sections (device_token)
        self.dpop = None  # a DPoP (oauth/auth/dpop.py) for the devices' requests (tests/engine/test_dpop.py)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        response = self.fake(request)
        self._served.set()
        return response

    async def until_served(self, condition) -> None:
        """Wait until the fake server's records satisfy ``condition`` (it has answered a request)."""
        while not condition():
            self._served.clear()
            await asyncio.wait_for(self._served.wait(), 10)

    def wall(self) -> float:
        return WALL_EPOCH + self.clock.now

    def device(self, *, secret: str | None = None, store: EncryptedFileStore | None = None,
               clock_synced: bool = True, **provider) -> Device:
        """The one place the engine is built (as daemon.py builds it)."""
        cfg = Config(provider=ProviderConfig(**{"issuer": ISSUER, "client_id": CLIENT_ID, "scope": FULL,
                                                "client_auth": self.auth, **provider}),
                     storage=StorageConfig(state_dir=self.state_dir), **self.config_kw)
        client = httpx.AsyncClient(transport=httpx.MockTransport(self._serve))
        self.clients.append(client)
        http = OAuthHttp(client, ClientAuth(CLIENT_ID, self.auth, secret or self.secret, dpop=self.dpop),
                         clock=self.clock)
        device = Device(cfg, store or EncryptedFileStore(self.state_dir, self.key), http,
                        clock=self.clock, sleep=self.clock.sleep, wall_clock=self.wall,
                        rng=random.Random(7), clock_synced=lambda: clock_synced, **self.device_kw)
        self.states = StateLog(device)
        return device

    async def code_shown(self) -> str:
        """The user code on screen, once the device waits to poll for it."""
        await self.clock.timer_beyond(1.5)  # the first poll's timer (the screen's ticker ticks at 1 s)
        codes = self.fake.pending_user_codes()
        assert len(codes) == 1
        return codes[0]

    async def next_poll(self) -> None:
        """Move the clock to the device's next poll, and wait for the server's answer."""
        polls = len(self.fake.requests("device_token"))
        self.clock.advance(await self.clock.timer_beyond(1.5) - self.clock.now)
        await self.until_served(lambda: len(self.fake.requests("device_token")) > polls)

    async def next_timer(self) -> None:
        self.clock.advance(await self.clock.next_timer() - self.clock.now)

    async def waits_for_the_user(self) -> bool:
        """An hour passes; then whether the device has nothing scheduled (it asks nobody by itself)."""
        self.clock.advance(3600)
        for _ in range(20):
            await asyncio.sleep(0)
        return self.clock.next_wake is None

    async def showing_a_code(self, **provider) -> tuple[Device, str]:
        """A device started unpaired (it shows a code at boot, RFC-CHECKLIST A3), and its user code."""
        device = self.device(**provider)
        await device.start()
        return device, await self.code_shown()

    async def paired(self, **provider) -> Device:
        device, code = await self.showing_a_code(**provider)
        self.fake.approve(code)
        await self.next_poll()
        await self.states.wait(State.PAIRED)
        return device

    def on_disk(self) -> dict | None:
        """The state file, decrypted by a store of its own."""
        return EncryptedFileStore(self.state_dir, self.key).load()

    def refreshes(self) -> list:
        return self.fake.requests("refresh")

    async def close(self, *devices: Device) -> None:
        for device in devices:
            await device.stop()
        for client in self.clients:
            await client.aclose()


async def refused(call, match: str | None = None) -> str:
    """The error code an engine call refused with (the one place that knows how refusals look)."""
    with pytest.raises(DeviceLinkError, match=match) as info:
        await call
    return info.value.code


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


# -- pairing (RFC 8414, RFC 8628) ----------------------------------------------------


@pytest.mark.parametrize(("auth", "secret"), [
    ("none", None),
    ("client_secret_basic", "s3cr:t/+é%"),  # form-encoded before base64, RFC 6749 §2.3.1
    ("client_secret_post", "s3cr:t/+é%"),
])
def test_pairing_discovers_polls_and_keeps_the_grant_encrypted(tmp_path, auth, secret):
    async def main():
        bench = Bench(tmp_path, auth=auth, secret=secret)
        device, code = await bench.showing_a_code()
        assert device.state is State.PAIRING and shaped(device.status())["pairing"]["user_code"] == code
        discovery, authorization = bench.fake.seen
        assert discovery.kind == "discovery" and discovery.status == 200
        assert authorization.kind == "device_authorization" and authorization.value("scope") == FULL

        await bench.next_poll()  # not approved yet: RFC 8628 §3.5 authorization_pending
        await bench.clock.timer_beyond(1.5)
        assert device.state is State.PAIRING
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)

        polls = bench.fake.requests("device_token")
        assert [p.error for p in polls] == ["authorization_pending", None]  # never slow_down
        assert polls[0].at - authorization.at == 5  # §3.5: one interval before the first poll too
        assert all(s.status != 401 for s in bench.fake.seen)  # every request authenticated as configured
        rt = bench.fake.live_refresh_token()
        assert device.tokens.refresh_token == rt and shaped(device.status())["account"] == {"sub": "alice", "name": "Alice"}
        answer = shaped(await device.token(TokenQuery()))
        info = bench.fake.access_token_info(answer["access_token"])
        assert info["active"] and info["sub"] == "alice"

        raw = (tmp_path / "state.bin").read_bytes()
        assert rt.encode() not in raw and answer["access_token"].encode() not in raw  # RFC 6749 §10.3
        assert bench.on_disk()["tokens"]["refresh_token"] == rt
        await device.stop()

        again = bench.device()  # a restart serves the grant from disk, with nothing asked upstream
        await again.start()
        assert again.state is State.PAIRED
        assert (shaped(await again.token(TokenQuery())))["access_token"] == answer["access_token"]
        assert len(bench.fake.requests("device_authorization")) == 1 and bench.refreshes() == []
        await bench.close(again)

    run(main())


def test_a_wrong_client_secret_ends_the_pairing_at_once(tmp_path):
    async def main():
        bench = Bench(tmp_path, auth="client_secret_basic", secret="right")
        device = bench.device(secret="wrong")
        await device.start()
        await bench.states.wait(State.UNPAIRED)
        assert "invalid_client" in shaped(device.status())["last_error"]
        assert await bench.waits_for_the_user()
        assert [s.status for s in bench.fake.requests("device_authorization")] == [401]  # no retry loop
        await bench.close(device)

    run(main())


def test_discovery_falls_back_to_openid_configuration(tmp_path):
    async def main():
        bench = Bench(tmp_path, discovery=("openid",))
        device = await bench.paired()
        assert [s.status for s in bench.fake.requests("discovery")] == [404, 200]  # RFC 8414, then OIDC
        assert shaped(device.status())["account"]["sub"] == "alice"
        await bench.close(device)

    run(main())


def test_slow_down_adds_five_seconds_for_every_later_poll(tmp_path):
    """RFC 8628 §3.5. The server enforces 8 s though it announced 5 (GitHub checks the rate
    first, RFC-CHECKLIST G9): one slow_down, then the device polls every 10 s."""
    async def main():
        bench = Bench(tmp_path, poll_spacing=8)
        device, code = await bench.showing_a_code()
        for _ in range(4):
            await bench.next_poll()
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        issued = bench.fake.requests("device_authorization")[0].at
        polls = bench.fake.requests("device_token")
        assert [p.error for p in polls] == ["slow_down"] + ["authorization_pending"] * 3 + [None]
        assert [p.at - issued for p in polls] == [5, 15, 25, 35, 45]  # +5 for this and every later poll
        await bench.close(device)

    run(main())


def test_a_denied_code_stops_polling(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device, code = await bench.showing_a_code()
        bench.fake.deny(code)
        await bench.next_poll()
        await bench.states.wait(State.REAUTH_REQUIRED)
        assert "declined" in shaped(device.status())["last_error"]
        assert await bench.waits_for_the_user()
        assert len(bench.fake.requests("device_token")) == 1  # §3.5: access_denied ends polling
        assert device.tokens is None and bench.on_disk() is None
        await bench.close(device)

    run(main())


def test_an_expired_code_is_replaced_by_a_new_one(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device, first = await bench.showing_a_code()
        bench.fake.expire(first)  # the server ends it before its expires_in (Entra, RFC-CHECKLIST F)
        await bench.next_poll()
        second = await bench.code_shown()
        assert second != first and shaped(device.status())["pairing"]["user_code"] == second
        assert bench.fake.requests("device_token")[-1].error == "expired_token"
        bench.fake.approve(second)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        assert len(bench.fake.requests("device_authorization")) == 2
        await bench.close(device)

    run(main())


# -- refresh (RFC 6749 §6, RFC 9700 §4.14.2) ---------------------------------------------


def test_silent_refresh_puts_the_rotated_refresh_token_on_disk_before_serving_the_new_access_token(tmp_path):
    async def main():
        bench = Bench(tmp_path, lifetime=100)
        store = HeldStore(tmp_path, bench.key)
        device = await bench.paired(store=store)
        old = shaped(await device.token(TokenQuery()))
        first_rt = device.tokens.refresh_token

        store.saving.clear()
        store.go.clear()  # the disk is slow now
        await bench.next_timer()  # the proactive refresh, before expiry
        assert await asyncio.to_thread(store.saving.wait, 10)
        (refresh,) = bench.refreshes()
        assert refresh.value("refresh_token") == first_rt and refresh.at < bench.clock.now + 100
        new_rt = bench.fake.live_refresh_token()
        assert new_rt != first_rt
        # The server has rotated; the disk still holds the old refresh token: apps get the old access token.
        assert (shaped(await device.token(TokenQuery(min_ttl=1))))["access_token"] == old["access_token"]

        store.go.set()
        await bench.states.wait(State.PAIRED)
        assert bench.on_disk()["tokens"]["refresh_token"] == new_rt == device.tokens.refresh_token
        new = shaped(await device.token(TokenQuery()))
        assert new["access_token"] != old["access_token"]
        assert bench.fake.access_token_info(new["access_token"])["active"]

        await bench.next_timer()  # the next refresh presents the rotated token
        await bench.states.wait(State.PAIRED)
        assert bench.refreshes()[-1].value("refresh_token") == new_rt
        assert bench.fake.reuse_detections == 0
        await bench.close(device)

    run(main())


def test_one_refresh_however_many_ask_at_once(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        bench.clock.now += 1850  # less than half the lifetime left, the proactive refresh not yet due
        answers = [shaped(a) for a in await asyncio.gather(*(device.token(TokenQuery(min_ttl=3600)) for _ in range(40)))]
        assert len(bench.refreshes()) == 1  # two at once would present a rotated-away token
        assert len({a["access_token"] for a in answers}) == 1 and answers[0]["expires_in"] > 3500
        assert bench.fake.reuse_detections == 0
        await bench.close(device)

    run(main())


@pytest.mark.parametrize("refusal", ["invalid_grant", "empty"])
def test_a_replayed_refresh_token_ends_the_grant(tmp_path, refusal):
    """The SD card lost the save of a rotated refresh token: the device presents the old one.
    The server revokes the family (RFC 9700 §4.14.2). Whether it says invalid_grant, or
    answers an empty 400 as glewlwyd does (issue 9: a refusal, not a network fault), the
    grant is over: wiped, reauth_required, and nothing asked again by itself (RFC-CHECKLIST B5)."""
    async def main():
        bench = Bench(tmp_path, lifetime=100, refusal=refusal)
        device = await bench.paired()
        lost = (tmp_path / "state.bin").read_bytes()
        await bench.next_timer()
        await bench.states.wait(State.PAIRED)
        rotated = bench.fake.live_refresh_token()
        await device.stop()
        (tmp_path / "state.bin").write_bytes(lost)
        (tmp_path / "state.prev.bin").unlink(missing_ok=True)

        again = bench.device(clock_synced=False)  # the stored access token is not trusted: refresh first
        await again.start()
        if refusal == "empty":  # issue 10 item 9: not invalid_grant, so confirmed once, after the backoff
            assert await refused(again.token(TokenQuery()), match="refused") == "upstream_unavailable"
            assert again.state is State.OFFLINE and bench.on_disk() is not None
            refreshes = len(bench.refreshes())
            for _ in range(20):  # to the confirming retry (the clock, unsynchronised, is looked at meanwhile)
                await bench.next_timer()
                if len(bench.refreshes()) > refreshes:
                    break
            await bench.states.wait(State.REAUTH_REQUIRED)
        assert await refused(again.token(TokenQuery())) == "reauth_required"
        assert again.state is State.REAUTH_REQUIRED and bench.on_disk() is None
        assert bench.fake.reuse_detections == 1 and bench.fake.is_revoked(rotated)
        assert await bench.waits_for_the_user()
        assert len(bench.refreshes()) == (3 if refusal == "empty" else 2)
        assert len(bench.fake.requests("device_authorization")) == 1
        await bench.close(again)

    run(main())


def test_an_empty_400_on_refresh_is_a_refusal_not_a_network_fault(tmp_path):
    """Issue 9, item 1: a 4xx with an empty or non-JSON body is the server refusing
    (glewlwyd answers a disabled refresh token so), not a network fault to retry for ever.
    Issue 10, item 9: it is confirmed by one more attempt, spaced by the backoff, first."""
    async def main():
        bench = Bench(tmp_path, lifetime=100)
        device = await bench.paired()
        cached = device.tokens.access_token
        bench.fake.fail_next(2, 400, at="refresh", body=b"")
        bench.clock.now += 60  # past half the lifetime, before the proactive refresh fires
        assert (shaped(await device.token(TokenQuery(min_ttl=60))))["access_token"] == cached  # still valid
        status = shaped(device.status())
        assert device.state is State.OFFLINE and bench.on_disk() is not None
        assert "refused the grant" in status["last_error"] and "cannot reach" not in status["last_error"]
        bench.clock.advance(await bench.clock.timer_beyond(2.5) - bench.clock.now)  # the backoff's retry
        await bench.states.wait(State.REAUTH_REQUIRED)
        assert bench.on_disk() is None and "refused the grant" in shaped(device.status())["last_error"]
        assert await refused(device.token(TokenQuery())) == "reauth_required"
        assert await bench.waits_for_the_user()
        first, second = bench.refreshes()  # one confirming retry, not retried as if the network had failed
        assert 2.5 <= second.at - first.at <= 5  # the backoff's first step (5 s, jittered down to half)
        await bench.close(device)

    run(main())


@pytest.mark.parametrize(("status", "body", "retry_after"), [
    (503, {"error": "temporarily_unavailable"}, 120),
    (429, b"", 120),
    (500, b"<html>Internal Server Error</html>", None),
    (502, b"", None),
])
def test_server_trouble_keeps_the_grant_and_serves_the_cached_token(tmp_path, status, body, retry_after):
    async def main():
        bench = Bench(tmp_path, lifetime=100)
        device = await bench.paired()
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        rt = device.tokens.refresh_token
        bench.fake.fail_next(1, status, at="refresh", body=body, retry_after=retry_after)
        await bench.next_timer()
        await bench.states.wait(State.OFFLINE)
        assert str(status) in shaped(device.status())["last_error"]
        assert bench.on_disk()["tokens"]["refresh_token"] == rt  # nothing deleted (RFC-CHECKLIST B5)
        for _ in range(10):  # served from the cache, without asking upstream again
            assert (shaped(await device.token(TokenQuery(min_ttl=1))))["access_token"] == cached
        assert len(bench.refreshes()) == 1

        retry = await bench.clock.next_timer() - bench.clock.now
        assert retry >= (retry_after or 2.5)  # Retry-After honoured; else a backoff, not a loop
        await bench.next_timer()
        await bench.states.wait(State.PAIRED)
        assert [r.value("refresh_token") for r in bench.refreshes()] == [rt, rt]
        assert (shaped(await device.token(TokenQuery())))["access_token"] != cached
        assert shaped(device.status())["last_error"] is None
        await bench.close(device)

    run(main())


# -- narrowed tokens (RFC 6749 §6 scope, RFC 8707 resource) ------------------------------


def test_narrowed_tokens_cost_one_upstream_request_per_key_and_keep_the_rotated_grant(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired(resource=(API,))
        api_app = App("api", scope=frozenset({"openid", "email"}), resources=frozenset({API}))
        mailer = App("mailer", scope=frozenset({"email"}), resources=None)
        asks = [(PLAYER, TokenQuery()), (api_app, TokenQuery()), (mailer, TokenQuery()),
                (PLAYER, TokenQuery(scope="email"))]
        answers = [shaped(a) for a in await asyncio.gather(*(device.token(query, app) for app, query in asks * 15))]

        keys = {(r.value("scope"), r.value("resource")) for r in bench.refreshes()}
        assert len(bench.refreshes()) == 3 and keys == {("email", None), ("email openid", None), ("email openid", API)}
        for i, (app, query) in enumerate(asks):
            tokens = {a["access_token"] for a in answers[i::len(asks)]}
            assert len(tokens) == 1, app.name
            info = bench.fake.access_token_info(tokens.pop())  # what the server issued, not what we say
            assert info["scope"] == (query.scope or " ".join(sorted(app.scope)))
            assert info["aud"] == [API]  # the grant's only resource, or the one asked for

        # Every narrowed refresh rotated the refresh token: the grant holds the live one, on disk too.
        live = bench.fake.live_refresh_token()
        assert device.tokens.refresh_token == live == bench.on_disk()["tokens"]["refresh_token"]
        await asyncio.gather(*(device.token(query, app) for app, query in asks))
        assert len(bench.refreshes()) == 3  # cached per key
        await bench.next_timer()  # the grant's own refresh presents the live token
        await bench.states.wait(State.PAIRED)
        assert bench.refreshes()[-1].value("refresh_token") == live and bench.refreshes()[-1].value("scope") is None
        assert bench.fake.reuse_detections == 0
        await bench.close(device)

    run(main())


def test_a_narrowing_the_server_refuses_is_forbidden_and_keeps_the_grant(tmp_path):
    """The user consented to less than the device asked for; an app asks for a scope of its
    resource that the grant lacks: the server says invalid_scope, which is no loss of the grant."""
    async def main():
        bench = Bench(tmp_path)
        device, code = await bench.showing_a_code(resource=(API,))
        bench.fake.approve(code, scope="openid email offline_access")
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        viewer = App("viewer", scope=frozenset({"profile"}), resources=frozenset({API}))
        assert await refused(device.token(TokenQuery(resource=API), viewer)) == "forbidden"
        assert bench.refreshes()[-1].error == "invalid_scope"
        assert device.state is State.PAIRED and device.tokens.refresh_token == bench.fake.live_refresh_token()
        bench.clock.now += 1850
        assert (shaped(await device.token(TokenQuery(min_ttl=3600))))["expires_in"] > 3500  # the grant refreshes fine
        assert [r.error for r in bench.refreshes()] == ["invalid_scope", None]
        assert bench.fake.reuse_detections == 0
        await bench.close(device)

    run(main())


# -- unpairing (RFC 7009) -----------------------------------------------------------------


def test_unpair_revokes_the_grant_at_the_server(tmp_path):
    async def main():
        bench = Bench(tmp_path, auth="client_secret_post", secret="s")
        device = await bench.paired()
        narrowed = (shaped(await device.token(TokenQuery(), PLAYER)))["access_token"]
        live = bench.fake.live_refresh_token()
        answer = shaped(await device.unpair())
        assert answer["revoked"] is True and device.state is State.UNPAIRED
        (revocation,) = bench.fake.requests("revocation")
        assert revocation.status == 200 and revocation.value("token") == live
        assert revocation.value("token_type_hint") == "refresh_token"
        assert bench.fake.is_revoked(live) and not bench.fake.access_token_info(narrowed)["active"]
        assert bench.on_disk() is None and await refused(device.token(TokenQuery())) == "not_paired"
        await bench.close(device)

    run(main())


def test_unpair_of_a_grant_the_server_already_dropped_is_done(tmp_path):
    """RFC 7009 §2.2: 200 for a token already invalid, so nothing stays owed."""
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        bench.fake.revoke(bench.fake.live_refresh_token())  # the user removed the device on their account page
        answer = shaped(await device.unpair())
        assert answer["revoked"] is True and shaped(device.status())["pending_revocations"] == 0
        await bench.close(device)

    run(main())


def test_a_revocation_the_server_cannot_take_now_is_retried_after_its_retry_after(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        live = bench.fake.live_refresh_token()
        bench.fake.fail_next(1, 503, at="revocation", retry_after=30)
        answer = shaped(await device.unpair())
        assert answer["revoked"] is False and shaped(device.status())["pending_revocations"] == 1
        assert await refused(device.token(TokenQuery())) == "not_paired"  # served no more meanwhile
        assert not bench.fake.is_revoked(live)
        assert await bench.clock.next_timer() - bench.clock.now >= 30
        await bench.next_timer()
        await device.revocations_settled()
        assert bench.fake.is_revoked(live) and shaped(device.status())["pending_revocations"] == 0
        assert [r.value("token") for r in bench.fake.requests("revocation")] == [live, live]
        await bench.close(device)

    run(main())


# -- step-up (RFC 9470) ---------------------------------------------------------------------


async def confirm_step_up(bench: Bench, device: Device, user_code: str, **how) -> None:
    """The owner confirms the step-up's code on the phone; the device's next poll sees it."""
    bench.fake.approve(user_code, **how)
    await bench.next_poll()
    await device.step_ups_settled()


def test_step_up_asks_for_acr_values_and_gives_that_app_the_stronger_token(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        standing = device.tokens
        status, pending = shaped(await device.step_up(PLAYER, MFA, 300))
        assert status == 202 and pending["user_code"]
        asked = bench.fake.requests("device_authorization")[-1]
        assert (asked.value("acr_values"), asked.value("max_age"), asked.value("scope")) == (MFA, "300", "email openid")
        assert (shaped(await device.token(TokenQuery())))["access_token"] == standing.access_token  # others still served

        signed_in = int(bench.wall())
        await confirm_step_up(bench, device, pending["user_code"])
        status, answer = shaped(await device.step_up(PLAYER, MFA, 300))
        assert status == 200 and answer["acr"] == MFA and answer["auth_time"] == signed_in
        info = bench.fake.access_token_info(answer["access_token"])
        assert info["acr"] == MFA and info["scope"] == "email openid"
        assert device.tokens.refresh_token == standing.refresh_token == bench.fake.issued_refresh_tokens()[0]
        await bench.close(device)

    run(main())


@pytest.mark.parametrize(("max_age", "how", "why"), [
    (None, {"acr": None}, "ignored acr_values"),  # no acr claim at all
    (None, {"acr": "urn:devicelink:acr:password"}, "ignored acr_values"),
    (300, {"signed_in_ago": 3600}, "ignored max_age"),  # an old session was reused
])
def test_a_step_up_the_server_did_not_honour_is_named_plainly(tmp_path, max_age, how, why):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        _, pending = shaped(await device.step_up(PLAYER, MFA, max_age))
        await confirm_step_up(bench, device, pending["user_code"], **how)
        assert await refused(device.step_up(PLAYER, MFA, max_age), match=why) == "step_up_unsupported"
        assert device.state is State.PAIRED
        await bench.close(device)

    run(main())


# -- issue 10: a hostile authorization server (items 6, 7) and the code's last interval (item 11) ----


def drawing(bench: Bench, **provider) -> tuple[Device, list]:
    """A device whose display keeps every screen it is asked to draw."""
    from types import SimpleNamespace

    from devicelink.display.port import ScreenPort

    device, screens = bench.device(**provider), []
    device.screen = ScreenPort(SimpleNamespace(show=lambda screen, now: screens.append(screen), close=lambda: None),
                               bench.clock)
    return device, screens


@pytest.mark.parametrize(("answer", "why"), [
    ({"verification_uri": "http://login-examp1e.evil.test/device",
      "verification_uri_complete": "http://login-examp1e.evil.test/device?c=1"}, "not https"),
    ({"verification_uri": "https://login-examp1e.evil.test/device",
      "verification_uri_complete": "https://login-examp1e.evil.test/device?c=1"}, "verification_hosts"),
    ({"verification_uri_complete": "https://evil.test/activate?c=1"}, "verification_uri_complete is on host"),
])
def test_a_phishing_verification_uri_fails_the_pairing_and_draws_nothing(tmp_path, answer, why):
    async def main():
        bench = Bench(tmp_path)
        bench.fake.device_answer = answer
        device, frames = drawing(bench)
        await device.start()
        await bench.states.wait(State.UNPAIRED)
        status = shaped(device.status())
        assert why in status["last_error"] and status["pairing"] is None
        assert all(screen.pairing is None for screen in frames)  # no URI, no QR, no code
        assert bench.fake.requests("device_token") == []  # nor polled for
        assert await bench.waits_for_the_user()
        await bench.close(device)

    run(main())


def test_a_verification_host_in_the_config_admits_the_providers_own_page(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        bench.fake.device_answer = {"verification_uri": "https://www.google.com/device",
                                    "verification_uri_complete": "https://www.google.com/device?c=1"}
        device, frames = drawing(bench, verification_hosts=("www.google.com",))
        await device.start()
        code = await bench.code_shown()
        assert frames[-1].pairing.verification_uri == "https://www.google.com/device"
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        await bench.close(device)

    run(main())


def test_a_user_code_with_control_characters_fails_the_pairing_without_echoing_it(tmp_path, caplog):
    async def main():
        bench = Bench(tmp_path)
        bench.fake.device_answer = {"user_code": "WDJB\x1b]0;pwned\x07\nFAKE LOG LINE"}
        device, frames = drawing(bench)
        await device.start()
        await bench.states.wait(State.UNPAIRED)
        last_error = shaped(device.status())["last_error"]
        assert "user_code" in last_error and "\x1b" not in last_error and "FAKE" not in last_error
        assert all(screen.pairing is None for screen in frames)
        await bench.close(device)

    run(main())
    assert not any("\x1b" in r.getMessage() or "FAKE" in r.getMessage() for r in caplog.records)


def test_an_account_name_with_control_characters_reaches_nothing_unstripped(tmp_path, caplog):
    async def main():
        bench = Bench(tmp_path)
        device, frames = drawing(bench)
        published, publish = [], device.events.publish
        device.events.publish = lambda name, data: (published.append(data), publish(name, data))[1]
        await device.start()
        code = await bench.code_shown()
        bench.fake.approve(code, name="Alice\n2026-12-03 ERROR forged line\x1b]0;owned\x07\u202etxt.exe")
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        account = shaped(device.status())["account"]
        assert account == {"sub": "alice", "name": "Alice 2026-12-03 ERROR forged line]0;ownedtxt.exe"}
        assert frames[-1].account == account["name"]
        assert published and not any("\\x1b" in repr(d) or "\\u202e" in repr(d) or "\x1b" in repr(d)
                                     for d in published)
        await bench.close(device)

    run(main())
    for record in caplog.records:
        assert not any(ch in record.getMessage() for ch in "\x1b\u202e\x07"), record.getMessage()


def test_an_approval_in_the_codes_last_interval_is_not_lost(tmp_path):
    """A 15 s code polled every 5 s, approved at second 11: the device used to give up at
    second 10; now it makes its last poll at second 15, the deadline itself."""
    async def main():
        bench = Bench(tmp_path, code_lifetime=15)
        bench.fake.code_grace = 0.5  # it takes a code to the end of its last second
        device, code = await bench.showing_a_code()
        await bench.next_poll()  # second 5
        await bench.next_poll()  # second 10
        bench.clock.advance(1)
        bench.fake.approve(code)  # second 11
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        issued = bench.fake.requests("device_authorization")[0].at
        assert [p.at - issued for p in bench.fake.requests("device_token")] == [5, 10, 15]
        assert len(bench.fake.requests("device_authorization")) == 1
        await bench.close(device)

    run(main())


def test_one_refusal_then_tokens_keeps_the_grant(tmp_path):
    """Issue 10, item 9: a refusal that is not invalid_grant (a proxy's empty 400) is not
    believed until it comes twice: when the confirming attempt gets tokens, all is well."""
    async def main():
        bench = Bench(tmp_path, lifetime=100)
        device = await bench.paired()
        bench.fake.fail_next(1, 400, at="refresh", body=b"")
        await bench.next_timer()
        await bench.states.wait(State.OFFLINE)
        assert "confirming" in shaped(device.status())["last_error"]
        await bench.next_timer()
        await bench.states.wait(State.PAIRED)
        assert shaped(device.status())["last_error"] is None and bench.on_disk() is not None
        bench.fake.fail_next(1, 400, at="refresh", body=b"")  # a later lone refusal is a first one again
        await bench.next_timer()
        await bench.states.wait(State.OFFLINE)
        await bench.next_timer()
        await bench.states.wait(State.PAIRED)
        assert len(bench.refreshes()) == 4 and bench.fake.reuse_detections == 0
        await bench.close(device)

    run(main())


# -- issue 10 item 8: token lifetimes that storm -------------------------------------------


async def _apps_asking_for(bench: Bench, device: Device, seconds: int) -> list[dict]:
    """Apps ask every second for ``seconds`` of the shared clock; their answers."""
    answers = []
    for _ in range(seconds):
        bench.clock.advance(1)  # a refresh that came due starts, or the app's ask starts it
        answers.append(shaped(await device.token(TokenQuery())))
    await device.refresher.settle(10)  # the one in flight, if any, has answered
    return answers


@pytest.mark.parametrize("lifetime", [0, 10])
def test_a_token_shorter_than_the_floor_is_served_as_it_is_without_a_storm(tmp_path, lifetime):
    """expires_in 0 made 30 refreshes in 30 s, each an fsync'd write, while apps got 502.
    Now: at most one refresh per floor (30 s by default), the token is served as it is
    meanwhile, and last_error names the server's odd lifetime."""
    async def main():
        bench = Bench(tmp_path, lifetime=lifetime)
        device = await bench.paired()
        answers = await _apps_asking_for(bench, device, 90)
        assert all(a["access_token"] and 0 <= a["expires_in"] <= lifetime for a in answers)  # never a 502
        assert len(bench.refreshes()) <= 3  # one per 30 s, not one per request or second
        last_error = shaped(device.status())["last_error"]
        assert f"lasts {lifetime} s (expires_in)" in last_error and "30 s refresh floor" in last_error
        assert device.state in (State.PAIRED, State.REFRESHING) and bench.fake.reuse_detections == 0
        assert device.refresh_floor == 30.0  # the default
        await bench.close(device)

    run(main())


def test_the_refresh_floor_can_be_set_down_to_one_second(tmp_path):
    async def main():
        bench = Bench(tmp_path, lifetime=0)
        bench.device_kw = {"refresh_floor": 1.0}
        device = await bench.paired()
        await _apps_asking_for(bench, device, 10)
        assert 5 <= len(bench.refreshes()) <= 11  # about one a second, never more
        gaps = [b.at - a.at for a, b in zip(bench.refreshes(), bench.refreshes()[1:])]
        assert min(gaps) >= 1.0
        assert "1 s refresh floor" in shaped(device.status())["last_error"]
        await bench.close(device)

    run(main())


@pytest.mark.parametrize("floor", [0.5, 0, -1, float("nan")])
def test_a_refresh_floor_under_one_second_is_refused(tmp_path, floor):
    bench = Bench(tmp_path)
    bench.device_kw = {"refresh_floor": floor}
    with pytest.raises(ValueError, match="refresh_floor must be at least 1 s"):
        bench.device()


def test_the_refresh_floor_is_read_from_the_config(tmp_path):
    from devicelink.config import ConfigError, parse

    base = {"provider": {"issuer": ISSUER, "client_id": CLIENT_ID}}
    assert parse(base, tmp_path / "config.toml").refresh.min_interval == 30.0
    cfg = parse({**base, "refresh": {"min_interval": 5}}, tmp_path / "config.toml")
    assert cfg.refresh.min_interval == 5.0
    device = Device(cfg, EncryptedFileStore(tmp_path, os.urandom(32)), OAuthHttp(None, ClientAuth(CLIENT_ID)))
    assert device.refresh_floor == 5.0
    with pytest.raises(ConfigError, match="min_interval"):
        parse({**base, "refresh": {"min_interval": 0.5}}, tmp_path / "config.toml")


@pytest.mark.parametrize("listed, warned", [(["client_secret_basic"], True), (["none", "client_secret_basic"], False),
                                            (None, False)])
def test_pairing_warns_when_the_revocation_endpoint_will_not_take_this_client(tmp_path, listed, warned, caplog):
    """Issue 10, item 10: glewlwyd will not let a public client revoke. When discovery says so
    (RFC 8414 revocation_endpoint_auth_methods_supported), the owner hears it at pairing,
    not at unpair. No list in the document says nothing (RFC 8414's default would be
    client_secret_basic, yet most servers that omit it take public clients)."""
    async def main():
        bench = Bench(tmp_path)
        bench.fake.revocation_auth_methods = listed
        with caplog.at_level("WARNING", "devicelink"):
            device = await bench.paired()
        warnings = shaped(device.status())["warnings"]
        said = [w for w in warnings if "revocation endpoint does not accept client_auth 'none'" in w]
        assert bool(said) is warned, warnings
        assert any("revocation endpoint" in r.getMessage() for r in caplog.records) is warned
        if warned:
            assert "client_secret_basic" in said[0] and "stays valid" in said[0]
        await bench.close(device)

    run(main())
