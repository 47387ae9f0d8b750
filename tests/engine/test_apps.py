"""Apps on the device, in-process against the real development server: narrowed tokens
(RFC 6749 §6 scope, RFC 8707 resource), the socket API's policy decisions, events and metrics.

Only time is injected (the Rig of test_device.py: one FakeClock for device and server).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import shaped
from devicelink.events import Hub
from devicelink.ipc import routes
from devicelink.ipc.api import SocketApi
from devicelink.errors import Refused
from devicelink.ipc.routes import ApiError, Peer, Request, TokenQuery
from devicelink.lifecycle import State
from devicelink.policy import App, Policy
from tests.engine.test_device import Rig, run

FULL = "openid profile email offline_access"
PLAYER = App("player", scope=frozenset({"openid", "email"}), resources=None)


def test_an_app_gets_a_token_with_exactly_its_scopes(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        main_token = (shaped(await device.token(TokenQuery())))["access_token"]
        answer = shaped(await device.token(TokenQuery(), PLAYER))
        assert answer["scope"] == "email openid" and answer["access_token"] != main_token
        info = rig.srv.access_token_info(answer["access_token"])
        assert set(info["scope"].split()) == {"openid", "email"}  # what the server issued, not what we say
        assert set(rig.srv.access_token_info(main_token)["scope"].split()) == set(FULL.split())
        # cached per (scope, resource): asking again costs nothing upstream
        assert (shaped(await device.token(TokenQuery(), PLAYER)))["access_token"] == answer["access_token"]
        assert rig.refreshes() == 1
        # an app asking for a subset of what it may have gets that subset
        only_email = shaped(await device.token(TokenQuery(scope="email"), PLAYER))
        assert rig.srv.access_token_info(only_email["access_token"])["scope"] == "email"
        await rig.close(device)

    run(main())


def test_never_more_than_the_policy_allows(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        for query in (TokenQuery(scope="openid profile"), TokenQuery(scope="offline_access")):
            with pytest.raises(Refused) as info:
                shaped(await device.token(query, PLAYER))
            assert info.value.code == "forbidden" and "player" in info.value.description
        nothing = App("status-only", scope=frozenset(), resources=None)
        with pytest.raises(Refused, match="no scope of this grant"):
            shaped(await device.token(TokenQuery(), nothing))
        with pytest.raises(Refused, match="not part of the grant"):
            shaped(await device.token(TokenQuery(resource="https://api.example.com"), PLAYER))
        assert rig.refreshes() == 0  # all refused before anything was asked upstream
        await rig.close(device)

    run(main())


def test_one_upstream_request_per_key_however_many_apps_ask(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        other = App("other", scope=frozenset({"openid", "email", "profile"}), resources=None)
        answers = [shaped(a) for a in await asyncio.gather(
            *(device.token(TokenQuery(scope="email openid"), app) for app in [PLAYER, other] * 25),
            *(device.token(TokenQuery(scope="profile"), other) for _ in range(25)),
            *(device.token(TokenQuery()) for _ in range(10)),
        )]
        assert rig.refreshes() == 2  # one per key: "email openid" and "profile"
        assert len({a["access_token"] for a in answers[:50]}) == 1
        assert len({a["access_token"] for a in answers[50:75]}) == 1
        assert rig.srv.stats.reuse_detections == 0
        await rig.close(device)

    run(main())


def test_narrowed_refreshes_under_rotation_keep_the_grant(tmp_path):
    """Every narrowed refresh rotates the refresh token at the dev server: the new one must
    become the grant's, on disk, or the next refresh (or the next boot) replays a dead one."""
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired(scope=FULL)
        before = device.tokens.refresh_token
        for i in range(3):  # each key a new narrowed refresh
            shaped(await device.token(TokenQuery(scope=["email", "profile", "openid"][i]), App(
                "all", scope=frozenset(FULL.split()), resources=None)))
        assert device.tokens.refresh_token != before
        assert rig.refreshes() == 3
        await device.stop()

        again = rig.device(scope=FULL)  # a restart: the grant comes from disk
        await again.start()
        assert again.tokens.refresh_token == device.tokens.refresh_token
        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)  # the grant's own refresh
        await rig.states.wait(State.PAIRED)
        assert (shaped(await again.token(TokenQuery(min_ttl=60))))["expires_in"] > 60
        assert rig.srv.stats.reuse_detections == 0 and again.state is State.PAIRED
        await rig.close(again)

    run(main())


