"""``provision`` registers the device with the development server (RFC 7591, a software statement
signed by the fleet key) and manages the registration (RFC 7592), in this process, with real
crypto and a real server on loopback.

Power cuts are simulated as in the re-key tests: the run stops at its N-th file-system change
(a crash: nothing handles it; or an I/O error), for every N until a run completes; and at the
HTTP boundary, where the server registers the client and its answer is lost. After each, the
next provision must end with one registration this device uses, and every other client the
server made for it must be counted in ``earlier_attempts`` (the duplicates an administrator
deletes): never one nobody knows of. (The count is an upper bound: an attempt noted and
then cut off before it went counts as one that may have registered.)
"""

from __future__ import annotations

import pytest

pytest.importorskip("devicelink_sim")

from devicelink.config import load  # noqa: E402
from devicelink.errors import DeviceLinkError, IdentityError, RegistrationFailed  # noqa: E402
from devicelink.identity import registration as r  # noqa: E402
from devicelink.identity.provision import provision  # noqa: E402
from devicelink_sim.authserver import DevServer  # noqa: E402
from tests.support.registration import MANUFACTURER, SOFTWARE_ID, device_config, fleet, fleet_keys  # noqa: E402
from tests.tokens.test_keys import Crash, stop_at  # noqa: E402


@pytest.fixture(scope="module")
def signed():
    return fleet()


@pytest.fixture
def server(signed):
    key, _ = signed
    with DevServer(interval=1, fleet_keys=fleet_keys(key), statement_issuer=MANUFACTURER) as srv:
        yield srv


def registration_of(out: dict) -> dict:
    reg = out["registration"]
    assert "registration_access_token" not in str(out)
    return reg


def test_provision_registers_once_and_then_only_prints(tmp_path, server, signed):
    cfg = load(device_config(tmp_path, server.issuer, signed[1]))
    first = provision(cfg)
    reg = registration_of(first)
    assert reg["created"] and reg["software_id"] == SOFTWARE_ID and reg["serial"] == "SN-0001"
    assert reg["kid"] == first["kid"] and reg["manageable"] and reg["earlier_attempts"] == 0
    clients = server.registered_clients()
    assert [c["client_id"] for c in clients] == [reg["client_id"]]
    assert clients[0]["device_serial"] == "SN-0001" and clients[0]["kids"] == [first["kid"]]
    again = provision(cfg)
    assert not again["created"] and not again["registration"]["created"]
    assert again["registration"]["client_id"] == reg["client_id"] and server.registrations == 1
    assert not [hit for hit in server.faults.log if hit.endpoint == "registration"][1:]  # nothing sent again


def test_a_statement_signed_by_another_key_is_refused(tmp_path, server):
    _, foreign = fleet()
    cfg = load(device_config(tmp_path, server.issuer, foreign))
    with pytest.raises(RegistrationFailed) as refused:
        provision(cfg)
    text = str(refused.value)
    assert "invalid_software_statement" in text and "does not verify with the fleet key" in text
    assert "\n" not in text and server.registrations == 0
    assert not (tmp_path / "state" / r.FILE).exists() and not (tmp_path / "state" / r.JOURNAL).exists()


def test_without_a_statement_a_fleet_server_does_not_approve(tmp_path, server):
    with pytest.raises(RegistrationFailed, match="unapproved_software_statement"):
        provision(load(device_config(tmp_path, server.issuer, None)))


def test_the_answer_lost_after_the_server_registered_is_a_counted_duplicate(tmp_path, server, signed):
    cfg = load(device_config(tmp_path, server.issuer, signed[1]))
    server.faults.registration.reset(after=True)  # registered at the server; the device never hears of it
    with pytest.raises(RegistrationFailed) as lost:
        provision(cfg)
    assert lost.value.transient and server.registrations == 1
    reg = registration_of(provision(cfg))
    assert reg["created"] and reg["earlier_attempts"] == 1 and server.registrations == 2
    mine = [c for c in server.registered_clients() if c["device_serial"] == "SN-0001"]
    assert len(mine) == 2 and len({c["kids"][0] for c in mine}) == 1  # what the administrator dedupes by
    assert reg["client_id"] in {c["client_id"] for c in mine}


