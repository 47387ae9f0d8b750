"""The registration as this device keeps it, without a server: ``registration.json`` under the
state-file rules, the access token sealed with the state key (and across a re-key), the
journal of attempts, and :func:`enrol` stepped by hand at each of its answers.

Needs only the standard library and ``cryptography`` (bench/bookworm runs it under Debian's).
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from devicelink.config import parse
from devicelink.errors import ConfigError, IdentityError, ProtocolViolation, RegistrationFailed
from devicelink.identity import filekey
from devicelink.identity import registration as r
from devicelink.oauth import messages as m
from devicelink.oauth.steps import Send
from devicelink.tokens import sealed
from devicelink.tokens.store import ensure_private_dir

ISSUER = "https://id.example"
ENDPOINT = "https://id.example/register"
KEY, OTHER_KEY = os.urandom(32), os.urandom(32)


def config(tmp_path, **registration):
    raw = {"provider": {"issuer": ISSUER, "client_auth": "private_key_jwt", "scope": "openid offline_access"},
           "storage": {"state_dir": str(tmp_path / "state")},
           "registration": {"endpoint": ENDPOINT, **registration}}
    return parse(raw, tmp_path / "config.toml")


@pytest.fixture
def state(tmp_path):
    ensure_private_dir(tmp_path / "state")
    return tmp_path / "state"


def enrolment(tmp_path, state, wall=1_800_000_000.0, **registration):
    signer = filekey.create(state / "identity.jwk")
    return r.Enrolment(config(tmp_path, **registration), signer, KEY, "SN-7", r.RegistrationFile(state),
                       wall_clock=lambda: wall)


def answer(status, body=b"", at=1.0):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return m.Response(status, raw, at, {"content-type": "application/json"})


def drive(flow, *replies):
    """Step ``flow`` with ``replies``; (result or exception, the requests sent)."""
    sent, reply, replies = [], None, iter(replies)
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value, sent
        except Exception as exc:  # noqa: BLE001 - returned for the test to judge
            return exc, sent
        assert isinstance(step, Send)
        sent.append(step.request)
        reply = next(replies)


REGISTERED = {"client_id": "dev-1", "registration_access_token": "rat-1",
              "registration_client_uri": f"{ENDPOINT}/dev-1", "software_id": "acme-tv", "client_secret": "x"}


# -- config -------------------------------------------------------------------------------------

def test_registration_needs_private_key_jwt_and_makes_client_id_optional(tmp_path):
    cfg = config(tmp_path, grant_types=["urn:ietf:params:oauth:grant-type:device_code", "client_credentials"])
    assert cfg.provider.client_id == "" and cfg.registration.grant_types[-1] == "client_credentials"
    with pytest.raises(ConfigError, match=r"\[registration\]: .* client_auth = 'private_key_jwt', not 'none'"):
        parse({"provider": {"issuer": ISSUER}, "registration": {}}, tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"\[provider\] client_id: missing"):
        parse({"provider": {"issuer": ISSUER}}, tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"\[registration\] grant_types: expected a list"):
        config(tmp_path, grant_types=["refresh_token"])  # no device code grant: the device could not pair
    with pytest.raises(ConfigError, match=r"\[registration\] endpoint: expected an https:// URL"):
        config(tmp_path, endpoint="http://id.example/register")
    with pytest.raises(ConfigError, match=r"\[registration\] statement_file: unknown key"):
        config(tmp_path, statement_file="x")


def test_device_level_tokens_add_the_client_credentials_grant_to_what_is_registered(tmp_path):
    raw = {"provider": {"issuer": ISSUER, "client_auth": "private_key_jwt"}, "registration": {},
           "device_token": {"scope": "telemetry.write"}}
    cfg = parse(raw, tmp_path / "c.toml")
    assert cfg.registration.grant_types == ("urn:ietf:params:oauth:grant-type:device_code", "refresh_token",
                                            "client_credentials")
    raw["registration"] = {"grant_types": ["urn:ietf:params:oauth:grant-type:device_code"]}  # said: kept as said
    assert parse(raw, tmp_path / "c.toml").registration.grant_types == ("urn:ietf:params:oauth:grant-type:device_code",)


# -- the sealed token --------------------------------------------------------------------------

def test_a_sealed_token_opens_only_with_its_key_and_label():
    box = sealed.seal(KEY, "rat-1", "registration:dev-1")
    assert "rat-1" not in box and sealed.unseal(KEY, box, "registration:dev-1") == "rat-1"
    assert sealed.unseal(OTHER_KEY, box, "registration:dev-1") is None
    assert sealed.unseal(KEY, box, "registration:dev-2") is None  # pasted into another client's record
    assert sealed.unseal(KEY, box[:-4] + "AAAA", "registration:dev-1") is None
    assert sealed.unseal(KEY, "not base64 !", "registration:dev-1") is None


def test_a_rekey_adds_a_seal_and_the_next_key_keeps_only_its_own(state):
    files = r.RegistrationFile(state)
    reg = r.Registration(ISSUER, "dev-1", ENDPOINT, "kid", "SN", 1.0, token_seals=[])
    reg.token_seals = [sealed.seal(KEY, "rat-1", reg.label)]
    files.save(reg)
    r.reseal(state, KEY, OTHER_KEY)
    both = files.load()
    assert len(both.token_seals) == 2 and both.access_token(KEY) == both.access_token(OTHER_KEY) == "rat-1"
    r.reseal(state, KEY, OTHER_KEY)  # again: nothing more
    assert len(files.load().token_seals) == 2
    r.settle_seals(state, os.urandom(32))  # a wrong key drops nothing
    assert len(files.load().token_seals) == 2
    r.settle_seals(state, OTHER_KEY)  # the switch happened: the old key's seal goes
    kept = files.load()
    assert len(kept.token_seals) == 1 and kept.access_token(OTHER_KEY) == "rat-1" and kept.access_token(KEY) is None


# -- the files ------------------------------------------------------------------------------------

def test_the_record_is_ours_0600_and_never_holds_the_token_in_clear(tmp_path, state):
    e = enrolment(tmp_path, state)
    result, sent = drive(r.enrol(e), answer(201, REGISTERED))
    reg, made = result
    assert made and reg.client_id == "dev-1" and reg.access_token(KEY) == "rat-1"
    raw = (state / r.FILE).read_text()
    assert "rat-1" not in raw and '"x"' not in raw  # the token sealed; the client_secret never kept
    assert (state / r.FILE).stat().st_mode & 0o777 == 0o600
    assert not (state / r.JOURNAL).exists()
    assert json.loads(raw)["metadata"]["software_id"] == "acme-tv"
    assert reg.kid == e.signer.kid and reg.serial == "SN-7" and reg.registered_at == 1_800_000_000.0


def test_what_is_sent(tmp_path, state):
    statement = tmp_path / "statement.jwt"
    statement.write_text("eyJhbGciOiJFUzI1NiJ9.eyJzb2Z0d2FyZV9pZCI6ImFjbWUtdHYiLCJpc3MiOiJhY21lIn0.c2ln\n")
    token = tmp_path / "iat"
    token.write_text("initial-secret\n")
    e = enrolment(tmp_path, state, software_statement_file=str(statement), initial_access_token_file=str(token),
                  client_name="Acme TV")
    _, sent = drive(r.enrol(e), answer(201, REGISTERED))
    body = sent[0].json_body
    assert sent[0].url == ENDPOINT and sent[0].bearer == "initial-secret" and not sent[0].authenticate
    assert body["software_statement"] == statement.read_text().strip() and body["software_id"] == "acme-tv"
    assert body["token_endpoint_auth_method"] == "private_key_jwt" and body["token_endpoint_auth_signing_alg"] == "ES256"
    assert body["jwks"]["keys"][0]["kid"] == e.signer.kid and "d" not in body["jwks"]["keys"][0]
    assert body["device_serial"] == "SN-7" and body["client_name"] == "Acme TV"
    assert body["grant_types"] == ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]
    assert body["redirect_uris"] == [] and body["response_types"] == [] and body["scope"] == "openid offline_access"


def test_a_statement_that_is_not_a_jwt_is_a_config_error_before_anything_is_sent(tmp_path, state):
    bad = tmp_path / "statement.jwt"
    bad.write_text("hello")
    result, sent = drive(r.enrol(enrolment(tmp_path, state, software_statement_file=str(bad))))
    assert isinstance(result, ConfigError) and "not a signed JWT" in str(result) and not sent
    assert not (state / r.JOURNAL).exists()


@pytest.mark.parametrize("content, problem", [(b"{", "not a registration record"),
                                              (b'{"version": 1, "issuer": "x"}', "missing")])
def test_a_damaged_record_is_never_replaced(state, content, problem):
    (state / r.FILE).write_bytes(content)
    os.chmod(state / r.FILE, 0o600)
    with pytest.raises(IdentityError, match=problem + ".*never replaced on its own"):
        r.RegistrationFile(state).load()


def test_a_planted_record_is_refused(state, tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    (state / r.FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(IdentityError, match="a symbolic link"):
        r.RegistrationFile(state).load()


# -- the journal, answer by answer ---------------------------------------------------------------

def test_a_registered_device_sends_nothing(tmp_path, state):
    e = enrolment(tmp_path, state)
    drive(r.enrol(e), answer(201, REGISTERED))
    (reg, made), sent = drive(r.enrol(e))
    assert not made and not sent and reg.client_id == "dev-1"


def test_a_refusal_or_a_request_that_never_left_registers_nothing(tmp_path, state):
    e = enrolment(tmp_path, state)
    for reply in (answer(400, {"error": "invalid_software_statement"}),
                  m.Failure("ConnectError: refused", 1.0, unsent=True)):
        result, sent = drive(r.enrol(e), reply)
        assert isinstance(result, RegistrationFailed) and len(sent) == 1
        assert not (state / r.JOURNAL).exists()  # struck out again: no client was made
    (reg, _), _ = drive(r.enrol(e), answer(201, REGISTERED))
    assert reg.earlier_attempts == []


@pytest.mark.parametrize("lost", [m.Failure("ReadTimeout: no answer", 1.0), answer(502),
                                  answer(201, b"<html>proxy</html>")])
def test_an_answer_lost_after_the_request_left_is_counted_as_a_possible_duplicate(tmp_path, state, lost, caplog):
    e = enrolment(tmp_path, state)
    result, _ = drive(r.enrol(e), lost)
    assert isinstance(result, (RegistrationFailed, ProtocolViolation))
    assert len(r.RegistrationFile(state).attempts()) == 1
    (reg, made), _ = drive(r.enrol(e), answer(201, REGISTERED))
    assert made and len(reg.earlier_attempts) == 1 and reg.earlier_attempts[0]["kid"] == e.signer.kid
    assert "may hold as many unused clients" in caplog.text and not (state / r.JOURNAL).exists()
    assert reg.summary()["earlier_attempts"] == 1


def test_a_registration_for_another_issuer_or_key_is_not_used(tmp_path, state):
    e = enrolment(tmp_path, state)
    drive(r.enrol(e), answer(201, REGISTERED))
    moved = r.Enrolment(parse({"provider": {"issuer": "https://other.example", "client_auth": "private_key_jwt"},
                               "registration": {}}, tmp_path / "c.toml"), e.signer, KEY, "SN-7", e.files)
    result, sent = drive(r.enrol(moved))
    assert isinstance(result, r.Mismatch) and "registered at https://id.example" in str(result) and not sent
    os.unlink(state / "identity.jwk")
    e2 = r.Enrolment(e.cfg, filekey.create(state / "identity.jwk"), KEY, "SN-7", e.files)
    result, _ = drive(r.enrol(e2))
    assert isinstance(result, r.Mismatch) and "devicelink provision --update" in str(result)


def test_a_deletion_is_marked_first_and_a_cut_resumes_it(tmp_path, state):
    e = enrolment(tmp_path, state)
    (reg, _), _ = drive(r.enrol(e), answer(201, REGISTERED))
    result, sent = drive(r.deregister(e, reg), m.Failure("ReadTimeout", 1.0))  # no answer: kept, marked
    assert isinstance(result, RegistrationFailed) and result.transient
    assert r.RegistrationFile(state).load().deleting and sent[0].method == "DELETE" and sent[0].bearer == "rat-1"
    (fresh, made), sent = drive(r.enrol(e), answer(401, {"error": "invalid_token"}),  # already gone
                                answer(201, {**REGISTERED, "client_id": "dev-2"}))
    assert [s.method for s in sent] == ["DELETE", "POST"] and made and fresh.client_id == "dev-2"


def test_a_deletion_the_server_refuses_for_good_forgets_the_client_here(tmp_path, state, caplog):
    e = enrolment(tmp_path, state)
    (reg, _), _ = drive(r.enrol(e), answer(201, REGISTERED))
    outcome, _ = drive(r.deregister(e, reg), answer(403, {"error": "access_denied"}))
    assert outcome == "refused" and not (state / r.FILE).exists() and "the server keeps it" in caplog.text


def test_the_token_is_sent_only_over_tls(tmp_path, state):
    e = enrolment(tmp_path, state)
    (reg, _), _ = drive(r.enrol(e), answer(201, {**REGISTERED, "registration_client_uri": "http://id.example/r"}))
    result, sent = drive(r.read_back(e, reg))
    assert isinstance(result, ProtocolViolation) and "not https" in str(result) and not sent


def test_an_update_keeps_a_rotated_token_at_once(tmp_path, state):
    e = enrolment(tmp_path, state)
    (reg, _), _ = drive(r.enrol(e), answer(201, REGISTERED))
    fresh, sent = drive(r.update(e, reg), answer(200, {**REGISTERED, "registration_access_token": "rat-2"}))
    assert sent[0].method == "PUT" and sent[0].json_body["client_id"] == "dev-1"
    assert r.RegistrationFile(state).load().access_token(KEY) == "rat-2"


def test_the_proof_is_signed_by_the_device_key(tmp_path, state):
    from devicelink.identity.registration import payload

    e = enrolment(tmp_path, state)
    (reg, _), _ = drive(r.enrol(e), answer(201, REGISTERED))
    claims = payload(r.proof(e.signer, reg, 1_800_000_000.0))
    assert claims == {"iss": "SN-7", "sub": "dev-1", "aud": ISSUER, "kid": e.signer.kid, "serial": "SN-7",
                      "iat": 1_800_000_000}


def test_statement_paths_are_relative_to_the_config(tmp_path):
    cfg = config(tmp_path, software_statement_file="statement.jwt")
    assert cfg.registration.software_statement_file == pathlib.Path(tmp_path / "statement.jwt")


def test_doctor_says_which_client_and_whether_its_key_is_the_one_registered(tmp_path, state):
    from devicelink.doctor.registration import check_registration

    e = enrolment(tmp_path, state)
    assert [f.level for f in check_registration(e.cfg)] == ["warn"]  # not registered yet
    drive(r.enrol(e), answer(201, {**REGISTERED, "jwks": {"keys": [e.signer.public_jwk()]}}))
    (ok,) = check_registration(e.cfg)
    assert ok.level == "ok" and "client_id dev-1" in ok.what and e.signer.kid in ok.what and "SN-7" in ok.what
    os.unlink(state / "identity.jwk")
    filekey.create(state / "identity.jwk")  # a new key the server does not have
    (replaced,) = check_registration(e.cfg)
    assert replaced.level == "fail" and "provision --update" in replaced.fix
    moved = parse({"provider": {"issuer": "https://other.example", "client_auth": "private_key_jwt"},
                   "storage": {"state_dir": str(state)}, "registration": {}}, tmp_path / "c.toml")
    (elsewhere,) = check_registration(moved)
    assert elsewhere.level == "fail" and "registered at https://id.example" in elsewhere.what


def test_doctor_says_a_factory_reset_owes_a_new_key(tmp_path, state):
    from dataclasses import replace

    from devicelink.doctor.registration import check_registration
    from devicelink.identity import renewal

    e = enrolment(tmp_path, state)
    e.cfg = replace(e.cfg, identity=replace(e.cfg.identity, on_factory_reset="new_key"))
    reg, _ = drive(r.enrol(e), answer(201, REGISTERED))[0]
    renewal.begin(state, e.signer.kid)
    e.files.save(replace(reg, deleting=True))
    (marked,) = check_registration(e.cfg)
    assert marked.level == "warn" and "unfinished" in marked.what and "with a new device key" in marked.fix
    e.files.forget()  # the old client deleted, the key not replaced yet
    (owed,) = check_registration(e.cfg)
    assert owed.level == "warn" and "a new device key" in owed.what and "registration are owed" in owed.what