def test_a_narrowed_token_is_renewed_for_min_ttl(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = await rig.paired(scope=FULL)
        first = shaped(await device.token(TokenQuery(), PLAYER))
        rig.clock.now += 60  # 40 s left: fine for min_ttl 30, not for the default 60 past half-life
        assert (shaped(await device.token(TokenQuery(min_ttl=30), PLAYER)))["access_token"] == first["access_token"]
        renewed = shaped(await device.token(TokenQuery(min_ttl=60), PLAYER))
        assert renewed["access_token"] != first["access_token"] and renewed["expires_in"] > 90
        assert rig.refreshes() == 2
        await rig.close(device)

    run(main())


def test_a_server_that_ignores_the_narrower_scope_is_not_trusted(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)

        def widen(respond):
            response = respond()
            body = json.loads(response.get_data())
            body["scope"] = FULL  # what Google does: the refresh ignores the scope parameter
            response.set_data(json.dumps(body))
            return response

        rig.srv.around_token = widen
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery(), PLAYER))
        assert info.value.code == "upstream_unavailable" and "ignored the narrower scope" in info.value.description
        assert device.state is State.PAIRED  # the grant itself is fine
        await rig.close(device)

    run(main())


def test_resources_outside_the_grant_are_never_sent(tmp_path):
    """oidc-provider spends the refresh token on an invalid_target answer; under rotation that
    costs the grant. So only resources the device authorization named are ever asked for."""
    async def main():
        rig = Rig(tmp_path)
        api = "https://api.example.com"
        device = await rig.paired(scope=FULL, resource=(api,))
        other = "https://media.example.com"  # the server knows it, the grant doesn't
        app = App("api", scope=frozenset({"openid"}), resources=frozenset({api, other}))
        with pytest.raises(Refused, match="not part of the grant"):
            shaped(await device.token(TokenQuery(resource=other), app))
        narrow = App("narrow", scope=frozenset({"openid"}), resources=frozenset())
        with pytest.raises(Refused, match="not allowed for 'narrow'"):
            shaped(await device.token(TokenQuery(resource=api), narrow))
        assert rig.refreshes() == 0
        await rig.close(device)

    run(main())


