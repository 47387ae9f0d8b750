"""The engine with ``[provider] dpop = true`` (RFC 9449), against the fake authorization server
with DPoP (tests/support/fake_server.py): pairing and refresh through the server's nonces, tokens
bound to the device key, a Bearer answer refused; and ``POST /v1/dpop-proof`` through the socket
API's handler: which app gets a proof for which token, and what input is refused.

The engine is the real one over a MockTransport; the key is real (``cryptography``); time is a
FakeClock shared with the server. No simulator: these run on Bookworm's packages too.
"""

from __future__ import annotations

import json

import jwt
import pytest

from devicelink.identity import filekey
from devicelink.ipc.api import SocketApi
from devicelink.ipc.routes import ApiError, Peer, Request, TokenQuery
from devicelink.lifecycle import State
from devicelink.oauth.auth.dpop import DPoP, ath
from devicelink.policy import App, Policy
from tests.engine.test_engine_fake import MFA, Bench, confirm_step_up, run
from tests.helpers import shaped

PLAYER = App("player", scope=frozenset({"openid", "email"}), resources=None)
GUEST = App("guest", scope=frozenset({"profile"}), resources=None)
AGENT = App("agent", scope=frozenset({"openid", "email"}), resources=None, dpop_proofs_without_token=True)
NOBODY = App("status-only", scope=frozenset(), resources=None)
UIDS = {PLAYER: 50001, GUEST: 50002, AGENT: 50003, NOBODY: 50004}
API_URL = "https://api.example.com/v1/things"


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return filekey.create(tmp_path_factory.mktemp("identity") / "identity.jwk")


def dpop_bench(tmp_path, signer, **server) -> Bench:
    bench = Bench(tmp_path, dpop=True, **server)
    bench.dpop = DPoP(signer, wall_clock=bench.wall)
    return bench


def test_pairing_and_refresh_go_through_the_nonces_and_bind_the_tokens_to_the_device_key(tmp_path, signer):
    async def main():
        bench = dpop_bench(tmp_path, signer, dpop_nonce=True, rotate=False, lifetime=100)
        device, code = await bench.showing_a_code(dpop=True)
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        polls = bench.fake.requests("device_token")
        # the first poll's proof had no nonce: asked for it, sent at once with it, and that was all
        assert [p.error for p in polls] == ["use_dpop_nonce", None] and polls[0].at == polls[1].at
        assert polls[1].proof["nonce"] == "nonce-1" and polls[0].proof is None  # refused before it counted
        assert device.metrics.value("devicelink_slow_downs_total") == 0 and device.last_error is None

        answer = shaped(await device.token(TokenQuery()))
        assert answer["token_type"] == "DPoP"  # apps know to send Authorization: DPoP
        assert bench.fake.access_token_info(answer["access_token"])["cnf"] == {"jkt": signer.kid}
        assert shaped(await device.token(TokenQuery(), PLAYER))["token_type"] == "DPoP"  # a narrowed one too

        rt = device.tokens.refresh_token
        bench.fake.new_nonce()  # the nonce the device holds goes stale
        await bench.next_timer()  # the proactive refresh
        await bench.states.wait(State.PAIRED)
        refreshes = bench.refreshes()
        assert [r.error for r in refreshes] == [None, "use_dpop_nonce", None]  # the narrowed one, then the grant's
        assert refreshes[-1].proof["nonce"] == "nonce-2" and refreshes[-1].proof["jkt"] == signer.kid
        # RFC 9700 §4.14.2: a server need not rotate a sender-constrained refresh token; the old one stays
        assert device.tokens.refresh_token == rt == bench.on_disk()["tokens"]["refresh_token"]
        assert device.last_error is None and device.refresher.backing_off(bench.clock.now) is False
        await bench.close(device)

    run(main())


def test_a_bearer_answer_to_a_dpop_pairing_is_refused_and_nothing_is_kept(tmp_path, signer):
    async def main():
        bench = dpop_bench(tmp_path, signer)
        bench.fake.dpop = False  # a server that ignores the proof: its tokens are not bound to anything
        device, code = await bench.showing_a_code(dpop=True)
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.UNPAIRED)
        status = shaped(device.status())
        assert "token_type 'Bearer', not DPoP" in status["last_error"] and "\n" not in status["last_error"]
        assert bench.on_disk() is None and device.tokens is None
        await bench.close(device)

    run(main())


# -- POST /v1/dpop-proof -------------------------------------------------------------------


class Socket:
    """The socket API's handler over one device, with the apps above at their uids."""

    def __init__(self, device, uids: dict[App, int] = UIDS) -> None:
        self.uids = uids
        self.api = SocketApi(device, Policy(by_uid={uid: app for app, uid in uids.items()}))

    async def ask(self, handler: str, app: App | None, body: dict | bytes | None = None, query: bytes = b""):
        uid = self.uids[app] if app is not None else 0  # None: root
        raw = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        answer = self.api.handle(Request(handler, query, raw, Peer(1, uid, uid)))
        if not hasattr(answer, "status"):
            answer = await answer
        return json.loads(answer.body)

    async def token(self, app: App | None) -> dict:
        return await self.ask("token", app)

    async def proof(self, app: App | None, **body) -> str:
        return (await self.ask("dpop_proof", app, {"htm": "GET", "htu": API_URL, **body}))["proof"]

    async def refused(self, app: App | None, body: dict | bytes) -> ApiError:
        with pytest.raises(ApiError) as info:
            await self.ask("dpop_proof", app, body)
        assert "\n" not in info.value.description
        return info.value


