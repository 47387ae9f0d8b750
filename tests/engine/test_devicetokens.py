"""Device-level tokens (issue 11 item 4): the client credentials grant for apps whose policy allows it.

The engine end to end against the in-memory server (tests/support/fake_server.py) on one
FakeClock, as test_engine_fake.py does; and the pure rule of what an app may have
(``narrowing.device_key``) and the socket's reading of ``identity=``.
"""

from __future__ import annotations

import asyncio

import pytest

from devicelink.config import DeviceTokenConfig
from devicelink.engine import narrowing
from devicelink.engine.answers import TokenQuery
from devicelink.errors import Refused
from devicelink.ipc import routes
from devicelink.lifecycle import State
from devicelink.policy import ROOT, App
from tests.engine.test_engine_fake import Bench, refused, run
from tests.helpers import shaped
from tests.support.fake_server import CLIENT_ID

TELEMETRY = "https://telemetry.example.com"
API = "https://api.example.com"
SECRET = "s3cret-for-the-client"
DEVICE = TokenQuery(identity="device")
TELEMETRY_APP = App("telemetry", scope=frozenset(), resources=None, device_scope=frozenset({"telemetry.write"}))
PLAYER = App("player", scope=frozenset({"openid", "email"}), resources=None)


def bench(tmp_path, scope: str = "telemetry.write updates.read", resource: tuple[str, ...] = (),
          **server) -> Bench:
    b = Bench(tmp_path, auth="client_secret_basic", secret=SECRET, **server)
    b.config_kw = {"device_token": DeviceTokenConfig(scope, resource)}
    return b


def cc_requests(b: Bench) -> list:
    return b.fake.requests("client_credentials")


def device_query(**kw) -> TokenQuery:
    return TokenQuery(identity="device", **kw)


def test_device_tokens_are_served_whatever_the_state_of_the_grant(tmp_path):
    async def main():
        b = bench(tmp_path)
        device = b.device()
        assert device.state is State.UNPAIRED  # never paired, not even pairing
        asks = [(TELEMETRY_APP, DEVICE)] * 10 + [(ROOT, DEVICE)] * 5
        answers = [shaped(a) for a in await asyncio.gather(*(device.token(q, app) for app, q in asks))]
        requests = cc_requests(b)
        assert sorted(r.value("scope") for r in requests) == ["telemetry.write", "telemetry.write updates.read"]
        assert all(r.headers["authorization"].startswith("Basic ") for r in requests)  # the client's hook
        mine, roots = {a["access_token"] for a in answers[:10]}, {a["access_token"] for a in answers[10:]}
        assert len(mine) == len(roots) == 1 and mine != roots  # one request per key, shared by every asker
        assert set(answers[0]) == {"access_token", "token_type", "expires_in", "scope"}
        assert answers[0]["scope"] == "telemetry.write" and answers[0]["expires_in"] == 3600
        info = b.fake.access_token_info(mine.pop())
        assert info["active"] and info["sub"] is None and info["client_id"] == CLIENT_ID  # the device's, no user
        assert info["scope"] == "telemetry.write"

        await device.start()  # boots unpaired: pairing, a code on screen
        await b.code_shown()
        assert device.state is State.PAIRING
        assert shaped(await device.token(DEVICE, TELEMETRY_APP)) == answers[0]  # cached, nothing asked
        assert await refused(device.token(TokenQuery(), PLAYER)) == "pairing_in_progress"  # the user's: not yet
        code = b.fake.pending_user_codes()[0]
        b.fake.approve(code)
        await b.next_poll()
        await b.states.wait(State.PAIRED)

        b.fake.revoke(device.tokens.refresh_token)  # the owner removes the device in their account
        b.clock.advance(3000)
        await device.refresh()
        assert device.state is State.REAUTH_REQUIRED
        fresh = shaped(await device.token(device_query(scope="updates.read"), ROOT))  # a new key, asked now
        assert fresh["scope"] == "updates.read" and len(cc_requests(b)) == 3
        status = shaped(device.status())["device_token"]
        assert status == {"held": 3, "last_error": None}
        assert not any(r.value("refresh_token") or r.value("device_code") for r in cc_requests(b))

        await device.stop()
        for path in tmp_path.rglob("*"):  # kept in memory only
            if path.is_file():
                assert fresh["access_token"].encode() not in path.read_bytes()
        await b.close()

    run(main())


