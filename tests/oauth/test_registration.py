"""Dynamic client registration (RFC 7591) and its management (RFC 7592), stepped by hand:
what goes on the wire, and what each answer means. No network, no event loop, no clock."""

from __future__ import annotations

import json
import random

import pytest

from devicelink.errors import ProtocolViolation, RegistrationFailed
from devicelink.oauth import messages as m
from devicelink.oauth import registration as rfc7591
from devicelink.oauth.http import ClientAuth, encode, outgoing, secrets_sent
from devicelink.oauth.steps import Backoff, Send

ENDPOINT = "https://id.example/register"
URI = "https://id.example/register/c-1"
METADATA = {"token_endpoint_auth_method": "private_key_jwt", "grant_types": ["refresh_token"],
            "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}]}, "software_statement": "a.b.c"}
REGISTERED = {"client_id": "c-1", "client_id_issued_at": 1700000000, "registration_access_token": "rat-1",
              "registration_client_uri": URI, "token_endpoint_auth_method": "private_key_jwt",
              "client_secret": "never-kept", "jwks": METADATA["jwks"]}


def answer(status: int, body=b"", at: float = 5.0, headers: dict | None = None) -> m.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return m.Response(status, raw, at, {"content-type": "application/json", **(headers or {})})


def run(flow, *replies: m.Reply):
    """Answer each request in turn; (the flow's result, the requests it sent)."""
    sent = []
    reply = None
    replies = iter(replies)
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value, sent
        assert isinstance(step, Send)
        sent.append(step)
        reply = next(replies)


def test_a_registration_is_json_with_the_initial_access_token_and_no_client_authentication():
    request = rfc7591.register_request(ENDPOINT, METADATA, "iat-secret")
    out = outgoing(request, ClientAuth("ignored", "none"), 0.0)
    body = encode(out)
    assert (out.method, out.url) == ("POST", ENDPOINT)
    assert json.loads(body) == METADATA and out.headers["content-type"] == "application/json"
    assert out.headers["authorization"] == "Bearer iat-secret"
    assert out.form == []  # no client_id, no assertion: registration takes none (RFC 7591 §3)
    assert "iat-secret" in secrets_sent(out)  # blanked wherever the server's words are quoted
    assert "iat-secret" not in repr(request) and "software_statement" not in repr(request)


def test_without_an_initial_access_token_no_authorization_header_is_sent():
    out = outgoing(rfc7591.register_request(ENDPOINT, METADATA, None), ClientAuth("x"), 0.0)
    assert "authorization" not in out.headers


def test_management_requests_carry_the_registration_access_token():
    read = outgoing(rfc7591.read_request(URI, "rat"), ClientAuth("x"), 0.0)
    delete = outgoing(rfc7591.delete_request(URI, "rat"), ClientAuth("x"), 0.0)
    update = rfc7591.update_request(URI, "rat", "c-1", {**METADATA, "client_id_issued_at": 1, "client_secret": "s",
                                                        "registration_client_uri": URI})
    for out in (read, delete):
        assert out.headers["authorization"] == "Bearer rat" and encode(out) is None
    assert (read.method, delete.method, update.method) == ("GET", "DELETE", "PUT")
    # RFC 7592 §2.2: the whole metadata with client_id, and none of the fields the server sets
    assert update.json_body == {**METADATA, "client_id": "c-1"}


def test_a_201_is_the_client_with_its_secrets_set_apart():
    registered, sent = run(rfc7591.register(ENDPOINT, METADATA, None, None), answer(201, REGISTERED))
    assert len(sent) == 1 and registered.client_id == "c-1"
    assert registered.access_token == "rat-1" and registered.client_uri == URI
    assert "client_secret" not in registered.metadata and "registration_access_token" not in registered.metadata
    assert "rat-1" not in repr(registered)


@pytest.mark.parametrize("body, why", [
    ({"client_id_issued_at": 1}, "client_id"),
    ({"client_id": ""}, "client_id"),
    ({"client_id": "a\nb"}, "client_id"),
    ({"client_id": "c", "registration_client_uri": "javascript:x"}, "registration_client_uri"),
    ({"client_id": "c", "registration_access_token": 7}, "registration_access_token"),
    (b"<html>", "without a JSON object"),
])
def test_an_unusable_answer_is_a_protocol_violation(body, why):
    with pytest.raises(ProtocolViolation, match=why):
        run(rfc7591.register(ENDPOINT, METADATA, None, None), answer(201, body))


@pytest.mark.parametrize("error, hint", [
    ("invalid_software_statement", "software_statement_file"),
    ("unapproved_software_statement", "approve the fleet's key"),
    ("invalid_client_metadata", "client metadata"),
])
def test_refusals_say_the_servers_words_and_what_to_do(error, hint):
    with pytest.raises(RegistrationFailed) as refused:
        run(rfc7591.register(ENDPOINT, METADATA, None, None),
            answer(400, {"error": error, "error_description": "signed by an unknown key"}))
    text = str(refused.value)
    assert error in text and "signed by an unknown key" in text and hint in text and "\n" not in text
    assert refused.value.oauth_error == error and not refused.value.transient


def test_no_answer_and_5xx_are_retried_with_a_backoff_and_transient_without():
    backoff = Backoff(random.Random(1))
    registered, sent = run(rfc7591.register(ENDPOINT, METADATA, None, backoff),
                           m.Failure("ConnectError: refused", 1.0, unsent=True), answer(503, at=20.0),
                           answer(429, headers={"retry-after": "60"}, at=30.0), answer(201, REGISTERED))
    assert registered.client_id == "c-1" and len(sent) == 4
    assert sent[3].not_before >= 30.0 + 60  # Retry-After honoured
    with pytest.raises(RegistrationFailed) as failed:
        run(rfc7591.register(ENDPOINT, METADATA, None, None), answer(503))
    assert failed.value.transient


@pytest.mark.parametrize("status", [401, 404, 410])
def test_a_client_the_server_does_not_know_is_gone(status):
    for flow in (rfc7591.read(URI, "rat", None), rfc7591.delete(URI, "rat", None),
                 rfc7591.update(URI, "rat", "c-1", METADATA, None)):
        assert run(flow, answer(status, {"error": "invalid_token"}))[0] == rfc7591.GONE


def test_delete_read_and_update():
    assert run(rfc7591.delete(URI, "rat", None), answer(204))[0] == "deleted"
    read = run(rfc7591.read(URI, "rat", None), answer(200, {"client_id": "c-1", "jwks": METADATA["jwks"]}))[0]
    assert (read.client_id, read.access_token, read.client_uri) == ("c-1", "rat", URI)  # what was sent is kept
    rotated = run(rfc7591.update(URI, "rat", "c-1", METADATA, None),
                  answer(200, {**REGISTERED, "registration_access_token": "rat-2"}))[0]
    assert rotated.access_token == "rat-2"  # oidc-provider rotates it on every update
    with pytest.raises(RegistrationFailed, match="deleting the registration failed: the server answered HTTP 403"):
        run(rfc7591.delete(URI, "rat", None), answer(403, {"error": "access_denied"}))
