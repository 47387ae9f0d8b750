"""``[identity] on_factory_reset = "new_key"`` end to end (issue 11, item 7): the daemon and
``provision`` as processes against the development server with a fleet key.

- ``devicelink unpair --factory``: the grant revoked and the old client deleted at the server
  (RFC 7592), both with the old key; then a new key, registered as a new client, and the next
  owner pairs with it; ``provision`` prints the new key;
- a power cut at each step resumes: with the revocation still owed (the old key still
  authenticates it after the restart), after the old client's deletion but before the new
  key's write, and after that write but before the note's removal; ``provision`` finishes an
  unfinished reset too;
- DPoP alone (no registration): the next tokens are bound to the new key;
- ``[registration] on_factory_reset = "keep"``: the next owner pairs as the same client.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import write_config
from tests.support.registration import device_config, fleet, fleet_keys

pytest.importorskip("devicelink_sim")

from tests.e2e.test_registration import provision  # noqa: E402  (after the skip: it needs the simulator)


def new_key_config(directory, issuer, statement, registration: str = ""):
    cfg = device_config(directory, issuer, statement, registration=registration)
    cfg.write_text(cfg.read_text().replace("[identity]\n", '[identity]\non_factory_reset = "new_key"\n', 1))
    return cfg


@contextmanager
def fleet_unit(directory, new_key: bool = True, registration: str = ""):
    """The development server with a fleet key, and a unit's config (``new_key`` or the default;
    ``registration``: more lines for ``[registration]``)."""
    from devicelink_sim.authserver import DevServer

    key, statement = fleet()
    with DevServer(interval=1, fleet_keys=fleet_keys(key)) as srv:
        cfg = (new_key_config if new_key else device_config)(directory, srv.issuer, statement,
                                                             registration=registration)
        yield srv, cfg, directory / "state"


def key_kid(state) -> str:
    from devicelink.identity.filekey import read

    return read(state / "identity.jwk").kid


def registration_token(srv, client_id: str) -> str:
    return next(t for t, c in srv._state.registration_tokens.items() if c == client_id)


def pair(srv, d, subject: str = "alice") -> None:
    srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1), subject=subject)
    d.wait_for(r"state pairing -> paired")


def test_a_factory_reset_with_new_key_deletes_the_old_client_and_registers_a_new_key(short_tmp, daemons):
    with fleet_unit(short_tmp) as (srv, cfg, state):
        unit = provision(cfg)
        old_kid, client_id = unit["kid"], unit["registration"]["client_id"]
        d = daemons(cfg)
        d.wait_for(rf"registered as client_id {client_id} at {srv.issuer}")
        pair(srv, d)
        old_token = registration_token(srv, client_id)

        out = d.cli("unpair", "--factory")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        new_kid = d.wait_for(r"factory reset: new device identity key \S+ \(thumbprint (\S+)\), replacing "
                             + old_kid).group(1)
        fresh = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        code = d.wait_for(r"pairing: enter code (\S+)").group(1)

        assert new_kid != old_kid and key_kid(state) == new_kid
        assert not (state / "identity.renew.json").exists()
        clients = srv.registered_clients()
        assert [c["client_id"] for c in clients] == [fresh] and fresh != client_id
        assert clients[0]["kids"] == [new_kid]  # the new registration carries the new key, not the old
        gone = httpx.get(f"{srv.issuer}/register/{client_id}", headers={"authorization": f"Bearer {old_token}"})
        assert gone.status_code == 401
        assert srv.stats.revocations == 1
        log = "".join(d.log)
        assert (log.index("the grant was revoked") < log.index(f"the registration {client_id} is deleted at the server")
                < log.index("factory reset: new device identity key") < log.index(f"as client_id {fresh}"))
        revoking = [a for a in srv.assertions if a["iss"] == client_id]
        assert revoking  # the old client's assertions: the server checked them against the old key

        srv.approve(code, subject="bob")  # the next owner pairs as the new client, with the new key
        d.wait_for(r"state pairing -> paired")
        assert srv.access_token_info(d.cli("token").stdout.strip())["client_id"] == fresh
        assert srv.assertions[-1]["iss"] == fresh
        shown = provision(cfg)  # while the daemon runs: it prints, and sends nothing
        assert shown["kid"] == new_kid and shown["jwks"]["keys"][0]["kid"] == new_kid
        assert shown["registration"]["client_id"] == fresh and shown["registration"]["kid"] == new_kid


def test_keep_is_the_default_a_factory_reset_keeps_the_key(short_tmp, daemons):
    with fleet_unit(short_tmp, new_key=False) as (srv, cfg, state):
        unit = provision(cfg)
        d = daemons(cfg)
        pair(srv, d)
        assert d.cli("unpair", "--factory").returncode == 0
        fresh = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        d.wait_for(r"pairing: enter code")
        assert key_kid(state) == unit["kid"]
        assert [c["kids"] for c in srv.registered_clients() if c["client_id"] == fresh] == [[unit["kid"]]]
        assert "new device identity key" not in "".join(d.log)


def test_a_power_cut_while_the_revocation_is_owed_revokes_with_the_old_key_then_renews(short_tmp, daemons):
    with fleet_unit(short_tmp) as (srv, cfg, state):
        d = daemons(cfg)
        client_id = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        old_kid = key_kid(state)
        pair(srv, d)
        srv.faults.revocation.fail(503, times=None)  # the revocation is owed: everything after it waits
        out = d.cli("unpair", "--factory")
        assert out.returncode == 6 and "unpaired on this device" in out.stdout
        d.wait_for(r"factory reset: waiting for the revocation before deleting the registration")
        d.proc.kill()  # the power cut
        d.stop()
        assert json.loads((state / "identity.renew.json").read_text())["old_kid"] == old_kid
        assert json.loads((state / "registration.json").read_text())["deleting"]
        assert key_kid(state) == old_kid

        srv.faults.clear()
        d2 = daemons(cfg)
        d2.wait_for(rf"a factory reset is unfinished: the client {client_id} is deleted")
        new_kid = d2.wait_for(r"new device identity key \S+ \(thumbprint (\S+)\), replacing").group(1)
        fresh = d2.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        d2.wait_for(r"pairing: enter code")
        assert srv.stats.revocations == 1  # authenticated as the old client, with the old key
        assert [(c["client_id"], c["kids"]) for c in srv.registered_clients()] == [(fresh, [new_kid])]
        log = "".join(d2.log)
        assert (log.index("the grant was revoked") < log.index(f"the registration {client_id} is deleted")
                < log.index("new device identity key"))
        assert f"device identity: serial SN-0001, key file (thumbprint {old_kid})" in log  # restarted on the old key


CUTS = ["after the note, before the deletion's mark", "after the deletion, before the new key",
        "after the new key, before the note's removal"]


@pytest.mark.parametrize("cut", CUTS)
def test_a_power_cut_at_each_step_resumes_with_one_new_key_and_one_client(short_tmp, daemons, cut):
    """The disk as a cut leaves it at that point (the note written; then the old client deleted
    and its record removed; then the new key written), made by hand: the next start finishes the
    job, and the server ends with one client, for the new key."""
    from devicelink.identity import filekey, renewal

    with fleet_unit(short_tmp) as (srv, cfg, state):
        unit = provision(cfg)
        old_kid, client_id = unit["kid"], unit["registration"]["client_id"]
        renewal.begin(state, old_kid)
        if cut != CUTS[0]:
            deleted = httpx.delete(f"{srv.issuer}/register/{client_id}",
                                   headers={"authorization": f"Bearer {registration_token(srv, client_id)}"})
            assert deleted.status_code == 204
            (state / "registration.json").unlink()
        made_before_the_cut = filekey.create(state / "identity.jwk").kid if cut == CUTS[2] else None

        d = daemons(cfg)
        new_kid = d.wait_for(r"new device identity key \S+ \(thumbprint (\S+)\), replacing " + old_kid).group(1)
        fresh = d.wait_for(r"registered at \S+ as client_id (\S+)").group(1)
        pair(srv, d)
        assert new_kid != old_kid and key_kid(state) == new_kid
        if made_before_the_cut is not None:
            assert new_kid == made_before_the_cut  # not made a second time
        assert [(c["client_id"], c["kids"]) for c in srv.registered_clients()] == [(fresh, [new_kid])]
        assert not (state / "identity.renew.json").exists()
        assert srv.access_token_info(d.cli("token").stdout.strip())["client_id"] == fresh


def test_provision_finishes_an_unfinished_reset_in_its_order(short_tmp):
    from devicelink.identity import registration as r
    from devicelink.identity import renewal

    with fleet_unit(short_tmp) as (srv, cfg, state):
        unit = provision(cfg)
        old_kid, client_id = unit["kid"], unit["registration"]["client_id"]
        renewal.begin(state, old_kid)  # the daemon stopped right after noting the new key
        files = r.RegistrationFile(state)
        reg = files.load()
        reg.deleting = True
        files.save(reg)

        out = provision(cfg)
        assert out["kid"] != old_kid and out["kid"] == key_kid(state) and out["created"]
        assert out["registration"]["kid"] == out["kid"] and out["registration"]["client_id"] != client_id
        assert [(c["client_id"], c["kids"]) for c in srv.registered_clients()] == [
            (out["registration"]["client_id"], [out["kid"]])]
        assert not (state / "identity.renew.json").exists()


def test_a_kept_registration_pairs_the_next_owner_as_the_same_client(short_tmp, daemons):
    with fleet_unit(short_tmp, new_key=False, registration='on_factory_reset = "keep"\n') as (srv, cfg, state):
        unit = provision(cfg)
        client_id = unit["registration"]["client_id"]
        d = daemons(cfg)
        pair(srv, d)
        out = d.cli("unpair", "--factory")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        d.wait_for(rf"factory reset: the registration {client_id} is kept")
        pair(srv, d, subject="bob")
        assert srv.access_token_info(d.cli("token").stdout.strip())["client_id"] == client_id
        assert [c["client_id"] for c in srv.registered_clients()] == [client_id]
        assert srv.stats.revocations == 1 and key_kid(state) == unit["kid"]
        assert "is deleted at the server" not in "".join(d.log)
        assert not json.loads((state / "registration.json").read_text())["deleting"]


@pytest.mark.parametrize("cut", [False, True], ids=["no cut", "a power cut while the revocation is owed"])
def test_dpop_alone_binds_the_next_owners_tokens_to_the_new_key(short_tmp, daemons, cut):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, dpop_nonce=True) as srv:
        cfg = write_config(short_tmp, srv.issuer, srv.client_id, scope="openid profile offline_access",
                           extra='dpop = true\n\n[identity]\non_factory_reset = "new_key"\n')
        d = daemons(cfg)
        old_kid = d.wait_for(r"made a new device identity key \S+ \(thumbprint (\S+)\): DPoP").group(1)
        pair(srv, d)
        assert srv.access_token_info(d.cli("token").stdout.strip())["cnf"] == {"jkt": old_kid}
        if cut:
            srv.faults.revocation.fail(503, times=None)
            assert d.cli("unpair", "--factory").returncode == 6
            d.wait_for(r"factory reset: waiting for the revocation before replacing the device key")
            d.proc.kill()  # the power cut
            d.stop()
            assert key_kid(short_tmp / "state") == old_kid and (short_tmp / "state" / "identity.renew.json").exists()
            srv.faults.clear()
            d = daemons(cfg)
            d.wait_for(r"a factory reset is unfinished: the device key \S+ is replaced")
        else:
            out = d.cli("unpair", "--factory")
            assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        new_kid = d.wait_for(r"new device identity key \S+ \(thumbprint (\S+)\), replacing " + old_kid).group(1)
        assert srv.stats.revocations == 1
        pair(srv, d, subject="bob")
        assert srv.access_token_info(d.cli("token").stdout.strip())["cnf"] == {"jkt": new_kid} != {"jkt": old_kid}
        revoke = [p for p in srv.dpop_proofs if p["htu"].endswith("/revoke")]
        assert revoke and all(p["jkt"] == old_kid for p in revoke)  # the revocation went with the old key
        assert key_kid(short_tmp / "state") == new_kid
