"""Registration end to end (issue 11, items 5 and 6): the manufacturer's tools and the device's
``provision`` and daemon as processes, against the development server with a fleet key.

- the factory line: ``factory keygen`` -> ``template`` -> ``sign``; units ``provision`` (they
  register, a second run sends nothing) and print JSON; ``factory verify`` and ``export``;
- the daemon pairs as the client it registered, with ``private_key_jwt`` assertions whose
  ``iss`` and ``sub`` are that ``client_id``; ``doctor`` says so;
- ``devicelink unpair --factory``: revoked, the client deleted at the server (RFC 7592), a
  new one registered, a new code for the next owner;
- a daemon that starts unregistered registers before it pairs;
- a ``provision`` killed while the server answers: the next run registers again and says
  how many duplicates the server may hold;
- a statement signed by another key: one line, exit 6.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import threading

import httpx
import pytest

from tests.conftest import DAEMON_PYTHON
from tests.support.registration import MANUFACTURER, SOFTWARE_ID, device_config, fleet, fleet_keys

pytest.importorskip("devicelink_sim")


def devicelink(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", *args], capture_output=True, text=True, timeout=60,
                         **kw)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def provision(cfg, *args: str) -> dict:
    return json.loads(devicelink("--config", str(cfg), "provision", *args).stdout)


def test_the_factory_line_from_a_blank_fleet_key_to_the_exported_list(short_tmp):
    from devicelink_sim.authserver import DevServer

    line = short_tmp / "factory"
    line.mkdir()
    jwks = json.loads(devicelink("factory", "keygen", str(line / "fleet.jwk")).stdout)
    assert (line / "fleet.jwk").stat().st_mode & 0o777 == 0o600 and "d" not in jwks["keys"][0]
    again = devicelink("factory", "keygen", str(line / "fleet.jwk"), check=False)
    assert again.returncode == 1 and "never replaced" in again.stderr
    (line / "template.json").write_text(devicelink("factory", "template", "--software-id", SOFTWARE_ID,
                                                   "--client-name", "Acme TV").stdout)
    statement = devicelink("factory", "sign", "--key", str(line / "fleet.jwk"), "--iss", MANUFACTURER,
                           "--expires-in", "365", str(line / "template.json")).stdout.strip()
    (line / "statement.jwt").write_text(statement)

    with DevServer(interval=1, fleet_keys=jwks, statement_issuer=MANUFACTURER) as srv:
        outputs = line / "units"
        outputs.mkdir()
        for serial in ("SN-0001", "SN-0002"):
            cfg = device_config(short_tmp / serial, srv.issuer, statement, serial=serial)
            out = provision(cfg)
            assert out["registration"]["created"] and out["registration"]["client_name"] == "Acme TV"
            (outputs / f"{serial}.json").write_text(json.dumps(out))
            assert not provision(cfg)["registration"]["created"]  # a second run only prints
        assert srv.registrations == 2

        unit = outputs / "SN-0001.json"
        checked = devicelink("factory", "verify", str(unit), "--issuer", srv.issuer, "--statement",
                             str(line / "statement.jwt"), "--fleet-key", str(line / "fleet.jwk"), "--json")
        assert all(c["ok"] for c in json.loads(checked.stdout))
        # with a registration access token (an administrator's), the server is asked too (RFC 7592)
        device = json.loads(unit.read_text())
        token = next(t for t, c in srv._state.registration_tokens.items()
                     if c == device["registration"]["client_id"])
        (line / "rat").write_text(token)
        asked = devicelink("factory", "verify", str(unit), "--registration-access-token-file", str(line / "rat"),
                           "--allow-insecure-http")
        assert "ok    the server holds the device's key for it" in asked.stdout
        # an output pasted together from two units does not verify
        other = json.loads((outputs / "SN-0002.json").read_text())
        device["registration"]["client_id"] = other["registration"]["client_id"]
        (line / "forged.json").write_text(json.dumps(device))
        forged = devicelink("factory", "verify", str(line / "forged.json"), check=False)
        assert forged.returncode == 1 and "FAIL  the proof names another sub" in forged.stdout
        # a statement signed by another fleet key does not verify
        devicelink("factory", "keygen", str(line / "other.jwk"))
        wrong = devicelink("factory", "verify", str(unit), "--statement", str(line / "statement.jwt"),
                           "--fleet-key", str(line / "other.jwk"), check=False)
        assert wrong.returncode == 1 and "does not verify with the fleet key" in wrong.stdout

        listed = devicelink("factory", "export", str(outputs)).stdout
        rows = list(csv.DictReader(io.StringIO(listed)))
        assert list(rows[0]) == ["serial", "client_id", "kid", "issuer", "software_id", "software_version",
                                 "registered_at", "registration_client_uri", "file"]
        assert [r["serial"] for r in rows] == ["SN-0001", "SN-0002"]
        at_server = {c["client_id"]: c for c in srv.registered_clients()}
        for row in rows:
            assert at_server[row["client_id"]]["kids"] == [row["kid"]]
            assert at_server[row["client_id"]]["device_serial"] == row["serial"]
            assert row["software_id"] == SOFTWARE_ID and row["issuer"] == srv.issuer
        as_json = json.loads(devicelink("factory", "export", str(outputs), "--format", "json").stdout)
        assert [{k: str(v) for k, v in r.items()} for r in as_json] == rows
        (outputs / "SN-0001-again.json").write_text(unit.read_text())
        twice = devicelink("factory", "export", str(outputs), check=False)
        assert twice.returncode == 1 and "serial SN-0001 appears in SN-0001-again.json, SN-0001.json" in twice.stderr


def test_the_daemon_pairs_as_its_registered_client_and_a_factory_reset_registers_afresh(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    key, statement = fleet()
    with DevServer(interval=1, access_token_lifetime=4, fleet_keys=fleet_keys(key)) as srv:
        cfg = device_config(short_tmp, srv.issuer, statement)
        unit = provision(cfg)
        client_id = unit["registration"]["client_id"]
        d = daemons(cfg)
        d.wait_for(rf"registered as client_id {client_id} at {srv.issuer}")
        srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"state pairing -> paired")
        token = d.cli("token").stdout.strip()
        assert srv.access_token_info(token)["client_id"] == client_id
        d.wait_for(r"state refreshing -> paired", timeout=20)
        assertions = srv.assertions
        assert assertions and all(a["iss"] == a["sub"] == client_id for a in assertions)
        doctor = json.loads(d.cli("doctor", "--json").stdout)
        found = [f for f in doctor if f["check"] == "registration"]
        assert found[0]["level"] == "ok" and client_id in found[0]["message"] and unit["kid"] in found[0]["message"]

        old_token = next(t for t, c in srv._state.registration_tokens.items() if c == client_id)
        out = d.cli("unpair", "--factory")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        fresh = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        code = d.wait_for(r"pairing: enter code (\S+)").group(1)
        assert fresh != client_id and [c["client_id"] for c in srv.registered_clients()] == [fresh]
        gone = httpx.get(f"{srv.issuer}/register/{client_id}", headers={"authorization": f"Bearer {old_token}"})
        assert gone.status_code == 401  # RFC 7592 §2.1: the server no longer knows the client
        assert srv.stats.revocations == 1
        log = "".join(d.log)
        assert log.index("the grant was revoked") < log.index(f"the registration {client_id} is deleted at the server")
        # the next owner's pairing is as the new client
        srv.approve(code, subject="bob")
        d.wait_for(r"state pairing -> paired")
        assert srv.access_token_info(d.cli("token").stdout.strip())["client_id"] == fresh
        assert json.loads((short_tmp / "state" / "registration.json").read_text())["client_id"] == fresh


def test_a_daemon_started_unregistered_registers_before_it_pairs(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    key, statement = fleet()
    with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
        srv.faults.registration.fail(503, times=1)  # no luck the first time: the backoff retries
        cfg = device_config(short_tmp, srv.issuer, statement)
        d = daemons(cfg)
        d.wait_for(r"not registered yet: registering before pairing")
        status = json.loads(d.cli("status", "--json").stdout)
        assert status["state"] == "unpaired"
        client_id = d.wait_for(r"registered at \S+ as client_id (\S+)", timeout=30).group(1)
        code = d.wait_for(r"pairing: enter code (\S+)").group(1)
        srv.approve(code)
        d.wait_for(r"state pairing -> paired")
        assert srv.assertions[-1]["iss"] == client_id
        assert "made a new device identity key" in "".join(d.log) and "register its public key" not in "".join(d.log)


def test_a_provision_killed_while_the_server_answers_registers_once_more_and_counts_it(short_tmp, monkeypatch):
    from devicelink_sim.authserver import DevServer
    from devicelink_sim.registration import RegistrationEndpoint

    saved = threading.Event()
    real = RegistrationEndpoint.save_client

    def save_client(self, *args):
        client = real(self, *args)
        saved.set()
        return client

    monkeypatch.setattr(RegistrationEndpoint, "save_client", save_client)
    key, statement = fleet()
    with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
        cfg = device_config(short_tmp, srv.issuer, statement)
        srv.faults.registration.timeout(after=True)  # the server registers, then holds the answer
        proc = subprocess.Popen([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(cfg), "provision"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert saved.wait(30), "the server never registered"
        os.kill(proc.pid, signal.SIGKILL)  # the power cut: after the server's commit, before our save
        proc.communicate(timeout=30)
        srv.faults.release()
        assert not (short_tmp / "state" / "registration.json").exists()
        out = devicelink("--config", str(cfg), "provision")
        reg = json.loads(out.stdout)["registration"]
        assert reg["created"] and reg["earlier_attempts"] == 1 and "may hold as many unused clients" in out.stderr
        mine = srv.registered_clients()
        assert len(mine) == 2 and {c["device_serial"] for c in mine} == {"SN-0001"}
        assert {c["kids"][0] for c in mine} == {reg["kid"]}  # how the administrator finds the duplicate
        doctor = devicelink("--config", str(cfg), "doctor", "--json", check=False)
        warned = [f for f in json.loads(doctor.stdout) if f["check"] == "registration" and f["level"] == "warn"]
        assert any("1 earlier registration attempt" in f["message"] for f in warned)


def test_a_statement_signed_by_another_key_is_one_line_and_exit_6(short_tmp):
    from devicelink_sim.authserver import DevServer

    key, _ = fleet()
    _, foreign = fleet()
    with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
        cfg = device_config(short_tmp, srv.issuer, foreign)
        out = devicelink("--config", str(cfg), "provision", check=False)
        assert out.returncode == 6 and out.stdout == ""
        lines = [line for line in out.stderr.splitlines() if line.startswith("devicelink:")]
        assert len(lines) == 1 and "invalid_software_statement" in lines[0] and "fleet key" in lines[0]
        assert srv.registrations == 0


# -- oidc-provider: an authorization server that is not ours ------------------------------------

@pytest.mark.oidc_provider
def test_oidc_provider_checks_the_statement_then_the_device_pairs_as_its_client_and_a_reset_deletes_it(
        short_tmp, tmp_path, daemons):
    """server.mjs verifies software statements in extraClientMetadata's validator (oidc-provider has
    none of its own); registration, RFC 7592 read and update (which rotates the token) and delete
    are the library's."""
    from devicelink.identity import registration as r
    from tests.e2e.test_oidc_provider import Issued, pair, refreshed
    from tests.support.oidc_provider import OidcProvider

    key, statement = fleet()
    _, foreign = fleet()
    record = tmp_path / "issued.jsonl"
    op = OidcProvider(access_token_ttl=4, fleet_jwks=fleet_keys(key), statement_issuer=MANUFACTURER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP_RECORD_ISSUED_TO", str(record))
        op.start()
    try:
        refused = devicelink("--config", str(device_config(short_tmp / "foreign", op.issuer, foreign)), "provision",
                             check=False)
        assert refused.returncode == 6 and "invalid_software_statement" in refused.stderr
        assert "does not verify with the fleet key" in refused.stderr

        cfg = device_config(short_tmp, op.issuer, statement, extra='assertion_audience = "endpoint"\n')
        unit = provision(cfg)
        client_id = unit["registration"]["client_id"]
        assert unit["registration"]["software_id"] == SOFTWARE_ID and unit["registration"]["manageable"]
        before = json.loads((short_tmp / "state" / r.FILE).read_text())["registration_access_token"]
        updated = provision(cfg, "--update")["registration"]
        assert updated["updated"] and provision(cfg, "--check")["registration"]["server"]["key_registered"]
        seals = json.loads((short_tmp / "state" / r.FILE).read_text())["registration_access_token"]
        assert seals != before  # oidc-provider rotated the token on update; the new one was kept

        d = daemons(cfg)
        d.wait_for(rf"registered as client_id {client_id}")
        pair(d, op)
        refreshed(d)
        assert not Issued(record).events("grant.error"), Issued(record).events("grant.error")

        state_key = (short_tmp / "state" / "state.key").read_bytes()
        old = r.RegistrationFile(short_tmp / "state").load()
        old_token = old.access_token(state_key)
        out = d.cli("unpair", "--factory")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        fresh = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        d.wait_for(r"pairing: enter code")
        assert fresh != client_id and Issued(record).events("grant.revoked")
        gone = httpx.get(old.client_uri, headers={"authorization": f"Bearer {old_token}"})
        assert gone.status_code == 401  # the client and its registration access token are gone
    finally:
        op.stop()


def test_a_factory_reset_cut_off_revokes_as_the_old_client_then_deletes_it_at_the_next_start(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    key, statement = fleet()
    with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
        cfg = device_config(short_tmp, srv.issuer, statement)
        d = daemons(cfg)
        client_id = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"state pairing -> paired")
        srv.faults.revocation.fail(503, times=None)  # the revocation is owed, so the deletion waits for it
        out = d.cli("unpair", "--factory")
        assert out.returncode == 6 and "unpaired on this device" in out.stdout
        d.wait_for(r"factory reset: waiting for the revocation before deleting the registration")
        d.proc.kill()  # the power cut
        d.stop()
        kept = json.loads((short_tmp / "state" / "registration.json").read_text())
        assert kept["deleting"] and kept["client_id"] == client_id
        assert [c["client_id"] for c in srv.registered_clients()] == [client_id]

        srv.faults.clear()
        d2 = daemons(cfg)
        d2.wait_for(rf"a factory reset is unfinished: the client {client_id} is deleted")
        fresh = d2.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        d2.wait_for(r"pairing: enter code")
        assert srv.stats.revocations == 1  # authenticated as the old client, before it went
        assert [c["client_id"] for c in srv.registered_clients()] == [fresh] != [client_id]
        log = "".join(d2.log)
        assert log.index("the grant was revoked") < log.index(f"the registration {client_id} is deleted")
