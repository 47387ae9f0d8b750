"""The device engine in-process against the real development server over loopback HTTP.

Only time is injected: the daemon and the server share a FakeClock, so RFC 8628
intervals and token lifetimes pass without waiting, and the test decides exactly
when each timer fires.
"""

from __future__ import annotations

import asyncio
import io
import logging
import json
import os
import random
import shutil
from pathlib import Path

import httpx
import pytest

from devicelink.config import Config, ProviderConfig, StorageConfig
from devicelink.engine import Device
from devicelink.errors import Refused
from devicelink.ipc import routes
from devicelink.ipc.routes import TokenQuery
from devicelink.lifecycle import State
from devicelink.oauth.http import ClientAuth, OAuthHttp
from devicelink.tokens.store import EncryptedFileStore
from tests.helpers import shaped, FakeClock, StateLog


def fail_with(status: int, body: dict):
    return lambda respond: (json.dumps(body), status, {"content-type": "application/json"})


class Rig:
    """A DevServer and a Device sharing one fake clock."""

    def __init__(self, state_dir: Path, lifetime: int = 3600, **server_kw) -> None:
        from devicelink_sim.authserver import DevServer

        self.clock = FakeClock()
        self.srv = DevServer(clock=self.clock, interval=5, access_token_lifetime=lifetime, **server_kw).start()
        self.state_dir = state_dir
        self.key = os.urandom(32)
        self.clock_synced = lambda: True  # the wall clock is trusted unless a test says otherwise

    def device(self, **provider) -> Device:
        provider = {"client_id": self.srv.client_id, **provider}
        provider = {"scope": "openid offline_access", **provider}
        cfg = Config(provider=ProviderConfig(issuer=self.srv.issuer, allow_insecure_http=True, **provider),
                     storage=StorageConfig(state_dir=self.state_dir))
        self.client = httpx.AsyncClient()
        http = OAuthHttp(self.client, ClientAuth(self.srv.client_id), clock=self.clock)
        device = Device(cfg, EncryptedFileStore(self.state_dir, self.key), http, clock=self.clock,
                        sleep=self.clock.sleep, rng=random.Random(7), clock_synced=self.clock_synced)
        self.states = StateLog(device)
        return device

    async def paired(self, **provider) -> Device:
        device = self.device(**provider)
        status = shaped(await device.pair())
        code = status["pairing"]["user_code"]
        self.srv.approve(code, subject="alice", name="Alice")
        self.clock.advance(5)  # RFC 8628 §3.5: the first poll waits one interval
        await self.states.wait(State.PAIRED)
        return device

    async def during_a_held_refresh(self, action):
        """Start the proactive refresh, hold its answer at the server, run ``action`` meanwhile,
        then let the answer go: the server has rotated the refresh token before the device knows."""
        import threading

        entered, release = threading.Event(), threading.Event()

        def held(respond):
            entered.set()
            release.wait(10)
            return respond()

        self.srv.around_token = held
        self.clock.advance(await self.clock.next_timer() - self.clock.now)
        assert await asyncio.to_thread(entered.wait, 10)
        task = asyncio.ensure_future(action)
        await asyncio.sleep(0)  # let the action begin while the answer is still held
        release.set()
        result = await task
        self.srv.around_token = lambda respond: respond()
        return result

    def refreshes(self) -> int:
        return self.srv.stats.token_requests.get("refresh_token", 0)

    async def close(self, device: Device) -> None:
        await device.stop()
        await self.client.aclose()
        self.srv.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_one_refresh_however_many_apps_ask(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        first = (shaped(await device.token(TokenQuery())))["access_token"]
        rig.clock.advance(1850)  # less than half the lifetime left, before the proactive refresh
        answers = [shaped(a) for a in await asyncio.gather(*(device.token(TokenQuery(min_ttl=3600)) for _ in range(50)))]
        assert rig.refreshes() == 1  # RFC 9700 §4.14.2: never two refreshes of one grant at once
        assert {a["access_token"] for a in answers} != {first} and len({a["access_token"] for a in answers}) == 1
        assert all(a["expires_in"] > 3500 for a in answers)
        assert rig.srv.stats.reuse_detections == 0
        await rig.close(device)

    run(main())


def test_proactive_refresh_before_expiry(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        assert 1000 + 50 <= await rig.clock.next_timer() <= 1000 + 5 + 50  # 75-85 %, capped at half
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.PAIRED)
        assert rig.refreshes() == 1 and shaped(device.status())["last_refresh"] is not None
        await rig.close(device)

    run(main())


def test_server_errors_keep_the_grant_and_serve_the_cached_token(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        cached = (shaped(await device.token(TokenQuery())))["access_token"]
        rig.srv.around_token = fail_with(503, {"error": "temporarily_unavailable"})
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.OFFLINE)
        assert shaped(device.status())["last_error"] and "503" in shaped(device.status())["last_error"]
        assert device.healthy()

        # apps keep getting the cached token, and asking does not make the daemon hammer the server
        for _ in range(20):
            assert (shaped(await device.token(TokenQuery(min_ttl=90))))["access_token"] == cached
        assert rig.refreshes() == 1
        retry = await rig.clock.next_timer()
        assert retry - rig.clock.now >= 2.5  # backoff, not a loop

        rig.srv.around_token = lambda respond: respond()  # the server heals
        rig.clock.advance(retry - rig.clock.now)
        await rig.states.wait(State.PAIRED)
        assert rig.refreshes() == 2 and shaped(device.status())["last_error"] is None
        assert (shaped(await device.token(TokenQuery())))["access_token"] != cached
        await rig.close(device)

    run(main())


def test_expired_while_offline_is_upstream_unavailable(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        rig.srv.around_token = fail_with(500, {})
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.OFFLINE)
        device.listeners.clear()  # retries keep failing in the background; we only watch the answers
        rig.clock.now += 200  # past expiry, without waking the retry timer
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert routes.STATUS_BY_CODE[info.value.code] == 502 and info.value.code == "upstream_unavailable"
        assert not device.healthy() and device.state is not State.REAUTH_REQUIRED
        await rig.close(device)

    run(main())


def test_invalid_grant_ends_the_grant(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        assert (tmp_path / "state.bin").exists()
        rig.srv.around_token = fail_with(400, {"error": "invalid_grant"})
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.REAUTH_REQUIRED)
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "reauth_required" and routes.STATUS_BY_CODE[info.value.code] == 503
        assert not (tmp_path / "state.bin").exists()
        assert "invalid_grant" in shaped(device.status())["last_error"]
        assert rig.refreshes() == 1  # and no further attempts: B5, do not start over by itself
        await rig.close(device)

    run(main())


def test_unwritable_state_keeps_serving_from_memory(tmp_path):
    async def main():
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        rig = Rig(state_dir, lifetime=100)
        device = await rig.paired()
        shutil.rmtree(state_dir)  # the SD card went read-only, or someone deleted the directory
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.PAIRED)
        assert "cannot write" in shaped(device.status())["last_error"]
        assert (shaped(await device.token(TokenQuery())))["expires_in"] > 90  # the rotated grant is in use
        await rig.close(device)

    run(main())