def test_a_token_is_renewed_ahead_when_asked_for_and_nobody_asking_costs_nothing(tmp_path):
    async def main():
        b = bench(tmp_path)
        device = b.device()
        first = shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"]
        b.clock.advance(2000)
        assert shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"] == first
        assert len(cc_requests(b)) == 1  # young enough: nothing asked

        b.clock.advance(1100)  # past 75-85 % of its hour: served at once, renewed behind it
        answer = shaped(device.token_now(DEVICE, TELEMETRY_APP))
        assert answer["access_token"] == first and answer["expires_in"] == 500
        await device.device_tokens.settled()
        assert len(cc_requests(b)) == 2
        second = shaped(await device.token(DEVICE, TELEMETRY_APP))
        assert second["access_token"] != first and second["expires_in"] == 3600

        b.clock.advance(1900)  # 1700 s left: not the half-lifetime an app asking min_ttl=3000 gets
        third = shaped(await device.token(device_query(min_ttl=3000), TELEMETRY_APP))
        assert third["access_token"] != second["access_token"] and len(cc_requests(b)) == 3

        b.clock.advance(10 * 3600)  # nobody asks: no request, no timer
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(cc_requests(b)) == 3 and b.clock.next_wake is None
        await b.close(device)

    run(main())


@pytest.mark.parametrize(("app", "query", "words"), [
    (PLAYER, DEVICE, "'player' may not have device-level tokens: its [[client]] entry has no device_scope"),
    (TELEMETRY_APP, device_query(scope="updates.read"), "scope 'updates.read' is not allowed for 'telemetry'"),
    (ROOT, device_query(scope="firmware.write"), "scope 'firmware.write' is not in [device_token] scope"),
    (ROOT, device_query(resource=API), f"resource {API!r} is not one [device_token] resource lists"),
    (App("media", scope=frozenset(), resources=frozenset({API}), device_scope=frozenset({"telemetry.write"})),
     DEVICE, "'media' may have tokens only for https://api.example.com: say which with resource="),
])
def test_what_the_policy_or_the_config_does_not_allow_is_refused_before_anything_is_sent(tmp_path, app, query, words):
    async def main():
        b = bench(tmp_path)
        device = b.device()
        with pytest.raises(Refused) as info:
            await device.token(query, app)
        assert info.value.code == "forbidden" and words in info.value.description
        assert b.fake.seen == []
        await b.close(device)

    run(main())


def test_without_a_device_token_section_device_tokens_are_forbidden(tmp_path):
    async def main():
        b = Bench(tmp_path, auth="client_secret_basic", secret=SECRET)
        device = b.device()
        with pytest.raises(Refused, match=r"not set up on this device \(\[device_token\] in the config\)"):
            await device.token(DEVICE, ROOT)
        assert b.fake.seen == [] and shaped(device.status())["device_token"] is None
        await b.close(device)

    run(main())


def test_a_resource_is_asked_for_on_its_own_and_an_app_held_to_it_gets_only_that(tmp_path):
    async def main():
        b = bench(tmp_path, resource=(TELEMETRY, API))
        device = b.device()
        held = App("uploader", scope=frozenset(), resources=frozenset({TELEMETRY}),
                   device_scope=frozenset({"telemetry.write"}))
        answer = shaped(await device.token(DEVICE, held))  # its one resource, without saying so
        (request,) = cc_requests(b)
        assert request.form["resource"] == [TELEMETRY] and request.value("scope") == "telemetry.write"
        assert b.fake.access_token_info(answer["access_token"])["aud"] == [TELEMETRY]
        api = shaped(await device.token(device_query(resource=API), ROOT))
        assert b.fake.access_token_info(api["access_token"])["aud"] == [API]
        assert await refused(device.token(device_query(resource=API), held)) == "forbidden"
        await b.close(device)

    run(main())


