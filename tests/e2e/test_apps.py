"""Per-app policy end to end: the real daemon, and apps as real processes under other uids.

The tests run as root; each app is a `devicelink` CLI process started through
``setpriv`` with another uid and groups, so the daemon decides from what the
kernel reports (SO_PEERCRED, SO_PEERGROUPS). Supplementary group 0 stands in for
the ``devicelink`` group that may open the 0660 socket.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import httpx
import pytest

from tests.conftest import DAEMON_PYTHON, write_config
from tests.e2e.test_daemon import pair

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="starts apps under other uids (needs root)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]

FULL = "openid profile email offline_access"


def as_app(daemon, uid: int, *args: str, groups: str = "0") -> subprocess.CompletedProcess:
    """`devicelink ARGS` as uid ``uid`` with supplementary ``groups``."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={groups}",
         *DAEMON_PYTHON, "-m", "devicelink", "--config", str(daemon.config), *args],
        capture_output=True, text=True, env=daemon.env, timeout=60)


def reload(daemon) -> None:
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(r"per-app policy: \d+ \[\[client\]\] entr")


def test_one_drop_in_gives_an_app_exactly_its_scopes(short_tmp, dev_server, daemons):
    short_tmp.chmod(0o755)  # other uids reach the socket; the state dir inside stays 0700
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id, scope=FULL)
    d = daemons(cfg)
    pair(d, dev_server)

    refused = as_app(d, 65534, "token")
    assert refused.returncode == 4 and "uid 65534 is not allowed" in refused.stderr
    assert refused.stdout == ""

    with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket), base_url="http://devicelink") as root:
        assert root.get("/v1/status").status_code == 200  # a keep-alive connection across the reload
        (short_tmp / "clients.d").mkdir()
        (short_tmp / "clients.d" / "player.toml").write_text(
            '[[client]]\nname = "player"\nuser = "nobody"\nscope = "openid email"\n')
        (short_tmp / "clients.d" / "broken.toml").write_text("[[client]\n")
        reload(d)
        assert any("broken.toml: not valid TOML" in line and "skipped" in line for line in d.log)
        assert root.get("/v1/status").json()["state"] == "paired"

        token = as_app(d, 65534, "token")
        assert token.returncode == 0, token.stderr
        info = dev_server.access_token_info(token.stdout.strip())
        assert set(info["scope"].split()) == {"openid", "email"}  # exactly its scopes, as issued
        assert token.stdout.strip() != root.get("/v1/token").json()["access_token"]

        wider = as_app(d, 65534, "token", "--scope", "openid profile")
        assert wider.returncode == 4 and "not allowed for 'player'" in wider.stderr
        assert as_app(d, 65534, "unpair").returncode == 4  # not an admin
        assert as_app(d, 65534, "status").returncode == 0

        metrics = root.get("/metrics").text
        assert 'devicelink_token_requests_total{app="player",status="200"} 1' in metrics
        assert 'devicelink_token_requests_total{app="unlisted",status="403"} 1' in metrics

        (short_tmp / "clients.d" / "player.toml").unlink()  # the app is uninstalled
        reload(d)
        assert as_app(d, 65534, "token").returncode == 4


def test_groups_come_from_the_kernel(short_tmp, dev_server, daemons):
    short_tmp.chmod(0o755)
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id, scope=FULL, extra="""
[[client]]
name = "media"
group = "nogroup"
scope = "openid profile"
admin = true
""")
    d = daemons(cfg)
    pair(d, dev_server)
    assert as_app(d, 4000, "token", groups="0").returncode == 4
    member = as_app(d, 4000, "token", groups="0,65534")  # a supplementary group: SO_PEERGROUPS
    assert member.returncode == 0, member.stderr
    assert set(dev_server.access_token_info(member.stdout.strip())["scope"].split()) == {"openid", "profile"}
    unpaired = as_app(d, 4000, "unpair", groups="0,65534")  # admin = true may unpair
    assert unpaired.returncode == 0, unpaired.stderr
    d.wait_for(r"state \w+ -> unpaired")


def test_step_up_over_the_socket(short_tmp, dev_server, daemons):
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id, scope=FULL)
    d = daemons(cfg)
    pair(d, dev_server)
    mfa = "urn:devicelink:acr:mfa"
    body = {"acr_values": mfa, "max_age": 600}
    with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket), base_url="http://devicelink",
                      timeout=30) as app:
        standing = app.get("/v1/token").json()["access_token"]
        pending = app.post("/v1/step-up", json=body)
        assert pending.status_code == 202, pending.text
        code = pending.json()["user_code"]
        d.wait_for(rf"step-up for root: confirm code {code}")
        dev_server.approve(code, subject="alice")
        d.wait_for(r"step-up for root: done")
        answer = app.post("/v1/step-up", json=body)
        assert answer.status_code == 200, answer.text
        stronger = answer.json()
        assert stronger["acr"] == mfa and stronger["access_token"] != standing
        assert dev_server.access_token_info(stronger["access_token"])["acr"] == mfa
        assert app.get("/v1/token").json()["access_token"] == standing  # everyone else: the standing grant
        assert app.post("/v1/step-up", content=b"[1]").status_code == 400


ABUSER = r"""
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held, busy = [], 0
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
for i, s in enumerate(held):
    s.sendall([b"\x00\xff garbage\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
               b"POST /v1/step-up HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n"][i % 3])
for s in held:
    s.settimeout(10)
    answer = s.recv(200)
    busy += b" 503 " in answer[:16]
print(busy)
"""


def test_the_daemon_keeps_serving_under_abuse(short_tmp, dev_server, daemons):
    """Another uid opens more connections than its cap and sends garbage on each: it gets
    503 beyond the cap and 400/413/414 for the rest; root is served throughout."""
    short_tmp.chmod(0o755)
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id, scope=FULL)
    cfg.write_text(cfg.read_text().replace('path = "agent.sock"', 'path = "agent.sock"\nmax_connections_per_uid = 20'))
    d = daemons(cfg)
    pair(d, dev_server)
    abuser = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--groups=0",
                             *DAEMON_PYTHON, "-c", ABUSER, d.socket, "50"],
                            capture_output=True, text=True, timeout=60)
    assert abuser.returncode == 0, abuser.stderr
    assert int(abuser.stdout) == 30  # 50 connections, 20 allowed for that uid
    with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket), base_url="http://devicelink") as root:
        assert root.get("/v1/token").status_code == 200
    assert d.proc.poll() is None
    assert any("refusing" in line and "65534" in line for line in d.log)