def test_restart_uses_the_stored_grant(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        token = (shaped(await device.token(TokenQuery())))["access_token"]
        await device.stop()
        again = rig.device()
        await again.start()
        assert again.state is State.PAIRED and shaped(again.status())["account"]["name"] == "Alice"
        assert (shaped(await again.token(TokenQuery())))["access_token"] == token
        assert rig.srv.stats.device_authorizations == 1
        await rig.close(again)

    run(main())


def test_token_scope_and_resource_checks(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery(scope="openid admin")))
        assert info.value.code == "forbidden" and "not part of the grant" in info.value.description
        with pytest.raises(Refused) as info:  # not in [provider] resource, and root's entry has no list
            shaped(await device.token(TokenQuery(resource="https://api.example")))
        assert info.value.code == "forbidden"
        assert rig.refreshes() == 0  # refused before anything was asked upstream
        await rig.close(device)

    run(main())


def test_status_never_carries_a_secret(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        text = json.dumps(shaped(device.status()))
        for secret in rig.srv.issued_secrets():
            assert secret not in text
        assert set(shaped(device.status())) >= {"state", "pairing", "account", "access_token_expires_in", "last_refresh",
                                        "last_error", "clock_synced", "version"}
        await rig.close(device)

    run(main())


def test_stop_lets_a_refresh_in_flight_finish(tmp_path):
    """SIGTERM during a refresh: the server may already have rotated the refresh token,
    so stopping must wait for the answer and save it, or the next start replays the old one."""
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        await rig.during_a_held_refresh(device.stop())

        again = rig.device()
        await again.start()
        await again.refresh()
        assert again.state is State.PAIRED
        assert rig.srv.stats.reuse_detections == 0 and rig.refreshes() == 2
        await rig.close(again)

    run(main())


def test_unpair_when_revocation_fails_stops_serving_and_retries_until_revoked(tmp_path):
    """RFC 7009 §2.2.1: a 503 means the token may still be valid. The device stops serving it at
    once, keeps the revocation owed (encrypted, across restarts) and retries until a 200."""
    import http.server
    import threading

    answers = [503, 503, 200]
    seen = []
    second = threading.Event()

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(answers.pop(0) if len(answers) > 1 else answers[0])
            if len(seen) == 2:
                second.set()
            self.send_header("retry-after", "30")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    revoker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=revoker.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{revoker.server_port}/revoke"

    async def main():
        rig = Rig(tmp_path)
        # a configured endpoint wins over the discovered one, even when it is the only one configured
        device = await rig.paired(revocation_endpoint=endpoint)
        answer = shaped(await device.unpair())
        assert answer["revoked"] is False and "503" in answer["revocation_error"]
        assert device.state is State.UNPAIRED and shaped(device.status())["pending_revocations"] == 1
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery()))
        assert info.value.code == "not_paired"
        await device.stop()

        again = rig.device(revocation_endpoint=endpoint)  # a power cut later: still owed
        await again.start()
        assert shaped(again.status())["pending_revocations"] == 1 and again.state is State.PAIRING
        assert await asyncio.to_thread(second.wait, 10)  # retried at start: 503 again
        retry = await rig.clock.timer_beyond(29)  # its Retry-After: 30 s
        rig.clock.advance(retry - rig.clock.now)
        await asyncio.wait_for(again.revocations_settled(), 10)
        assert shaped(again.status())["pending_revocations"] == 0 and len(seen) == 3
        assert all(b"token=" in body and b"token_type_hint=refresh_token" in body for body in seen)
        assert len(set(seen)) == 1  # the same refresh token every time
        await rig.close(again)

    try:
        run(main())
    finally:
        revoker.shutdown()


