"""The per-app policy: [[client]] entries and clients.d drop-ins, matched on peer credentials.

Users and groups are the system's own (``daemon`` uid/gid 1, ``nobody`` 65534,
``nogroup`` 65534), resolved through the real name service.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devicelink import config, policy
from devicelink.errors import ConfigError
from devicelink.ipc.routes import Peer

BASE = """
[provider]
issuer = "https://id.example.com"
client_id = "tv"
scope = "openid media.read media.write"
"""


def write(tmp_path: Path, main: str = "", **drop_ins: str) -> config.Config:
    (tmp_path / "config.toml").write_text(BASE + main)
    if drop_ins:
        (tmp_path / "clients.d").mkdir()
        for name, text in drop_ins.items():
            (tmp_path / "clients.d" / name).write_text(text)
    return config.load(tmp_path / "config.toml")


def peer(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> Peer:
    return Peer(pid=1234, uid=uid, gid=uid if gid is None else gid, groups=groups)


def test_default_deny_and_trusted_uids(tmp_path):
    pol = policy.load(write(tmp_path), own_uid=4242)
    assert pol.identify(peer(1000)) is None
    assert pol.identify(peer(65534)) is None
    for uid in (0, 4242):  # root and the daemon's own user hold the key anyway
        app = pol.identify(peer(uid))
        assert app is policy.ROOT and app.admin and app.scope is None
    assert pol.problems == []


def test_a_drop_in_gives_its_app_exactly_its_scopes(tmp_path):
    cfg = write(tmp_path, **{"player.toml": '[[client]]\nname = "player"\nuser = "nobody"\n'
                                            'scope = "openid  media.read"\n'})
    pol = policy.load(cfg, own_uid=0)
    app = pol.identify(peer(65534))
    assert app is not None and app.name == "player"
    assert app.scope == frozenset({"openid", "media.read"}) and not app.admin and app.resources is None
    assert app.allows_scope(frozenset({"media.read", "media.write"})) == {"media.write"}
    assert pol.identify(peer(1)) is None
    assert not app.dpop_proofs_without_token and policy.ROOT.dpop_proofs_without_token


def test_dpop_proofs_without_a_token_are_one_entrys_choice(tmp_path):
    cfg = write(tmp_path, **{"agent.toml": '[[client]]\nname = "agent"\nuser = "nobody"\nscope = "openid"\n'
                                           'dpop_proofs_without_token = true\n'})
    assert policy.load(cfg, own_uid=0).identify(peer(65534)).dpop_proofs_without_token


def test_uid_beats_group_and_groups_match_supplementary_ids(tmp_path):
    cfg = write(tmp_path, main="""
[[client]]
name = "media-group"
group = "nogroup"
scope = "media.read"

[[client]]
name = "daemon-group"
group = "daemon"
scope = "media.write"

