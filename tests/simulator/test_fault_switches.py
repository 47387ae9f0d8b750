"""Fault switches: what the virtual device's page and `devicelink-sim faults` turn, live."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from devicelink_sim import faultcli
from devicelink_sim.authserver import DevServer
from devicelink_sim.faults import ENDPOINTS, KINDS, SWITCH_DEFAULTS, SWITCH_KINDS, Fault, Faults, parse_switch


@pytest.fixture
def srv():
    with DevServer(interval=1) as server:
        yield server


def test_every_kind_and_shorthand_has_a_switch():
    assert set(KINDS) <= set(SWITCH_KINDS)
    assert {"slow_down", "rate_limit", "error_body"} <= set(SWITCH_KINDS)
    for kind in SWITCH_KINDS:
        Fault.from_dict({"kind": kind, "times": None, **SWITCH_DEFAULTS[kind]})  # each default is a valid rule


def test_a_switch_lasts_until_switched_off_and_off_removes_only_its_rule():
    faults = Faults()
    faults.token.fail(502, times=2)  # a rule of someone else's
    faults.switch("token", "reset")
    faults.switch("token", "rate_limit", retry_after=30)
    assert [s["kind"] for s in faults.switches()] == ["reset", "rate_limit"]
    assert faults.switches()[1]["fault"]["retry_after"] == 30 and faults.switches()[1]["fault"]["status"] == 429

    picked = [faults.arrive("token", "refresh_token", 0)[0] for _ in range(5)]
    assert [r.kind for r in picked] == ["status", "status", "reset", "reset", "reset"]  # 502 twice, then the switch

    faults.switch("token", "reset", on=False)
    assert [s["kind"] for s in faults.switches()] == ["rate_limit"]
    assert faults.arrive("token", "refresh_token", 0)[0].status == 429
    faults.switch("token", "rate_limit", on=False)
    assert faults.arrive("token", "refresh_token", 0)[0] is None and not faults.active

    faults.switch("device", "timeout", on=False)  # off when it was not on: nothing happens
    assert faults.switches() == []


def test_switching_on_again_replaces_and_clear_turns_every_switch_off():
    faults = Faults()
    faults.switch("discovery", "ok", delay=1.0)
    faults.switch("discovery", "ok", delay=2.0)
    assert [r.delay for r in faults.discovery.rules] == [2.0]
    faults.switch("revocation", "close")
    faults.clear()
    assert faults.switches() == [] and not faults.active


def test_a_switch_given_times_is_off_once_they_are_spent():
    faults = Faults()
    faults.switch("token", "close", times=1)
    assert faults.arrive("token", "refresh_token", 0)[0].kind == "close"
    assert faults.switches() == []


def test_switching_a_hold_off_releases_it():
    faults = Faults()
    faults.switch("token", "timeout")
    _, _, released = faults.arrive("token", "refresh_token", 0)
    assert not released.is_set()
    faults.switch("token", "timeout", on=False)
    assert released.is_set()


def test_watchers_hear_of_changes_and_requests():
    faults = Faults()
    heard = []
    faults.watchers.append(lambda: heard.append(1))
    faults.switch("token", "reset")
    faults.arrive("token", "refresh_token", 0)
    faults.token.fail(503)
    faults.clear()
    assert len(heard) == 4
    faults.watchers.append(lambda: 1 / 0)  # a broken watcher never breaks the server
    faults.switch("token", "reset")


def test_configure_takes_switches_and_refuses_a_bad_one_whole():
    faults = Faults()
    snapshot = faults.configure({"switch": [{"endpoint": "token", "kind": "slow_down", "on": True},
                                            {"endpoint": "device", "kind": "status", "status": 502}]})
    assert [(s["endpoint"], s["kind"]) for s in snapshot["switches"]] == [("token", "slow_down"), ("device", "status")]
    assert snapshot["device"][0]["status"] == 502 and snapshot["device"][0]["times"] is None
    for bad in ({"endpoint": "nowhere", "kind": "reset"}, {"endpoint": "token", "kind": "bogus"},
                {"endpoint": "token", "kind": "reset", "on": "yes"}, {"endpoint": "token", "kind": "reset", "x": 1},
                {"endpoint": "token", "kind": "status", "status": 99}):
        with pytest.raises(ValueError):
            faults.configure({"switch": [{"endpoint": "token", "kind": "close"}, bad]})
        assert len(faults.switches()) == 2  # nothing was turned
    faults.configure({"switch": {"endpoint": "token", "kind": "slow_down", "on": False}})
    assert [s["kind"] for s in faults.switches()] == ["status"]


def test_switches_over_http(srv):
    with httpx.Client(base_url=srv.issuer) as http:
        answer = http.post("/sim/faults", json={"switch": [{"endpoint": "token", "kind": "status"}]})
        assert answer.status_code == 200 and answer.json()["switches"][0]["kind"] == "status"
        assert http.post("/token", data={"grant_type": "refresh_token"}).status_code == 503
        assert http.post("/sim/faults", json={"switch": [{"endpoint": "token", "kind": "??"}]}).status_code == 400
        http.post("/sim/faults", json={"switch": [{"endpoint": "token", "kind": "status", "on": False}]})
        assert http.post("/token", data={"grant_type": "refresh_token"}).status_code != 503


def test_parse_switch():
    assert parse_switch("token:rate_limit,retry_after=30") == ("token", "rate_limit", {"retry_after": 30})
    assert parse_switch("device:reset,probability=0.5,times=none") == ("device", "reset",
                                                                       {"probability": 0.5, "times": None})
    for bad in ("token", "nowhere:reset", "token:bogus", "token:reset,probability", "token:reset,colour=red",
                "token:reset,probability=2"):
        with pytest.raises(ValueError):
            parse_switch(bad)


def test_the_command_line_turns_the_same_switches(srv, capsys):
    issuer = ["--issuer", srv.issuer]
    assert faultcli.main([*issuer, "on", "token:status", "all:reset,probability=0.5"]) == 0
    out = capsys.readouterr().out
    assert "on   token:status  status=503" in out
    assert all(f"on   {e}:reset  probability=0.5" in out for e in ENDPOINTS)
    assert {(s["endpoint"], s["kind"]) for s in srv.faults.switches()} == \
        {("token", "status")} | {(e, "reset") for e in ENDPOINTS}

    assert faultcli.main([*issuer, "off", "all:reset"]) == 0
    assert [s["kind"] for s in srv.faults.switches()] == ["status"]
    srv.faults.token.fail(502, times=2)
    assert faultcli.main(issuer) == 0
    assert "rule token:status  status=502 (2 left)" in capsys.readouterr().out
    assert faultcli.main([*issuer, "clear"]) == 0
    assert "no faults: the server is healthy" in capsys.readouterr().out and not srv.faults.active

    srv.faults.switch("token", "timeout")
    _, _, held = srv.faults.arrive("token", "refresh_token", 0)
    assert faultcli.main([*issuer, "release"]) == 0 and held.is_set()
    revoked = []
    srv.faults._revoke_grants = lambda: revoked.append(1) or 0
    assert faultcli.main([*issuer, "revoke-grants"]) == 0 and revoked


def test_the_command_line_says_what_is_wrong(srv, capsys, monkeypatch):
    monkeypatch.delenv("DEVICELINK_SIM_ISSUER", raising=False)
    for argv in (["show"], ["--issuer", srv.issuer, "on"], ["--issuer", srv.issuer, "on", "token:bogus"],
                 ["--issuer", srv.issuer, "clear", "token:reset"]):
        with pytest.raises(SystemExit) as exit:
            faultcli.main(argv)
        assert exit.value.code == 2
    assert faultcli.main(["--issuer", "http://127.0.0.1:9", "show"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    monkeypatch.setenv("DEVICELINK_SIM_ISSUER", srv.issuer)
    assert faultcli.main(["kinds"]) == 0 and "rate_limit  retry_after=5" in capsys.readouterr().out
    assert faultcli.main([]) == 0  # the issuer from the environment


def test_devicelink_sim_faults_is_a_command(srv):
    result = subprocess.run([sys.executable, "-m", "devicelink_sim.cli", "faults", "--issuer", srv.issuer, "on",
                             "token:slow_down"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "on   token:slow_down  status=400, error=slow_down" in result.stdout
