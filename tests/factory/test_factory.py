"""The manufacturer's tools without a server: the fleet key (ES256 and RS256, JWK and PEM), statements
checked by another JOSE implementation (pyjwt), a device's provision output verified, the export.

Needs only ``cryptography`` and pyjwt (bench/bookworm runs it under Debian's 38 and 2.6)."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest

from devicelink.factory import fleet, keys, statements
from devicelink.identity import filekey
from devicelink.identity import registration as r


@pytest.mark.parametrize("alg, form", [("ES256", "jwk"), ("ES256", "pem"), ("RS256", "jwk"), ("RS256", "pem")])
def test_a_fleet_key_is_written_0600_once_and_read_back(tmp_path, alg, form):
    key = keys.generate(alg)
    path = tmp_path / f"fleet.{form}"
    keys.write_new(key, path, form)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        keys.write_new(keys.generate(alg), path, form)
    loaded = keys.load(path)
    assert loaded.alg == alg and loaded.kid == key.kid and loaded.public_jwk() == key.public_jwk()
    assert keys.public_keys(path) == [{k: v for k, v in (key.private_jwk() if form == "jwk" else key.public_jwk())
                                       .items() if k not in keys.PRIVATE_MEMBERS}]


@pytest.mark.parametrize("content, problem", [
    ('{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}', "not a private JWK"),
    ("hello", "neither a JWK"),
    ('{"kty": "oct", "k": "AAAA", "d": "x"}', "expected EC P-256 or RSA"),
])
def test_an_unusable_fleet_key_is_one_line(tmp_path, content, problem):
    path = tmp_path / "fleet.jwk"
    path.write_text(content)
    with pytest.raises(keys.FleetKeyError, match=problem):
        keys.load(path)


def test_a_damaged_fleet_jwk_is_refused(tmp_path):
    jwk = keys.generate().private_jwk()
    jwk["x"] = keys.generate().private_jwk()["x"]
    path = tmp_path / "fleet.jwk"
    path.write_text(json.dumps(jwk))
    with pytest.raises(keys.FleetKeyError, match="x and y do not belong to its d"):
        keys.load(path)


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_statement_verifies_with_pyjwt_and_carries_what_was_signed(alg):
    key = keys.generate(alg)
    template = statements.template(software_id="acme-tv", client_name="Acme TV", issuer="https://acme.example")
    token = statements.sign(key, template, lifetime=86400, now=time.time())
    public = jwt.PyJWK({**key.public_jwk(), "alg": alg}).key
    claims = jwt.decode(token, public, algorithms=[alg], options={"verify_aud": False})
    assert claims["iss"] == "https://acme.example" and claims["software_id"] == "acme-tv"
    assert claims["exp"] - claims["iat"] == 86400 and len(claims["jti"]) >= 22
    assert claims["token_endpoint_auth_method"] == "private_key_jwt" and claims["redirect_uris"] == []
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    assert keys.verify(token, [key.public_jwk()])[1] == claims
    with pytest.raises(ValueError, match="does not verify"):
        keys.verify(token, [keys.generate(alg).public_jwk()])


@pytest.mark.parametrize("template, problem", [
    ({"client_name": "x"}, "software_id missing"),
    ({"software_id": "s", "exp": 1}, "exp must not be in a template"),
    ({"software_id": "s", "client_secret": "x"}, "client_secret must not be"),
    ({"software_id": "s", "jwks": {}}, "jwks belongs to each device"),
])
def test_a_template_with_what_the_signer_or_the_device_sets_is_refused(template, problem):
    with pytest.raises(ValueError, match=problem):
        statements.check_template(template, "t.json")


def test_a_statement_without_an_issuer_is_not_signed():
    with pytest.raises(ValueError, match="no issuer"):
        statements.sign(keys.generate(), statements.template(software_id="s"))


def unit(tmp_path, serial="SN-1", client_id="dev-1"):
    """A device's provision output, as a registered unit prints it."""
    state = tmp_path / serial
    state.mkdir()
    signer = filekey.create(state / "identity.jwk")
    reg = r.Registration("https://id.example", client_id, "https://id.example/register", signer.kid, serial,
                         time.time(), {"software_id": "acme-tv"})
    from devicelink.identity.signer import registration_jwk

    return {"serial": serial, "kid": signer.kid, "jwks": {"keys": [registration_jwk(signer)]},
            "registration": {"created": True, **reg.summary(), "proof": r.proof(signer, reg, time.time())}}


def test_verify_a_unit_and_what_breaks_it(tmp_path):
    key = keys.generate()
    statement = statements.sign(key, statements.template(software_id="acme-tv", issuer="https://acme.example"))
    device = unit(tmp_path)
    checks = fleet.verify(device, issuer="https://id.example", statement=statement,
                          fleet_keys=[key.public_jwk()])
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert not all(c.ok for c in fleet.verify(device, issuer="https://other.example"))
    other = unit(tmp_path, "SN-2", "dev-2")
    pasted = {**device, "registration": {**device["registration"], "client_id": "dev-2"}}
    assert "the proof names another sub" in [c.what for c in fleet.verify(pasted) if not c.ok]
    swapped = {**device, "jwks": other["jwks"]}
    assert not all(c.ok for c in fleet.verify(swapped))
    private = {**device, "jwks": {"keys": [{**device["jwks"]["keys"][0], "d": "x"}]}}
    assert any("PRIVATE key" in c.what for c in fleet.verify(private))
    bound = statements.sign(key, statements.template(software_id="acme-tv", issuer="i"), device=other)
    assert "the statement is bound to another key" in [c.what.split(" (")[0] for c in
                                                        fleet.verify(device, statement=bound) if not c.ok]
    expired = statements.sign(key, statements.template(software_id="acme-tv", issuer="i"), lifetime=10,
                              now=time.time() - 100)
    assert "the software statement has expired" in [c.what for c in fleet.verify(device, statement=expired)]
    assert [c.what for c in fleet.verify({"serial": "x"}) if not c.ok][-1].startswith("not registered")


def test_export_lists_units_by_serial_and_names_what_is_wrong(tmp_path):
    out = tmp_path / "units"
    out.mkdir()
    for serial, client_id in (("SN-2", "dev-2"), ("SN-1", "dev-1")):
        (out / f"{serial}.json").write_text(json.dumps(unit(tmp_path, serial, client_id)))
    (out / "notes.json").write_text('{"hello": 1}')
    (out / "broken.json").write_text("{")
    rows, problems = fleet.rows(out)
    assert [(row["serial"], row["client_id"]) for row in rows] == [("SN-1", "dev-1"), ("SN-2", "dev-2")]
    assert len(problems) == 2 and all(p.startswith(str(out)) for p in problems)
    text = fleet.to_csv(rows)
    assert text.splitlines()[0] == ",".join(fleet.COLUMNS) and len(text.splitlines()) == 3
    assert [row["kid"] for row in json.loads(fleet.to_json(rows))] == [row["kid"] for row in rows]
    (out / "copy.json").write_text((out / "SN-1.json").read_text())
    _, problems = fleet.rows(out)
    assert any(p.startswith("serial SN-1 appears in") for p in problems)
    assert any(p.startswith("kid ") for p in problems) and any(p.startswith("client_id dev-1") for p in problems)
    assert os.path.exists(out / "copy.json")