def test_unpair_during_a_refresh_does_not_bring_the_grant_back(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired()
        answer = shaped(await rig.during_a_held_refresh(device.unpair()))
        assert answer["revoked"] is True and device.state is State.UNPAIRED
        assert not (tmp_path / "state.bin").exists()  # no late save restored it
        again = rig.device()
        await again.start()
        assert again.state is State.PAIRING  # the previous owner's grant is gone for good
        assert all(rig.srv.revoked(rt) for rt in rig.srv.issued_refresh_tokens())
        await again.stop()
        await rig.close(device)

    run(main())


def _strip(*fields):
    """Wrap the token endpoint so the device-code answer lacks ``fields``."""
    def around(respond):
        resp = respond()
        data = json.loads(resp.get_data())
        if "error" not in data and "id_token" in data:  # the device grant's answer
            for name in fields:
                data.pop(name, None)
            resp.set_data(json.dumps(data))
        return resp
    return around


def test_no_refresh_token_and_no_expiry_keeps_serving(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        rig.srv.around_token = _strip("refresh_token", "expires_in")  # a GitHub OAuth app
        device = await rig.paired()
        token = (shaped(await device.token(TokenQuery())))["access_token"]
        rig.clock.advance(86400)
        assert (shaped(await device.token(TokenQuery())))["access_token"] == token
        assert device.state is State.PAIRED and rig.refreshes() == 0
        await rig.close(device)

    run(main())


def test_no_refresh_token_is_served_until_it_expires(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        rig.srv.around_token = _strip("refresh_token")
        device = await rig.paired()
        rig.clock.advance(90)
        assert any("no refresh token" in w for w in shaped(device.status())["warnings"])
        assert (shaped(await device.token(TokenQuery())))["expires_in"] <= 10  # not dropped early
        assert device.state is State.PAIRED
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)
        await rig.states.wait(State.REAUTH_REQUIRED)
        assert rig.refreshes() == 0 and "no refresh token" in shaped(device.status())["last_error"]
        await rig.close(device)

    run(main())


def test_no_refresh_token_is_said_at_pairing_on_screen_and_in_status(tmp_path, caplog):
    """Issue 10, item 12: oidc-provider issues no refresh token without offline_access. The
    owner learns it when the device pairs, not an hour later when the grant silently ends."""
    from devicelink.display.terminal import TerminalDisplay

    class Tty(io.StringIO):  # the terminal is the hardware edge
        def isatty(self) -> bool:
            return True

    async def main():
        rig = Rig(tmp_path, lifetime=3600)
        rig.srv.around_token = _strip("refresh_token")
        device = rig.device()
        screen = Tty()
        device.screen.display = TerminalDisplay(screen)
        with caplog.at_level(logging.WARNING, "devicelink"):
            status = shaped(await device.pair())
            rig.srv.approve(status["pairing"]["user_code"], subject="alice", name="Alice")
            rig.clock.advance(5)
            await rig.states.wait(State.PAIRED)
        status = shaped(device.status())
        (warning,) = status["warnings"]
        assert "no refresh token" in warning and "(in 3600 s)" in warning and "offline_access" in warning
        assert "No refresh token" in status["message"]
        assert "No refresh token" in screen.getvalue().rsplit("Paired", 1)[-1]  # drawn on the paired screen
        assert any("no refresh token" in r.getMessage() for r in caplog.records)  # logged at pairing
        await rig.close(device)
        restarted = rig.device()  # and again after a restart
        await restarted.start()
        assert "No refresh token" in shaped(restarted.status())["message"]
        assert shaped(restarted.status())["warnings"]
        await rig.close(restarted)

    run(main())


def test_a_refresh_token_means_no_warning(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        status = shaped(device.status())
        assert status["warnings"] == [] and status["message"] is None and status["last_error_kind"] is None
        await rig.close(device)

    run(main())


def test_pair_answers_as_soon_as_pairing_fails(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = rig.device(scope="no-such-scope")
        status = shaped(await asyncio.wait_for(device.pair(), 10))  # not the 30 s wait for a code
        assert status["state"] == "unpaired" and "invalid_scope" in status["last_error"]
        await rig.close(device)

    run(main())


def test_a_slow_panel_never_delays_token_requests(tmp_path):
    import threading

    class StuckPanel:
        draws_slowly = True

        def __init__(self):
            self.entered, self.release, self.frames = threading.Event(), threading.Event(), []

        def show(self, screen, now):
            self.entered.set()
            self.release.wait(10)
            self.frames.append(screen)

        def close(self):
            pass

    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        panel = device.screen.display = StuckPanel()
        device.show_reset_countdown(5)
        assert await asyncio.to_thread(panel.entered.wait, 10)  # the panel is busy drawing ...
        device.show_reset_countdown(4)
        device.show_reset_countdown(3)
        answer = shaped(await asyncio.wait_for(device.token(TokenQuery()), 5))  # ... apps are still served
        assert answer["access_token"]
        panel.release.set()
        await rig.close(device)  # stop() waits for the last frame
        assert [s.reset_in for s in panel.frames] == [5, 3]  # frames coalesce: the newest screen wins

    run(main())


def test_stopping_ends_a_task_that_lost_its_cancellation():
    """Python 3.11's wait_for can swallow a cancel() that arrives as its inner task finishes;
    a pairing task that lost it went on polling and the daemon never stopped (seen once in
    six SIGTERMs during pairing). The engine cancels again until the task has ended."""
    from devicelink.engine.revocations import cancel

    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # the cancellation is lost, as in 3.11's wait_for race
        await asyncio.Event().wait()  # and the task goes on as if nothing happened

    async def main():
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)  # let it start waiting
        await asyncio.wait_for(cancel(task), 10)
        assert task.cancelled()

    asyncio.run(main())