def test_a_refused_narrowed_refresh_is_forbidden_and_keeps_the_grant(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        rig.srv.around_token = lambda respond: (json.dumps({"error": "invalid_scope"}), 400,
                                                {"content-type": "application/json"})
        with pytest.raises(Refused) as info:
            shaped(await device.token(TokenQuery(), PLAYER))
        assert info.value.code == "forbidden" and "invalid_scope" in info.value.description
        assert device.state is State.PAIRED and device.tokens is not None
        await rig.close(device)

    run(main())


def test_resource_indicator_gives_an_audience_restricted_token(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        api = "https://api.example.com"
        device = await rig.paired(scope=FULL, resource=(api,))
        app = App("api", scope=frozenset({"openid", "email"}), resources=None)  # [provider] resource applies
        answer = shaped(await device.token(TokenQuery(resource=api), app))
        info = rig.srv.access_token_info(answer["access_token"])
        assert api in _audiences(info) and set(info["scope"].split()) == {"openid", "email"}
        await rig.close(device)

    run(main())


def _audiences(info: dict) -> list[str]:
    aud = info.get("aud") or info.get("resource") or []
    return [aud] if isinstance(aud, str) else list(aud)


# -- the socket API: who may ask ------------------------------------------------


def request(handler: str, uid: int, query: bytes = b"", gid: int | None = None) -> Request:
    return Request(handler, query, b"", Peer(pid=4321, uid=uid, gid=uid if gid is None else gid))


def test_the_api_decides_from_peer_credentials(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        policy = Policy(by_uid={1001: PLAYER, 1002: App("setup", frozenset(), None, admin=True)})
        api = SocketApi(device, policy)

        assert api.handle(request("health", 9999)).status == 200  # anyone may ask whether we're healthy
        for handler in ("token", "status", "events", "metrics", "pair", "unpair"):
            with pytest.raises(ApiError) as info:
                api.handle(request(handler, 9999))
            assert info.value.code == "forbidden" and "uid 9999" in info.value.description

        answer = await _resolve(api.handle(request("token", 1001)))
        assert json.loads(answer.body)["scope"] == "email openid"
        with pytest.raises(ApiError, match="needs admin = true"):
            api.handle(request("unpair", 1001))
        with pytest.raises(ApiError, match="no scope of this grant"):
            await _resolve(api.handle(request("token", 1002)))

        api.reload(Policy())  # SIGHUP with the app's drop-in removed
        with pytest.raises(ApiError, match="uid 1001"):
            api.handle(request("token", 1001))

        text = api.handle(request("metrics", 0)).body.decode()
        assert 'devicelink_token_requests_total{app="player",status="200"} 1' in text
        assert 'devicelink_token_requests_total{app="setup",status="403"} 1' in text
        assert 'devicelink_token_requests_total{app="unlisted",status="403"} 2' in text
        assert "devicelink_pairings_total 1" in text and 'devicelink_state{state="paired"} 1' in text
        assert 'devicelink_refreshes_total{kind="narrowed",outcome="ok"} 1' in text
        assert "devicelink_token_valid 1" in text
        for token in (device.tokens.access_token, device.tokens.refresh_token):
            assert token not in text

        unpaired = await _resolve(api.handle(request("unpair", 0)))  # root is always admin
        assert unpaired.status == 202 and device.state is State.UNPAIRED
        await rig.close(device)

    run(main())


async def _resolve(result):
    return await result if asyncio.iscoroutine(result) else result


# -- events ---------------------------------------------------------------------


def test_events_tell_an_app_of_pairing_and_rotation_without_tokens(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=100)
        device = rig.device(scope=FULL)
        api = SocketApi(device, Policy(by_uid={1001: PLAYER}), keepalive=3600)
        await device.start()  # unpaired: pairing starts by itself
        stream = api.handle(request("events", 1001))
        assert isinstance(stream, routes.Stream) and (b"content-type", b"text/event-stream") in stream.headers
        chunks = stream.chunks
        assert await anext(chunks) == b"retry: 2000\n\n"
        first = _parse(await anext(chunks))
        assert first[0] == "state" and first[1]["state"] in ("unpaired", "pairing")

        events = []
        while not any(name == "pairing" for name, _ in events):
            events.append(_parse(await anext(chunks)))
        code = next(data for name, data in events if name == "pairing")
        assert set(code) == {"user_code", "verification_uri", "verification_uri_complete", "expires_in"}

        rig.srv.approve(code["user_code"], subject="alice", name="Alice")
        rig.clock.advance(5)
        while (event := _parse(await anext(chunks))) != ("state", event[1]) or event[1]["state"] != "paired":
            pass
        assert event[1]["account"] == {"sub": "alice", "name": "Alice"}

        rig.clock.advance(await rig.clock.next_timer() - rig.clock.now)  # the proactive refresh
        while (event := _parse(await anext(chunks)))[0] != "token_rotated":
            pass
        assert set(event[1]) == {"expires_in", "scope"} and event[1]["expires_in"] > 90

        assert len(device.events) == 1
        await chunks.aclose()  # the client went away: the subscription is released
        assert len(device.events) == 0
        await rig.close(device)

    run(main())


def _parse(chunk: bytes) -> tuple[str, dict]:
    fields = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n"))
    return fields["event"], json.loads(fields["data"])


def test_a_subscriber_that_falls_behind_is_dropped_not_buffered():
    async def main():
        hub = Hub(limit=3)
        slow, fast = hub.subscribe(), hub.subscribe()
        for i in range(3):
            hub.publish("state", {"i": i})
            assert (await fast.next(1))[2] == {"i": i}
        hub.publish("state", {"i": 3})
        assert slow.overflowed and len(hub) == 1
        assert await slow.next(0.01) is None
        assert (await fast.next(1))[2] == {"i": 3}

    asyncio.run(main())


# -- step-up (RFC 9470) -----------------------------------------------------------

MFA = "urn:devicelink:acr:mfa"


async def confirm(rig: Rig, device, pending: dict, subject: str, name: str | None = None) -> None:
    """The owner confirms a step-up's code on the phone; the device's next poll sees it."""
    rig.srv.approve(pending["user_code"], subject=subject, name=name)
    rig.clock.advance(5)
    await device.step_ups_settled()


def test_step_up_gives_the_stronger_token_to_that_app_only(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        standing = device.tokens
        status, pending = shaped(await device.step_up(PLAYER, MFA, 300))
        assert status == 202 and pending["status"] == "pending" and pending["user_code"]
        assert device.state is State.PAIRED  # everyone else keeps being served meanwhile
        assert (shaped(await device.token(TokenQuery())))["access_token"] == standing.access_token
        assert (shaped(await device.step_up(PLAYER, MFA, 300)))[1]["user_code"] == pending["user_code"]  # same code

        await confirm(rig, device, pending, subject="alice", name="Alice")  # the stronger sign-in
        status, answer = shaped(await device.step_up(PLAYER, MFA, 300))
        assert status == 200 and answer["acr"] == MFA and answer["auth_time"]
        info = rig.srv.access_token_info(answer["access_token"])
        assert info["acr"] == MFA and set(info["scope"].split()) == {"openid", "email"}
        assert answer["access_token"] != standing.access_token
        assert device.tokens.refresh_token == standing.refresh_token  # the standing grant is untouched
        other = App("other", scope=frozenset({"openid"}), resources=None)
        status, other_pending = shaped(await device.step_up(other, MFA, 300))  # another app: its own confirmation
        assert status == 202 and other_pending["user_code"] != pending["user_code"]
        await device.revocations_settled()  # the step-up's own refresh token was given back
        assert shaped(device.status())["pending_revocations"] == 0
        await rig.close(device)

    run(main())


def test_a_server_that_ignores_step_up_is_named_plainly(tmp_path):
    async def main():
        rig = Rig(tmp_path, honour_step_up=False)
        device = await rig.paired(scope=FULL)
        status, pending = shaped(await device.step_up(PLAYER, MFA, None))
        assert status == 202
        await confirm(rig, device, pending, subject="alice")
        with pytest.raises(Refused) as info:
            shaped(await device.step_up(PLAYER, MFA, None))
        assert info.value.code == "step_up_unsupported" and routes.STATUS_BY_CODE[info.value.code] == 502
        assert "ignored acr_values" in info.value.description
        assert device.state is State.PAIRED
        await rig.close(device)

    run(main())


def test_a_declined_step_up_is_forbidden_and_the_next_ask_starts_afresh(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        _, pending = shaped(await device.step_up(PLAYER, MFA, None))
        rig.srv.deny(pending["user_code"])
        rig.clock.advance(5)
        await device.step_ups_settled()
        with pytest.raises(Refused, match="declined"):
            shaped(await device.step_up(PLAYER, MFA, None))
        status, again = shaped(await device.step_up(PLAYER, MFA, None))
        assert status == 202 and again["user_code"] != pending["user_code"]
        await rig.close(device)

    run(main())


@pytest.mark.parametrize(("body", "message"), [
    (b"[]", "JSON object"),
    (b"{", "JSON object"),
    (b"{}", "needs acr_values, max_age or both"),
    (b'{"acr_values": 5}', "acr_values"),
    (b'{"acr_values": "a\\"b"}', "acr_values"),
    (b'{"max_age": -1}', "max_age"),
    (b'{"max_age": true}', "max_age"),
    (b'{"max_age": 10, "min_ttl": "x"}', "min_ttl"),
])
def test_step_up_bodies_are_checked(body, message):
    from devicelink.ipc.api import parse_step_up

    with pytest.raises(ApiError, match=message) as info:
        parse_step_up(body)
    assert info.value.code == "invalid_request"
    assert parse_step_up(b'{"acr_values": ["a", "b"], "max_age": 0}') == ("a b", 0, 60)


# -- races and limits found in review -----------------------------------------------


def test_unpair_waits_for_a_narrowed_refresh_and_the_grant_stays_gone(tmp_path):
    """A narrowed refresh at the server while unpair starts: unpair waits for it (it may have
    rotated the refresh token), revokes the live token, and nothing brings the grant back."""
    import threading

    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        entered, release = threading.Event(), threading.Event()

        def held(respond):
            response = respond()
            entered.set()
            release.wait(10)
            return response

        rig.srv.around_token = held
        token = asyncio.ensure_future(device.token(TokenQuery(), PLAYER))
        assert await asyncio.to_thread(entered.wait, 10)  # the narrowed refresh has rotated at the server
        rig.srv.around_token = lambda respond: respond()
        unpair = asyncio.ensure_future(device.unpair())
        await asyncio.sleep(0)
        with pytest.raises(Refused, match="being unpaired"):
            shaped(await device.token(TokenQuery(), PLAYER))  # nothing new starts meanwhile
        release.set()
        await token  # served before the unpair: it came back before unpair took its turn
        answer = shaped(await unpair)
        assert answer["revoked"] and device.state is State.UNPAIRED and device.tokens is None
        assert all(rig.srv.revoked(rt) for rt in rig.srv.issued_refresh_tokens()[-1:])  # the live one
        assert (device.store.load() or {}).get("tokens") is None
        await device.stop()
        again = rig.device(scope=FULL)
        await again.start()
        assert again.state is not State.PAIRED and again.tokens is None
        await rig.close(again)

    run(main())


def test_a_revocation_save_never_lands_after_a_rotated_refresh_token(tmp_path):
    import threading
    import time

    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired()
        in_save = threading.Event()
        real_save = device.store.save

        def slow_save(record):
            in_save.set()
            time.sleep(0.2)  # a slow SD card, in the writer thread
            real_save(record)

        device.store.save = slow_save
        rig.clock.advance(1850)
        refresh = asyncio.ensure_future(device.token(TokenQuery(min_ttl=3600)))
        assert await asyncio.to_thread(in_save.wait, 10)  # the refresh is writing the rotated token
        device.revocations.owe("an-old-step-up-token", "refresh_token")
        await device.revocations.try_all()  # what the background revocation retry does
        await refresh
        assert device.store.load()["tokens"]["refresh_token"] == device.tokens.refresh_token
        await rig.close(device)

    run(main())


def test_an_app_held_to_a_resource_never_gets_the_grants_token(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        api, media = "https://api.example.com", "https://media.example.com"
        device = await rig.paired(scope=FULL, resource=(api, media))
        held = App("media", scope=frozenset({"openid"}), resources=frozenset({media}))
        answer = shaped(await device.token(TokenQuery(), held))  # no resource named: its only one
        assert rig.srv.access_token_info(answer["access_token"])["aud"] in (media, [media])
        both = App("both", scope=frozenset({"openid"}), resources=frozenset({api, media}))
        with pytest.raises(Refused, match="say which with resource="):
            shaped(await device.token(TokenQuery(), both))
        await rig.close(device)

    run(main())


def test_narrowed_refreshes_cannot_starve_the_grants_own_refresh(tmp_path):
    import itertools

    from devicelink.budget import RequestBudget

    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        device.budget = RequestBudget(limit=6)
        greedy = App("greedy", scope=frozenset(FULL.split()), resources=None)
        refused = 0
        for combo in itertools.chain(*(itertools.combinations(FULL.split(), k) for k in (1, 2))):
            try:
                shaped(await device.token(TokenQuery(scope=" ".join(combo)), greedy))
            except Refused as err:
                assert "budget" in err.description
                refused += 1
        assert refused > 0
        rig.clock.advance(1850)  # the grant's refresh is wanted: its lifetime allowance is still there
        assert (shaped(await device.token(TokenQuery(min_ttl=3000))))["expires_in"] > 3000
        await rig.close(device)

    run(main())


def test_step_up_for_an_app_without_openid_is_narrowed_to_its_scopes(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        mailer = App("mailer", scope=frozenset({"email"}), resources=None)
        _, pending = shaped(await device.step_up(mailer, MFA, None))
        await confirm(rig, device, pending, subject="alice")
        status, answer = shaped(await device.step_up(mailer, MFA, None))
        assert status == 200 and answer["scope"] == "email"
        info = rig.srv.access_token_info(answer["access_token"])
        assert info["scope"] == "email" and info["acr"] == MFA
        nothing = App("status-only", scope=frozenset(), resources=None)
        with pytest.raises(Refused, match="no scope of this grant"):
            shaped(await device.step_up(nothing, MFA, None))
        await rig.close(device)

    run(main())


def test_step_up_by_another_account_is_refused(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)  # paired as alice
        _, pending = shaped(await device.step_up(PLAYER, MFA, None))
        await confirm(rig, device, pending, subject="bob", name="Bob")
        with pytest.raises(Refused, match=r"another account \(Bob\)"):
            shaped(await device.step_up(PLAYER, MFA, None))
        await rig.close(device)

    run(main())


def test_step_ups_end_with_the_grant_and_their_grants_are_revoked(tmp_path):
    async def main():
        rig = Rig(tmp_path, lifetime=300)
        device = await rig.paired(scope=FULL)
        _, pending = shaped(await device.step_up(PLAYER, MFA, None))
        await confirm(rig, device, pending, subject="alice")
        status, answer = shaped(await device.step_up(PLAYER, MFA, None, min_ttl=600))  # min_ttl > lifetime: no loop
        assert status == 200
        step_up_rt = rig.srv.issued_refresh_tokens()[-1]
        assert not rig.srv.revoked(step_up_rt)  # kept while its access token is served (RFC 7009 §2.1)
        with pytest.raises(Refused, match="too many step-ups"):
            for acr in ("a", "b"):
                shaped(await device.step_up(PLAYER, acr, None))
        rig.srv.around_token = lambda respond: (json.dumps({"error": "invalid_grant"}), 400,
                                                {"content-type": "application/json"})
        rig.clock.now += 200  # no timers fired: the next token request refreshes, and is refused
        with pytest.raises(Refused, match="pair"):
            shaped(await device.token(TokenQuery(min_ttl=200)))
        assert device.state is State.REAUTH_REQUIRED
        assert device.step_ups.sessions == {}  # another owner may pair next: nothing of alice's is served
        await device.revocations_settled()
        assert rig.srv.revoked(step_up_rt)
        await rig.close(device)

    run(main())


def test_a_reload_ends_the_event_streams_of_apps_it_no_longer_lists(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        api = SocketApi(device, Policy(by_uid={1001: PLAYER, 1002: App("other", None, None)}),
                        keepalive=3600)
        gone, kept = (api.handle(request("events", uid)).chunks for uid in (1001, 1002))
        for chunks in (gone, kept):
            assert await anext(chunks) == b"retry: 2000\n\n"
            assert _parse(await anext(chunks))[1]["state"] == "paired"
        api.reload(Policy(by_uid={1002: App("other", None, None)}))  # player's drop-in was removed
        with pytest.raises(StopAsyncIteration):
            await anext(gone)
        assert len(device.events) == 1
        device.events.publish("state", {"state": "x"})
        assert _parse(await anext(kept))[1] == {"state": "x"}
        await kept.aclose()
        assert len(device.events) == 0
        await rig.close(device)

    run(main())


def test_narrowed_refreshes_back_off_while_the_server_fails(tmp_path):
    async def main():
        rig = Rig(tmp_path)
        device = await rig.paired(scope=FULL)
        rig.srv.around_token = lambda respond: (json.dumps({"error": "temporarily_unavailable"}), 503,
                                                {"content-type": "application/json"})
        for _ in range(20):  # an app asking every so often while the server is down
            with pytest.raises(Refused) as info:
                shaped(await device.token(TokenQuery(), PLAYER))
            assert info.value.code == "upstream_unavailable"
        assert rig.refreshes() == 1  # one try, then the backoff: not one per request
        rig.clock.now += 5
        with pytest.raises(Refused):
            shaped(await device.token(TokenQuery(), PLAYER))
        assert rig.refreshes() == 2  # the next try, after 5 s; the one after that waits 10 s
        rig.srv.around_token = lambda respond: respond()
        rig.clock.now += 10
        assert (shaped(await device.token(TokenQuery(), PLAYER)))["scope"] == "email openid"
        assert device.state is State.PAIRED
        await rig.close(device)

    run(main())