def test_a_refused_client_is_named_backs_off_and_never_shows_the_secret(tmp_path):
    async def main():
        b = bench(tmp_path)
        device = b.device(secret="wrong-secret-value")
        with pytest.raises(Refused) as info:
            await device.token(DEVICE, TELEMETRY_APP)
        said = info.value.description
        assert info.value.code == "upstream_unavailable"
        assert said.startswith("cannot get a device-level token: the authorization server refused this client "
                               "(HTTP 401 invalid_client)")
        assert "check [provider] client_id and the secret in client_secret_file" in said
        assert "wrong-secret-value" not in said and SECRET not in said
        assert shaped(device.status())["device_token"]["last_error"] == said
        assert shaped(device.status())["last_error"] is None  # the grant's own status is not this
        assert device.metrics.value("devicelink_client_credentials_requests_total", outcome="client") == 1

        again = await refused(device.token(DEVICE, TELEMETRY_APP), r"next try in \d+ s")  # the same, from memory
        assert again == "upstream_unavailable" and len(cc_requests(b)) == 1
        b.clock.advance(5)  # the first backoff is 2.5-5 s
        assert await refused(device.token(DEVICE, TELEMETRY_APP)) == "upstream_unavailable"
        assert len(cc_requests(b)) == 2
        await b.close(device)

    run(main())


def test_a_client_the_server_does_not_allow_the_grant_is_told_what_to_change(tmp_path):
    async def main():
        b = Bench(tmp_path)  # a public client (the config refuses one; the server must too)
        b.config_kw = {"device_token": DeviceTokenConfig("telemetry.write")}
        device = b.device()
        with pytest.raises(Refused) as info:
            await device.token(DEVICE, TELEMETRY_APP)
        assert info.value.code == "upstream_unavailable"
        assert info.value.description == (
            "cannot get a device-level token: the authorization server does not let this client use the client "
            "credentials grant (HTTP 400 unauthorized_client); the server must allow [provider] client_id the "
            "client_credentials grant")
        await b.close(device)

    run(main())


def test_a_scope_the_server_refuses_is_forbidden_and_not_asked_again_at_once(tmp_path):
    async def main():
        b = bench(tmp_path)
        b.fake.client_scopes = frozenset({"updates.read"})  # the server does not give this client telemetry.write
        device = b.device()
        with pytest.raises(Refused) as info:
            await device.token(DEVICE, TELEMETRY_APP)
        assert info.value.code == "forbidden"
        assert "refused scope 'telemetry.write' for this client: invalid_scope" in info.value.description
        assert await refused(device.token(DEVICE, TELEMETRY_APP)) == "forbidden"  # backs off: nothing sent
        assert len(cc_requests(b)) == 1
        await b.close(device)

    run(main())


def test_server_trouble_serves_the_cached_token_while_it_lasts_then_the_same_answer_until_the_retry(tmp_path):
    async def main():
        b = bench(tmp_path, lifetime=100)
        device = b.device()
        token = shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"]
        b.fake.fail_next(1, 503, retry_after=60)
        b.clock.advance(60)  # past the renewal point (50 s: at least 60 s or half the life before expiry)
        assert shaped(device.token_now(device_query(min_ttl=10), TELEMETRY_APP))["access_token"] == token
        await device.device_tokens.settled()
        assert cc_requests(b)[-1].status == 503
        assert "the authorization server answered HTTP 503" in shaped(device.status())["device_token"]["last_error"]

        b.clock.advance(35)  # 5 s left: served as it is, nothing asked (backing off until 120)
        assert shaped(await device.token(device_query(min_ttl=0), TELEMETRY_APP))["expires_in"] == 5
        b.clock.advance(6)  # expired, and the server asked for 60 s
        with pytest.raises(Refused, match=r"answered HTTP 503 \(next try in 19 s\)") as info:
            await device.token(DEVICE, TELEMETRY_APP)
        assert info.value.code == "upstream_unavailable" and len(cc_requests(b)) == 2
        b.clock.advance(20)
        assert shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"] != token
        assert shaped(device.status())["device_token"]["last_error"] is None
        await b.close(device)

    run(main())


def test_no_answer_is_a_502_at_once_with_the_reason(tmp_path):
    async def main():
        b = bench(tmp_path)
        b.fake.fail_next(1, 502, at="token")
        device = b.device()
        with pytest.raises(Refused) as info:
            await device.token(DEVICE, ROOT)
        assert info.value.code == "upstream_unavailable"
        assert info.value.description == "cannot get a device-level token: the authorization server answered HTTP 502"
        assert device.metrics.value("devicelink_client_credentials_requests_total", outcome="failed") == 1
        await b.close(device)

    run(main())