[[client]]
name = "nobody-user"
uid = 65534
scope = "openid"
admin = true
""")
    pol = policy.load(cfg, own_uid=0)
    assert pol.identify(peer(65534)).name == "nobody-user"  # uid entry wins over its group
    assert pol.identify(peer(1000, gid=65534)).name == "media-group"  # primary gid
    assert pol.identify(peer(1000, gid=1000, groups=(7, 65534))).name == "media-group"  # supplementary
    # in both groups: the first group entry in file order wins; entries never merge
    assert pol.identify(peer(1000, gid=1, groups=(65534,))).name == "media-group"
    assert pol.identify(peer(1000, gid=1000, groups=(7, 8))) is None


def test_a_bad_drop_in_is_reported_and_skipped_the_rest_keeps_working(tmp_path):
    cfg = write(
        tmp_path,
        main='[[client]]\nname = "main"\nuid = 1001\nscope = "openid"\n',
        **{
            "a-broken.toml": "[[client]\nname = ",
            "b-unknown-key.toml": '[[client]]\nname = "x"\nuid = 1002\nscopes = "openid"\n',
            "c-no-such-user.toml": '[[client]]\nname = "ghost"\nuser = "no-such-user-here"\n',
            "d-dup-uid.toml": '[[client]]\nname = "thief"\nuid = 1001\nscope = "media.write"\n',
            "e-dup-name.toml": '[[client]]\nname = "main"\nuid = 1003\n',
            "f-root.toml": '[[client]]\nname = "rooty"\nuid = 0\n',
            "g-good.toml": '[[client]]\nname = "good"\nuid = 1004\nscope = "media.read"\n',
            "h-two-matchers.toml": '[[client]]\nname = "two"\nuid = 1005\ngroup = "daemon"\n',
            "i-other-section.toml": '[provider]\nissuer = "https://evil.example"\n',
            ".hidden.toml": '[[client]]\nname = "hidden"\nuid = 1006\n',
            "readme.txt": "not a policy file",
        },
    )
    pol = policy.load(cfg, own_uid=0)
    assert pol.identify(peer(1001)).scope == {"openid"}  # the duplicate did not take it over
    assert pol.identify(peer(1004)).name == "good"
    for uid in (1002, 1003, 1005, 1006):
        assert pol.identify(peer(uid)) is None
    problems = "\n".join(pol.problems)
    assert len(pol.problems) == 8, problems
    assert "a-broken.toml: not valid TOML" in problems
    assert "b-unknown-key.toml: [[client]] #1 scopes: unknown key" in problems
    assert "no user named 'no-such-user-here'" in problems
    assert "uid 1001 is already matched by 'main'" in problems
    assert "e-dup-name.toml: [[client]] 'main': the name is already used" in problems
    assert "uid 0 is root or the daemon's own user" in problems
    assert "exactly one of user, uid or group" in problems
    assert "i-other-section.toml: provider: unknown key" in problems
    assert all(line.endswith("; skipped") and "\n" not in line for line in pol.problems)


def test_resources_in_a_client_entry(tmp_path):
    cfg = write(tmp_path, main='[[client]]\nname = "api"\nuid = 1001\nscope = "openid"\n'
                               'resource = ["https://api.example.com"]\n')
    app = policy.load(cfg, own_uid=0).identify(peer(1001))
    assert app.resources == {"https://api.example.com"}


def test_device_scope_in_a_client_entry(tmp_path):
    cfg = write(tmp_path, main='[[client]]\nname = "telemetry"\nuid = 1001\ndevice_scope = "telemetry.write"\n'
                               '[[client]]\nname = "player"\nuid = 1002\nscope = "openid"\n')
    pol = policy.load(cfg, own_uid=0)
    telemetry, player = pol.identify(peer(1001)), pol.identify(peer(1002))
    assert telemetry.device_scope == {"telemetry.write"} and telemetry.scope == frozenset()
    assert player.device_scope == frozenset()  # default deny: no device-level tokens
    assert policy.ROOT.device_scope is None  # root and the daemon's own user: all of them


@pytest.mark.parametrize(("entry", "message"), [
    ('name = "a b"\nuid = 5', "name: expected 1-64 letters"),
    ('name = "x"\nuid = 5\nscope = "bad\\"scope"', "scope: expected space-separated scope tokens"),
    ('name = "x"\nuid = 5\nresource = ["not a uri"]', "resource: expected absolute URIs"),
    ('name = "x"', "needs exactly one of user, uid or group"),
    ('name = "x"\nuid = -1', "uid: expected an integer"),
])
def test_errors_in_the_main_config_stop_the_daemon(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        write(tmp_path, main=f"[[client]]\n{entry}\n")


def test_socket_caps_are_configurable(tmp_path):
    cfg = write(tmp_path, main="[socket]\nmax_connections = 100\nmax_connections_per_uid = 10\n")
    assert (cfg.socket.max_connections, cfg.socket.max_connections_per_uid) == (100, 10)
    (tmp_path / "zero").mkdir()
    with pytest.raises(ConfigError, match="max_connections_per_uid: expected an integer from 1"):
        write(tmp_path / "zero", main="[socket]\nmax_connections_per_uid = 0\n")


# -- who may change the policy (issue 10, item 2) ------------------------------------------

PLAYER = '[[client]]\nname = "player"\nuser = "nobody"\nadmin = true\n'


def test_a_drop_in_or_clients_d_others_can_write_fails_the_whole_policy(tmp_path):
    cfg = write(tmp_path, **{"player.toml": PLAYER})
    drop_in, folder = tmp_path / "clients.d" / "player.toml", tmp_path / "clients.d"
    assert policy.load(cfg, own_uid=0).identify(peer(65534)).admin

    drop_in.chmod(0o646)  # any user could make itself an admin app
    with pytest.raises(config.UntrustedFile, match=rf"^{drop_in}: refused: writable by others \(mode 0646\)"):
        policy.load(cfg, own_uid=0)
    drop_in.chmod(0o644)

    folder.chmod(0o777)  # any user could add a drop-in
    with pytest.raises(config.UntrustedFile,
                       match=rf"^{folder}: refused: writable by its group and others \(mode 0777\), .*chmod go-w"):
        policy.load(cfg, own_uid=0)
    folder.chmod(0o755)
    assert policy.load(cfg, own_uid=0).identify(peer(65534)).admin


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_drop_ins_owned_by_another_user_are_refused_unless_it_is_the_daemons(tmp_path):
    cfg = write(tmp_path, **{"player.toml": PLAYER})
    drop_in, folder = tmp_path / "clients.d" / "player.toml", tmp_path / "clients.d"
    os.chown(drop_in, 65534, 65534)  # mode 0644, but its owner may rewrite it
    with pytest.raises(config.UntrustedFile, match=r"refused: owned by nobody \(uid 65534\), not by root"):
        policy.load(cfg, own_uid=4242)
    assert policy.load(cfg, own_uid=65534).by_uid == {}  # the daemon's own user: trusted (and needs no entry)
    os.chown(drop_in, 0, 0)
    os.chown(folder, 65534, 65534)
    with pytest.raises(config.UntrustedFile, match=rf"^{folder}: refused: owned by nobody"):
        policy.load(cfg, own_uid=4242)


def test_a_reload_that_fails_keeps_the_previous_policy_and_says_so(tmp_path, caplog):
    from devicelink import daemon

    cfg = write(tmp_path, **{"player.toml": PLAYER.replace("admin = true", 'scope = "openid"')})
    current = daemon.load_policy(cfg)
    drop_in = tmp_path / "clients.d" / "player.toml"
    drop_in.write_text(PLAYER)  # made an admin ...
    drop_in.chmod(0o666)  # ... in a file anyone may write
    with caplog.at_level("INFO", logger="devicelink.daemon"):
        assert daemon.reload_policy(cfg, current) is current
    [record] = [r for r in caplog.records if r.name == "devicelink.daemon"]
    assert record.levelname == "ERROR"
    assert record.getMessage() == (
        "reload failed, keeping the previous per-app policy (1 [[client]] entry): "
        f"{drop_in}: refused: writable by its group and others (mode 0666), who could change it; "
        f"fix: chmod go-w {drop_in}")
    assert not current.identify(peer(65534)).admin

    (tmp_path / "config.toml").chmod(0o666)  # the main file too
    drop_in.chmod(0o644)
    assert daemon.reload_policy(cfg, current) is current
    assert "config.toml: refused: writable by its group and others" in caplog.records[-1].getMessage()
    (tmp_path / "config.toml").chmod(0o644)
    assert daemon.reload_policy(cfg, current).identify(peer(65534)).admin


def test_the_daemon_does_not_start_on_a_drop_in_others_can_write(short_tmp):
    import subprocess

    pytest.importorskip("devicelink_sim", reason="writes its config with the simulator's (venv only)")
    from tests.conftest import DAEMON_PYTHON, write_config

    cfg = write_config(short_tmp, "https://id.example.com", "tv")
    (short_tmp / "clients.d").mkdir()
    drop_in = short_tmp / "clients.d" / "player.toml"
    drop_in.write_text(PLAYER)
    drop_in.chmod(0o666)
    run = subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(cfg), "run"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": ""})
    assert run.returncode == 78, run.stderr
    [line] = run.stderr.splitlines()
    assert line.endswith(f"{drop_in}: refused: writable by its group and others (mode 0666), who could change it; "
                         f"fix: chmod go-w {drop_in}"), line
    assert not (short_tmp / "agent.sock").exists() and not (short_tmp / "state").exists()