def claims_of(proof: str, signer) -> dict:
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt" and header["jwk"] == signer.public_jwk()
    return jwt.decode(proof, jwt.PyJWK(header["jwk"]).key, algorithms=["ES256"], options={"verify_iat": False})


def test_an_app_gets_proofs_for_the_tokens_it_was_handed_and_no_other(tmp_path, signer):
    async def main():
        bench = dpop_bench(tmp_path, signer)
        device = await bench.paired(dpop=True)
        socket = Socket(device)
        token = await socket.token(PLAYER)
        assert token["token_type"] == "DPoP"
        claims = claims_of(await socket.proof(PLAYER, access_token=token["access_token"], nonce="rs-nonce",
                                              htu=API_URL + "?page=2#top"), signer)
        assert claims["ath"] == ath(token["access_token"]) and claims["nonce"] == "rs-nonce"
        assert claims["htm"] == "GET" and claims["htu"] == API_URL  # §4.2: no query, no fragment
        assert claims["iat"] == int(bench.wall())  # the injected wall clock

        # another app's token, even one it could read somewhere, gets no proof from this one
        guest_token = (await socket.token(GUEST))["access_token"]
        assert guest_token != token["access_token"]
        refused = await socket.refused(GUEST, {"htm": "GET", "htu": API_URL, "access_token": token["access_token"]})
        assert refused.code == "forbidden" and "not one devicelink handed to 'guest'" in refused.description
        refused = await socket.refused(PLAYER, {"htm": "GET", "htu": API_URL, "access_token": "made-up"})
        assert refused.code == "forbidden"
        # the grant's own token is root's; the same narrowed token handed to two apps serves both
        assert claims_of(await socket.proof(None, access_token=(await socket.token(None))["access_token"]), signer)
        assert (await socket.token(AGENT))["access_token"] == token["access_token"]
        assert claims_of(await socket.proof(AGENT, access_token=token["access_token"]), signer)["ath"]

        # without a token: only for an app whose entry says so (and root)
        refused = await socket.refused(PLAYER, {"htm": "POST", "htu": "https://id.other.example/token"})
        assert refused.code == "forbidden" and "dpop_proofs_without_token = true" in refused.description
        assert "ath" not in claims_of(await socket.proof(AGENT, htm="POST"), signer)
        assert "ath" not in claims_of(await socket.proof(None), signer)
        refused = await socket.refused(NOBODY, {"htm": "GET", "htu": API_URL, "access_token": token["access_token"]})
        assert refused.code == "forbidden"

        await device.unpair()  # the tokens it handed out are gone with the grant
        refused = await socket.refused(PLAYER, {"htm": "GET", "htu": API_URL, "access_token": token["access_token"]})
        assert refused.code == "forbidden"
        await bench.close(device)

    run(main())


def test_a_stepped_up_token_is_bound_too_and_only_its_app_gets_proofs_for_it(tmp_path, signer):
    async def main():
        bench = dpop_bench(tmp_path, signer)
        device = await bench.paired(dpop=True)
        socket = Socket(device)
        pending = await socket.ask("step_up", PLAYER, {"acr_values": MFA})
        await confirm_step_up(bench, device, pending["user_code"])
        stronger = await socket.ask("step_up", PLAYER, {"acr_values": MFA})
        assert stronger["token_type"] == "DPoP" and stronger["acr"] == MFA
        assert bench.fake.access_token_info(stronger["access_token"])["cnf"] == {"jkt": signer.kid}
        claims = claims_of(await socket.proof(PLAYER, access_token=stronger["access_token"]), signer)
        assert claims["ath"] == ath(stronger["access_token"])
        refused = await socket.refused(AGENT, {"htm": "GET", "htu": API_URL, "access_token": stronger["access_token"]})
        assert refused.code == "forbidden"  # the stronger token is PLAYER's alone
        await bench.close(device)

    run(main())