def test_a_bug_is_said_once_and_backed_off_not_wedged(tmp_path, caplog):
    async def main():
        b = bench(tmp_path)
        device = b.device()

        async def broken(flow, **kw):
            raise RuntimeError("a bug")

        device.http.run = broken
        with pytest.raises(Refused, match="cannot get a device-level token: unexpected RuntimeError"):
            await device.token(DEVICE, ROOT)
        assert "device-level token request failed unexpectedly" in caplog.text
        assert await refused(device.token(DEVICE, ROOT), "next try in") == "upstream_unavailable"
        await b.close(device)

    run(main())


def test_the_hourly_budget_bounds_new_keys_but_not_a_renewal_the_lifetime_calls_for(tmp_path):
    async def main():
        b = bench(tmp_path, lifetime=100)
        device = b.device()
        await device.token(DEVICE, TELEMETRY_APP)
        for _ in range(device.budget.limit):
            device.budget.spend(b.clock.now)
        with pytest.raises(Refused, match="the hourly request budget .* is spent"):
            await device.token(device_query(scope="updates.read"), ROOT)
        assert len(cc_requests(b)) == 1
        assert device.metrics.value("devicelink_client_credentials_requests_total", outcome="budget") == 1
        b.clock.advance(101)  # the first token expired: its renewal is within its lifetime's allowance
        assert shaped(await device.token(DEVICE, TELEMETRY_APP))["expires_in"] == 100
        assert len(cc_requests(b)) == 2
        await b.close(device)

    run(main())


def test_unpair_drops_device_tokens_without_revoking_them(tmp_path):
    async def main():
        b = bench(tmp_path)
        device = await b.paired()
        token = shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"]
        live = device.tokens.refresh_token
        assert shaped(await device.unpair())["revoked"] is True
        assert [r.value("token") for r in b.fake.requests("revocation")] == [live]  # the grant, only
        assert b.fake.access_token_info(token)["active"]
        assert shaped(device.status())["device_token"] == {"held": 0, "last_error": None}
        again = shaped(await device.token(DEVICE, TELEMETRY_APP))["access_token"]
        assert again != token and device.state is State.UNPAIRED
        await b.close(device)

    run(main())


def test_the_token_endpoint_is_discovered_once_when_nothing_names_it(tmp_path):
    async def main():
        b = bench(tmp_path)
        device = b.device()  # never paired: no endpoints known
        await device.token(DEVICE, TELEMETRY_APP)
        await device.token(DEVICE, ROOT)
        assert [s.kind for s in b.fake.seen] == ["discovery", "client_credentials", "client_credentials"]
        assert (tmp_path / "discovery.json").exists()  # kept for pairing too
        await b.close(device)

        b2 = bench(tmp_path / "other")
        (tmp_path / "other").mkdir()
        b2.fake.fail_next(2, 503, at="discovery")
        device = b2.device()
        with pytest.raises(Refused, match="cannot get a device-level token: no discovery document") as info:
            await device.token(DEVICE, ROOT)
        assert info.value.code == "upstream_unavailable" and len(b2.fake.seen) == 2  # one try each, no wait
        await b2.close(device)

    run(main())


# -- the pure rule ------------------------------------------------------------------------


SETTINGS = DeviceTokenConfig("telemetry.write updates.read", (TELEMETRY,))


@pytest.mark.parametrize(("app", "query", "key"), [
    (ROOT, DEVICE, ("telemetry.write updates.read", None)),
    (TELEMETRY_APP, DEVICE, ("telemetry.write", None)),
    (TELEMETRY_APP, device_query(scope="telemetry.write", resource=TELEMETRY), ("telemetry.write", TELEMETRY)),
    (App("wide", scope=None, resources=None, device_scope=frozenset({"telemetry.write", "x"})), DEVICE,
     ("telemetry.write", None)),
])
def test_device_key(app, query, key):
    assert narrowing.device_key(query, app, SETTINGS) == key


def test_an_app_whose_device_scope_shares_nothing_with_the_config_is_refused():
    app = App("odd", scope=None, resources=None, device_scope=frozenset({"x"}))
    with pytest.raises(Refused, match="the device_scope of 'odd' names nothing"):
        narrowing.device_key(DEVICE, app, SETTINGS)


def test_the_socket_reads_identity():
    assert routes.parse_token_query(b"identity=device&scope=a&min_ttl=5") == TokenQuery(5, "a", None, "device")
    assert routes.parse_token_query(b"identity=user") == TokenQuery()
    for bad in (b"identity=robot", b"identity=", b"identity=device&identity=device"):
        with pytest.raises(routes.ApiError) as info:
            routes.parse_token_query(bad)
        assert info.value.status == 400