@pytest.mark.parametrize("failure", ["crash", "eio"])
def test_provision_stopped_at_every_file_system_change_resumes(tmp_path, monkeypatch, signed, failure):
    key, statement = signed
    n, outcomes = 0, set()
    while True:
        n += 1
        with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
            cfg = load(device_config(tmp_path / f"run{n}", srv.issuer, statement))
            with stop_at(monkeypatch, n, failure) as seen:
                try:
                    provision(cfg)
                    finished = True
                except Crash:
                    finished = False
                except (DeviceLinkError, OSError) as exc:  # an I/O error is one line of ours
                    assert failure == "eio", exc
                    finished = False
            if finished and len(seen) < n:
                break  # past the last change of a whole run
            reg = registration_of(provision(cfg))
            at_server = srv.registered_clients()
            # every client the server made for this device is the one it uses or a counted duplicate
            # (an attempt noted and then cut off before it was sent is counted too: "may have")
            assert len(at_server) <= 1 + reg["earlier_attempts"], f"stopped at change {n}: {seen[-1:]}"
            assert reg["client_id"] in {c["client_id"] for c in at_server}
            outcomes.add(len(at_server))
            found = provision(load(cfg.path), "check")["registration"]["server"]
            assert found == {"exists": True, "key_registered": True, "client_id": reg["client_id"]}
            assert not (tmp_path / f"run{n}" / "state" / r.JOURNAL).exists()
    assert n > 8, f"only {n - 1} file-system changes: the harness did not reach the steps"
    assert outcomes == {1, 2}  # a stop between the server's answer and the save was hit, and counted


def test_check_update_and_delete(tmp_path, server, signed):
    cfg = load(device_config(tmp_path, server.issuer, signed[1]))
    reg = registration_of(provision(cfg))
    # a new key: the registration no longer fits, and --update gives the server the new key
    (tmp_path / "state" / "identity.jwk").unlink()
    with pytest.raises(r.Mismatch, match="provision --update"):
        provision(cfg)
    updated = provision(cfg, "update")
    assert updated["registration"]["updated"] and updated["registration"]["kid"] == updated["kid"] != reg["kid"]
    assert server.registered_clients()[0]["kids"] == [updated["kid"]]
    assert provision(cfg, "check")["registration"]["server"]["key_registered"] is True
    gone = provision(cfg, "delete")["registration"]
    assert gone == {"created": False, "client_id": reg["client_id"], "issuer": server.issuer, "deleted": "deleted"}
    assert server.registered_clients() == [] and not (tmp_path / "state" / r.FILE).exists()
    with pytest.raises(IdentityError, match="not registered"):
        provision(cfg, "check")


def test_a_rekey_keeps_the_registration_access_token(tmp_path, server, signed):
    from devicelink.rekey import rekey

    cfg = load(device_config(tmp_path, server.issuer, signed[1]))
    provision(cfg)
    before = r.RegistrationFile(cfg.storage.state_dir).load().token_seals
    rekey(cfg)
    after = r.RegistrationFile(cfg.storage.state_dir).load().token_seals
    assert len(after) == 1 and after != before  # sealed under the new key only
    assert provision(cfg, "check")["registration"]["server"]["exists"] is True


def test_provision_refuses_to_register_while_the_daemon_holds_the_state(tmp_path, server, signed):
    from devicelink.tokens import keys

    cfg = load(device_config(tmp_path, server.issuer, signed[1]))
    cfg.storage.state_dir.mkdir(mode=0o700)
    keys.lock_state_dir(cfg.storage.state_dir)
    try:
        with pytest.raises(DeviceLinkError, match="the daemon is running|held by this process"):
            provision(cfg)
    finally:
        keys.release_state_lock(cfg.storage.state_dir)
    assert server.registrations == 0


def test_an_initial_access_token_opens_registration_without_a_statement(tmp_path):
    with DevServer(interval=1, registration=True, initial_access_token="bootstrap-secret") as srv:
        cfg = load(device_config(tmp_path / "a", srv.issuer, None))
        with pytest.raises(RegistrationFailed, match="access_denied"):
            provision(cfg)  # none configured
        (tmp_path / "iat").write_text("bootstrap-secret\n")
        cfg = load(device_config(tmp_path / "b", srv.issuer, None,
                                 registration=f'initial_access_token_file = "{tmp_path / "iat"}"\n'))
        reg = registration_of(provision(cfg))
        assert reg["created"] and "software_id" not in reg and srv.registrations == 1
        assert "bootstrap-secret" not in (tmp_path / "b" / "state" / r.FILE).read_text()