@pytest.mark.parametrize("body, why", [
    ({"htu": API_URL}, "htm must be"),
    ({"htm": "GET /x", "htu": API_URL}, "htm must be"),
    ({"htm": "", "htu": API_URL}, "htm must be"),
    ({"htm": "GET"}, "htu must be"),
    ({"htm": "GET", "htu": "/v1/things"}, "htu must be"),
    ({"htm": "GET", "htu": "ftp://api.example.com/x"}, "htu must be"),
    ({"htm": "GET", "htu": "http://api.example.com/x"}, "http:// only to a loopback host"),
    ({"htm": "GET", "htu": "https://user@api.example.com/x"}, "no user name"),
    ({"htm": "GET", "htu": "https://api.example.com/a b"}, "htu must be"),
    ({"htm": "GET", "htu": "https://api.example.com/\u00e9"}, "htu must be"),
    ({"htm": "GET", "htu": "https://[::1/x"}, "htu must be"),
    ({"htm": "GET", "htu": API_URL, "access_token": 42}, "access_token must be"),
    ({"htm": "GET", "htu": API_URL, "access_token": "a b"}, "access_token must be"),
    ({"htm": "GET", "htu": API_URL, "nonce": 'say "hi"'}, "nonce must be"),
    ({"htm": "GET", "htu": API_URL, "nonce": ""}, "nonce must be"),
    (b"not json", "JSON object"),
    (b"[1, 2]", "JSON object"),
])
def test_bad_input_is_refused_in_one_line(tmp_path, signer, body, why):
    async def main():
        bench = dpop_bench(tmp_path, signer)
        device = await bench.paired(dpop=True)
        refused = await Socket(device).refused(None, body)
        assert refused.code == "invalid_request" and refused.status == 400 and why in refused.description
        await bench.close(device)

    run(main())


def test_http_to_loopback_only_with_allow_insecure_http(tmp_path, signer):
    async def main():
        bench = dpop_bench(tmp_path, signer)
        device = await bench.paired(dpop=True, allow_insecure_http=True)
        socket = Socket(device)
        assert claims_of(await socket.proof(None, htu="http://127.0.0.1:8080/me"), signer)["htu"] == \
            "http://127.0.0.1:8080/me"
        assert (await socket.refused(None, {"htm": "GET", "htu": "http://example.com/me"})).code == "invalid_request"
        await bench.close(device)

    run(main())


def test_a_daemon_without_dpop_says_its_tokens_need_no_proof(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        socket = Socket(device)
        token = await socket.token(PLAYER)
        assert token["token_type"] == "Bearer"
        refused = await socket.refused(PLAYER, {"htm": "GET", "htu": API_URL, "access_token": token["access_token"]})
        assert refused.code == "invalid_request" and "dpop = false" in refused.description
        await bench.close(device)

    run(main())


def test_a_device_level_token_is_bound_too_and_its_app_gets_proofs_for_it(tmp_path, signer):
    from devicelink.config import DeviceTokenConfig

    telemetry = App("telemetry", scope=frozenset(), resources=None, device_scope=frozenset({"telemetry.write"}))

    async def main():
        bench = Bench(tmp_path, auth="client_secret_basic", secret="s3cret-for-the-client", dpop=True)
        bench.dpop = DPoP(signer, wall_clock=bench.wall)
        bench.config_kw = {"device_token": DeviceTokenConfig("telemetry.write")}
        device = bench.device(dpop=True)  # never paired: device-level tokens need no grant
        socket = Socket(device, {**UIDS, telemetry: 50005})
        token = await socket.ask("token", telemetry, query=b"identity=device")
        (request,) = bench.fake.requests("client_credentials")
        assert request.proof["jkt"] == signer.kid and request.headers["authorization"].startswith("Basic ")
        assert token["token_type"] == "DPoP"
        assert bench.fake.access_token_info(token["access_token"])["cnf"] == {"jkt": signer.kid}
        claims = claims_of(await socket.proof(telemetry, access_token=token["access_token"]), signer)
        assert claims["ath"] == ath(token["access_token"])
        await bench.close(device)

    run(main())


def test_signed_requests_wait_for_network_time_and_say_so(tmp_path, signer):
    """Issue 11 item 6: a Pi boots with its clock behind; a proof (or client assertion) dated
    then would be refused. Nothing signed goes out before NTP; status and screen say why;
    an app asking meanwhile is answered at once, and the refresh goes when the clock is set."""
    from devicelink.engine.networktime import POLL
    from devicelink.errors import Refused

    async def main():
        bench = dpop_bench(tmp_path, signer)
        synced = [False]
        device = bench.device(dpop=True)
        device.clock_synced = lambda: synced[0]
        await device.start()
        await bench.clock.timer_beyond(1.5)  # the device authorization waits, looking at the clock every POLL s
        bench.clock.advance(60)
        await bench.clock.timer_beyond(1.5)
        assert bench.fake.requests("device_authorization") == [] and device.pairing is None
        assert any("waiting for network time" in w for w in shaped(device.status())["warnings"])
        synced[0] = True  # NTP
        bench.clock.advance(POLL)
        code = await bench.code_shown()
        assert not any("network time" in w for w in shaped(device.status())["warnings"])
        bench.fake.approve(code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        await device.stop()

        synced[0] = False  # the next boot, before NTP: the stored token's age is unknown
        again = bench.device(dpop=True)
        again.clock_synced = lambda: synced[0]
        await again.start()
        refreshes = len(bench.refreshes())
        with pytest.raises(Refused, match="waiting for network time") as info:
            await again.token(TokenQuery())
        assert info.value.code == "upstream_unavailable" and len(bench.refreshes()) == refreshes
        synced[0] = True
        bench.clock.advance(POLL)
        await bench.states.wait(State.PAIRED)  # refreshed (or the stored expiry believed) once the clock is set
        assert shaped(await again.token(TokenQuery()))["token_type"] == "DPoP"
        await bench.close(again)

    run(main())
