"""What a device keeps of the server's metadata, and for how long (oauth/metadata.py). Pure."""

from __future__ import annotations

import json

import pytest

from devicelink.errors import ProtocolViolation
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth import metadata as md

ISSUER = "https://id.example"
DOCUMENT = {"issuer": ISSUER, "device_authorization_endpoint": f"{ISSUER}/device", "token_endpoint": f"{ISSUER}/token",
            "revocation_endpoint": f"{ISSUER}/revoke", "jwks_uri": f"{ISSUER}/jwks",
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"]}
HOUR, DAY = 3600.0, 86400.0


def answer(body=DOCUMENT, **headers) -> m.Response:
    return m.Response(200, json.dumps(body).encode(), 5.0,
                      {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}})


@pytest.mark.parametrize(("cache_control", "max_age"), [
    (None, DAY),
    ("public, max-age=7200", 7200),
    ("Max-Age=7200, must-revalidate", 7200),  # RFC 9111 §5.2: directives are case-insensitive
    ('max-age="7200"', 7200),
    ("max-age=15, stale-while-revalidate=15", HOUR),  # never more often than hourly
    ("max-age=0", HOUR),
    ("no-store", HOUR),
    ("max-age=7200, no-cache", HOUR),
    ("max-age=31536000", DAY),  # never longer than a day
    ("max-age=-5", DAY), ("max-age=1e3", DAY), ("max-age=", DAY), ("private", DAY),  # nonsense: ignored
])
def test_the_max_age_is_a_day_or_the_servers_shorter_one_but_at_least_an_hour(cache_control, max_age):
    headers = {"cache_control": cache_control} if cache_control else {}
    assert md.max_age(answer(**headers)) == max_age


def test_only_what_is_used_is_kept_with_its_time():
    kept = md.Discovered.of(answer(cache_control="max-age=7200"), ISSUER, 1_700_000_000.0)
    assert kept.metadata == {k: v for k, v in DOCUMENT.items() if k in md.KEPT} and "jwks_uri" not in kept.metadata
    assert (kept.fetched_at, kept.max_age) == (1_700_000_000.0, 7200)
    with pytest.raises(ProtocolViolation, match="RFC 8414"):  # RFC 8414 §3.3, as before
        md.Discovered.of(answer({**DOCUMENT, "issuer": ISSUER + "/"}), ISSUER, 0.0)
    odd = md.Discovered.of(answer({**DOCUMENT, "revocation_endpoint_auth_methods_supported": "none",
                                   "revocation_endpoint": 5}), ISSUER, 0.0)
    assert "revocation_endpoint" not in odd.metadata and md.AUTH_METHODS not in odd.metadata


def test_fresh_while_younger_than_its_max_age_and_never_from_the_future():
    kept = md.Discovered(ISSUER, {}, fetched_at=1000.0, max_age=HOUR)
    assert kept.fresh(1000.0) and kept.fresh(1000.0 + HOUR - 1)
    assert not kept.fresh(1000.0 + HOUR)
    assert not kept.fresh(999.0)  # the wall clock went back (a board without an RTC)


def test_a_record_round_trips_is_keyed_by_issuer_and_refuses_garbage():
    kept = md.Discovered.of(answer(), ISSUER, 1_700_000_000.0)
    record = json.loads(json.dumps(kept.to_record()))
    assert md.Discovered.from_record(record, ISSUER) == kept
    assert md.Discovered.from_record(record, "https://other.example") is None
    assert md.Discovered.from_record({**record, "max_age": 10 * DAY}, ISSUER).max_age == DAY
    for bad in ([], {**record, "version": 2}, {**record, "metadata": {"token_endpoint": 1}},
                {**record, "metadata": {"userinfo_endpoint": "https://x"}}, {**record, "metadata": []},
                {**record, "fetched_at": "yesterday"}, {**record, "max_age": float("nan")},
                {**record, "fetched_at": True}, {**record, "metadata": {md.AUTH_METHODS: [1]}}):
        with pytest.raises(ValueError):
            md.Discovered.from_record(bad, ISSUER)


def test_the_revocation_auth_methods_are_carried_on_the_endpoints():
    endpoints = grant.resolve_endpoints(DOCUMENT, {})
    assert endpoints.revocation_auth_methods == ("client_secret_basic", "private_key_jwt")
    bare = {k: v for k, v in DOCUMENT.items() if k != md.AUTH_METHODS}
    assert grant.resolve_endpoints(bare, {}).revocation_auth_methods is None  # absent: None, not ()
    assert grant.resolve_endpoints({**bare, md.AUTH_METHODS: "none"}, {}).revocation_auth_methods is None
    assert grant.resolve_endpoints({**bare, md.AUTH_METHODS: ["none\x1b[2J", 3]}, {}).revocation_auth_methods \
        == ("none[2J",)


def test_discovery_answer_hands_back_the_answer_with_its_headers():
    gen = grant.discovery_answer(ISSUER, None)
    first = next(gen)
    assert first.request.url == f"{ISSUER}/.well-known/oauth-authorization-server"
    with pytest.raises(StopIteration) as done:
        gen.send(answer(cache_control="max-age=7200"))
    assert done.value.value.headers["cache-control"] == "max-age=7200"
