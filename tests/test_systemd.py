"""systemd integration: sd_notify, socket activation and the watchdog against real sockets and
real child processes; the daemon under ``systemd-socket-activate``; the unit files through this
machine's ``systemd-analyze``, ``systemd-sysusers`` and ``systemd-tmpfiles``.

What these cannot show (no systemd as PID 1 here) is the hardened unit running under the service
manager; docs/systemd.md says how that was checked by hand."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from devicelink import config, systemd
from devicelink.ipc.client import DEFAULT_SOCKET_PATH
from devicelink.tokens import keys
from tests.conftest import DAEMON_PYTHON, Daemon, write_config

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SERVICE, SOCKET = UNITS / "devicelink.service", UNITS / "devicelink.socket"
DROP_INS = sorted((UNITS / "drop-ins").glob("*.conf"))
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: What systemd-analyze security may score the unit (and the unit with each shipped drop-in) at most.
MAX_EXPOSURE = 1.5


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def notify_socket(short_tmp, monkeypatch):
    """A bound datagram socket standing in for systemd's, named by NOTIFY_SOCKET."""
    path = str(short_tmp / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


def receive_until(sock: socket.socket, wanted: str, seen: list[str] | None = None) -> list[str]:
    """Datagrams until one has the line ``wanted`` (each recv waits at most the socket's timeout)."""
    seen = [] if seen is None else seen
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.splitlines():
            return seen


# -- sd_notify ----------------------------------------------------------------------------

def test_notify_sends_one_datagram_per_message(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=pairing")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=pairing"
    assert systemd.notify("STOPPING=1")
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_notify_abstract_namespace(monkeypatch):
    name = f"devicelink-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_a_manager_is_a_no_op(monkeypatch, short_tmp):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "nobody-listens"))
    assert systemd.notify("READY=1") is False  # logged at debug level, never raised


# -- sd_listen_fds, in child processes (fd 3 and LISTEN_PID belong to a process of their own) --

PROBE = r"""
import fcntl, json, os, subprocess, sys
from devicelink import systemd

def probe(unset=True):
    got = systemd.listen_fds_with_names(unset)
    return {"sockets": [{"name": name, "fd": s.fileno(), "family": s.family.name, "type": s.type.name,
                         "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                         "address": os.fsdecode(s.getsockname())} for name, s in got],
            "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}}

mode = sys.argv[1] if len(sys.argv) > 1 else ""
result = {}
if mode == "spawn":  # a child that inherited the variables and the fd, before we looked at them
    child = subprocess.run([sys.executable, __file__], pass_fds=(3,), capture_output=True, text=True, check=True)
    result["child"] = json.loads(child.stdout)
result.update(probe(unset=mode != "keep"))
print(json.dumps(result))
"""


@pytest.fixture
def probe(short_tmp):
    path = short_tmp / "probe.py"
    path.write_text(PROBE)
    return path


def activate(listen: list[str], names: list[str], argv: list[str], *, datagram: bool = False) -> list[str]:
    """``systemd-socket-activate`` (it passes on only the variables it is told to, hence the
    ``-E`` for each of ours). It binds, then waits for the first connection before it execs."""
    flags = [f"--listen={path}" for path in listen] + [f"--fdname={':'.join(names)}"]
    passed = [arg for name in os.environ for arg in ("-E", name)]
    return [tool("systemd-socket-activate"), *(["--datagram"] if datagram else []), *flags, *passed, *argv]


def run_activated(command: list[str], first: str, *, datagram: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc.stderr, r"Listening on")
        kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
        with socket.socket(socket.AF_UNIX, kind) as knock:  # what starts the service
            if datagram:
                knock.sendto(b"x", first)
            else:
                knock.connect(first)
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def wait_for_line(stream, pattern: str) -> None:
    for line in stream:
        if re.search(pattern, line):
            return
    raise AssertionError(f"no line matching {pattern!r}")


def test_listen_fds_takes_the_activated_socket(short_tmp, probe):
    path = str(short_tmp / "agent.sock")
    result = run_activated(activate([path], ["agent"], [*DAEMON_PYTHON, str(probe)]), path)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["sockets"] == [{"name": "agent", "fd": 3, "family": "AF_UNIX", "type": "SOCK_STREAM",
                               "cloexec": True, "address": path}]
    assert got["env"] == dict.fromkeys(LISTEN_VARS)  # unset, so no child of ours sees them


def test_listen_fds_several_sockets_in_order_with_names(short_tmp, probe):
    paths = [str(short_tmp / "a.sock"), str(short_tmp / "b.sock")]
    result = run_activated(activate(paths, ["agent", "extra"], [*DAEMON_PYTHON, str(probe), "keep"]), paths[0])
    got = json.loads(result.stdout)
    assert [(s["name"], s["fd"], s["address"]) for s in got["sockets"]] == [("agent", 3, paths[0]),
                                                                           ("extra", 4, paths[1])]
    assert got["env"]["LISTEN_FDS"] == "2"  # unset_environment=False keeps them


def test_listen_fds_are_not_for_a_child_that_inherited_them(short_tmp, probe):
    """LISTEN_PID names the activated process; a process it spawned gets nothing and its
    variables are cleared, so they do not travel further."""
    path = str(short_tmp / "agent.sock")
    result = run_activated(activate([path], ["agent"], [*DAEMON_PYTHON, str(probe), "spawn"]), path)
    got = json.loads(result.stdout)
    assert got["child"] == {"sockets": [], "env": dict.fromkeys(LISTEN_VARS)}
    assert [s["fd"] for s in got["sockets"]] == [3]


#: Puts the fd given as argv[1] at fd 3, sets LISTEN_PID to this pid unless the test set one, and
#: execs the rest of argv: the pid stays the same, as under systemd.
AS_ACTIVATED = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
                "os.environ.setdefault('LISTEN_PID', str(os.getpid())); os.execvp(sys.argv[2], sys.argv[2:])")


@pytest.mark.parametrize("variables, fd3, complaint", [
    ({"LISTEN_FDS": "one"}, "socket", "not numbers"),
    ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "socket", "not numbers"),
    ({"LISTEN_FDS": "-1"}, "socket", "makes no sense"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "agent"}, "socket", "1 names for 2 fds"),
    ({"LISTEN_FDS": "3"}, "socket", "fd 4: Bad file descriptor"),
    ({"LISTEN_FDS": "1"}, "/dev/null", "is not a socket"),
])
def test_listen_fds_refuses_garbage_with_a_log_line(short_tmp, probe, variables, fd3, complaint):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held, open(os.devnull, "rb") as null:
        held.bind(str(short_tmp / "held.sock"))
        held.listen()
        fd = held.fileno() if fd3 == "socket" else null.fileno()
        env = {k: v for k, v in os.environ.items() if k not in LISTEN_VARS}
        result = subprocess.run([sys.executable, "-c", AS_ACTIVATED, str(fd), *DAEMON_PYTHON, str(probe)],
                                pass_fds=(fd,), env={**env, **variables}, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sockets": [], "env": dict.fromkeys(LISTEN_VARS)}
    assert complaint in result.stderr


def test_listen_fds_outside_socket_activation(monkeypatch):
    for name in LISTEN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == []
    assert systemd.activated_socket(DEFAULT_SOCKET_PATH) is None


ACTIVATED = r"""
import sys
from devicelink import systemd
from devicelink.errors import ConfigError
try:
    sock = systemd.activated_socket(sys.argv[1])
except ConfigError as exc:
    print("ConfigError:", exc)
else:
    print(sock.getsockname() if sock else None)
"""


def test_activated_socket_of_the_wrong_kind_is_a_config_error(short_tmp):
    path = str(short_tmp / "agent.sock")
    result = run_activated(activate([path], ["agent"], [*DAEMON_PYTHON, "-c", ACTIVATED, path], datagram=True),
                           path, datagram=True)
    assert result.stdout.startswith("ConfigError: socket activation: systemd passed agent (AF_UNIX, SOCK_DGRAM)")
    assert "ListenStream=/run/devicelink/agent.sock" in result.stdout


def test_activated_socket_picks_the_stream_and_drops_extras(short_tmp):
    paths = [str(short_tmp / "agent.sock"), str(short_tmp / "other.sock")]
    result = run_activated(activate(paths, ["agent", "other"], [*DAEMON_PYTHON, "-c", ACTIVATED, paths[0]]), paths[0])
    assert result.stdout.strip() == paths[0]
    assert f"ignoring extra socket other ({paths[1]})" in result.stderr
    assert "[socket] path is" not in result.stderr  # the unit and the config agree: no warning


# -- watchdog -------------------------------------------------------------------------------

def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))  # meant for our parent
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for garbage in ("soon", "0", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", garbage)
        assert systemd.watchdog_interval() is None


def test_watchdog_pings_from_the_event_loop(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # 20 ms: a ping every 10 ms
    interval = systemd.watchdog_interval()
    assert interval == 0.02

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        notify_socket.setblocking(False)
        task = asyncio.create_task(systemd.watchdog(interval))
        try:
            return [await asyncio.wait_for(loop.sock_recv(notify_socket, 64), 10) for _ in range(3)]
        finally:
            task.cancel()

    assert asyncio.run(main()) == [b"WATCHDOG=1"] * 3


# -- the daemon under systemd-socket-activate -------------------------------------------------

class ActivatedDaemon(Daemon):
    """`devicelink run` as systemd starts it from devicelink.socket: the socket is bound before the
    daemon exists, the first connection starts it, and READY=1 / STATUS= / WATCHDOG=1 go to a
    NOTIFY_SOCKET."""

    def __init__(self, config: Path, listen: str, notify: str, env: dict[str, str]) -> None:
        super().__init__(config, env)
        self.socket = listen
        self.first: socket.socket | None = None
        self.env["NOTIFY_SOCKET"] = notify  # Daemon drops an inherited one; this one is ours

    def start(self) -> "ActivatedDaemon":
        command = [tool("systemd-socket-activate"), f"--listen={self.socket}", "--fdname=agent",
                   *[arg for name in self.env for arg in ("-E", name)],
                   *DAEMON_PYTHON, "-m", "devicelink", "--config", str(self.config), "run"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                                     text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._out.start()
        self.wait_for(r"Listening on .* as 3")
        self.first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.first.connect(self.socket)  # queued in the backlog until the daemon accepts it
        self.wait_for(r"devicelink ready on")
        self._cursor = 0
        return self


def test_daemon_serves_the_activated_socket_and_tells_systemd(short_tmp, dev_server, notify_socket):
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    configured, activated = short_tmp / "agent.sock", str(short_tmp / "activated.sock")
    daemon = ActivatedDaemon(cfg, activated, os.environ["NOTIFY_SOCKET"], {"WATCHDOG_USEC": "200000"})
    try:
        daemon.start()
        ready = receive_until(notify_socket, "READY=1")[-1].splitlines()
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=")  # one datagram: the state with it
        # The unit's socket wins over [socket] path, and the log names both.
        warning = f"systemd passed {activated} but [socket] path is {configured}"
        assert any(warning in line for line in daemon.log)  # logged before "ready"
        assert not configured.exists()

        transport = httpx.HTTPTransport(uds=activated)
        with httpx.Client(transport=transport, base_url="http://devicelink", timeout=30) as client:
            code = daemon.wait_for(r"pairing: enter code (\S+)")
            assert client.get("/v1/health").json() == {"healthy": True}
            assert client.get("/v1/status").json()["state"] == "pairing"
            # The connection that started the daemon is answered too: nothing was lost.
            daemon.first.sendall(b"GET /v1/health HTTP/1.1\r\nhost: devicelink\r\nconnection: close\r\n\r\n")
            daemon.first.settimeout(30)
            assert daemon.first.recv(4096).startswith(b"HTTP/1.1 200 ")

            dev_server.approve(code.group(1), subject="alice", name="Alice Example")
            receive_until(notify_socket, "STATUS=paired")
            assert client.get("/v1/status").json()["state"] == "paired"

        watchdog = receive_until(notify_socket, "WATCHDOG=1")  # every 0.1 s from the event loop
        receive_until(notify_socket, "WATCHDOG=1", watchdog)
        daemon.proc.send_signal(signal.SIGTERM)
        receive_until(notify_socket, "STOPPING=1")
        assert daemon.proc.wait(timeout=30) == 0
        assert stat.S_ISSOCK(os.lstat(activated).st_mode)  # systemd's file: the daemon leaves it alone
    finally:
        if daemon.first is not None:
            daemon.first.close()
        daemon.stop()


# -- the unit files -------------------------------------------------------------------------

def directives(*paths: Path) -> dict[str, list[str]]:
    """Key -> values, in order, over the files (systemd's own merge for list settings)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
                key, value = line.split("=", 1)
                found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_units_agree_with_the_contracts():
    sock, service = directives(SOCKET), directives(SERVICE, *DROP_INS)
    assert sock["ListenStream"] == [DEFAULT_SOCKET_PATH] == [str(config.SocketConfig().path)]
    assert sock["SocketMode"] == ["0660"] and sock["SocketGroup"] == ["devicelink"]
    # A RuntimeDirectory= is deleted when the service stops: the socket must not be in one.
    for name in service.get("RuntimeDirectory", []):
        assert not (DEFAULT_SOCKET_PATH + "/").startswith(f"/run/{name}/"), name
    assert service["Type"] == ["notify"] and service["User"] == ["devicelink"]
    assert service["StateDirectory"] == ["devicelink"] and service["StateDirectoryMode"] == ["0700"]
    assert str(config.StorageConfig().state_dir) == "/var/lib/devicelink"
    assert "DynamicUser" not in service and "PrivateUsers" not in service  # SO_PEERCRED must see real uids
    credential = f"{keys.CREDENTIAL_NAME}:{keys.CREDSTORE_PATH}"
    assert service["LoadCredentialEncrypted"] == [credential]
    assert service["LimitCORE"] == ["0"]  # no core file with the key and tokens in it (issue 10, item 3)


def test_systemd_analyze_verify(short_tmp):
    """The units as shipped: the one complaint allowed is /usr/bin/devicelink missing on this
    machine. Then again with every shipped drop-in and a venv-style ExecStart= drop-in, which
    must pass without a word (an unknown or misspelt directive is a warning, not an error)."""
    analyze = tool("systemd-analyze")
    shipped = subprocess.run([analyze, "verify", str(SERVICE), str(SOCKET)], capture_output=True, text=True,
                             timeout=120)
    complaints = [line for line in shipped.stderr.splitlines() if "devicelink" in line]
    allowed = "Command /usr/bin/devicelink is not executable"
    assert all(allowed in line for line in complaints), shipped.stderr
    if not os.path.exists("/usr/bin/devicelink"):
        assert shipped.returncode != 0 and complaints

    units = short_tmp / "units"
    dropins = units / "devicelink.service.d"
    dropins.mkdir(parents=True)
    shutil.copy(SERVICE, units)
    shutil.copy(SOCKET, units)
    for conf in DROP_INS:
        shutil.copy(conf, dropins)
    (dropins / "venv.conf").write_text(f"[Service]\nExecStart=\nExecStart={sys.executable} -m devicelink run\n")
    result = subprocess.run([analyze, "verify", str(units / SERVICE.name), str(units / SOCKET.name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "devicelink" in line] == []


@pytest.mark.parametrize("drop_in", [None, *[conf.name for conf in DROP_INS]])
def test_systemd_analyze_security(short_tmp, drop_in):
    analyze = tool("systemd-analyze")
    shutil.copy(SERVICE, short_tmp)
    if drop_in:
        (short_tmp / "devicelink.service.d").mkdir()
        shutil.copy(UNITS / "drop-ins" / drop_in, short_tmp / "devicelink.service.d")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(short_tmp / SERVICE.name)],
                            capture_output=True, text=True, timeout=120)
    score = re.search(r"Overall exposure level for devicelink\.service: (\d+\.\d+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, result.stdout


def test_sysusers_and_tmpfiles(short_tmp):
    """The real tools into a scratch root: the user and group, then the directories."""
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = short_tmp / "root"
    for kind in ("sysusers.d", "tmpfiles.d"):
        (root / "usr/lib" / kind).mkdir(parents=True)
        shutil.copy(UNITS / kind / "devicelink.conf", root / "usr/lib" / kind)
    (root / "etc").mkdir()
    subprocess.run([sysusers, f"--root={root}"], check=True, capture_output=True, timeout=60)
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = users["devicelink"]
    assert int(uid) < 1000 and home == "/var/lib/devicelink" and shell.endswith("/nologin")
    groups = {line.split(":")[0]: line.split(":")[2] for line in (root / "etc/group").read_text().splitlines()}
    assert groups["devicelink"] == gid

    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to chown into the scratch root")
    subprocess.run([tmpfiles, f"--root={root}", "--create"], check=True, capture_output=True, timeout=60)
    state = (root / "var/lib/devicelink").stat()
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o700, int(uid), int(gid))
    clients = (root / "etc/devicelink/clients.d").stat()
    assert (stat.S_IMODE(clients.st_mode), clients.st_uid) == (0o755, 0)


# -- core dumps (issue 10, item 3) --------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the daemon as another user")
def test_the_running_daemon_cannot_dump_core(short_tmp, dev_server, daemons, monkeypatch):
    """The real daemon, started by the fixture as ``nobody``: the kernel gives the files in a
    process's /proc/<pid>/ to root exactly when it is not dumpable (proc(5), PR_SET_DUMPABLE),
    and /proc/<pid>/status says the process itself still runs as nobody. Its core limit is 0."""
    short_tmp.chmod(0o700)
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)  # root's, 0644: trusted
    os.chown(short_tmp, 65534, 65534)  # the state dir and the socket are nobody's to make
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *DAEMON_PYTHON]
    monkeypatch.setitem(Daemon.start.__globals__, "DAEMON_PYTHON", as_nobody)
    d = daemons(cfg)
    status = proc_status(d.proc.pid)  # setpriv execs the daemon: same pid
    assert status["Name"].startswith("python"), status["Name"]
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    for name in ("status", "environ", "mem"):  # nobody's while it is dumpable
        assert os.stat(f"/proc/{d.proc.pid}/{name}").st_uid == 0, name
    with open(f"/proc/{d.proc.pid}/limits") as f:
        [core] = [line.split()[4:6] for line in f if line.startswith("Max core file size")]
    assert core == ["0", "0"]
    assert not [line for line in d.log if "core dumps off" in line]


def test_a_failure_to_forbid_core_dumps_is_logged_not_fatal(monkeypatch, caplog):
    import ctypes

    from devicelink import daemon

    def no_libc(*args, **kwargs):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    with caplog.at_level("WARNING", logger="devicelink.daemon"):
        assert daemon.forbid_core_dumps() is False
    [record] = caplog.records
    assert record.getMessage().startswith("cannot turn core dumps off (prctl PR_SET_DUMPABLE: libc.so.6: cannot open")
    assert "LimitCORE=0" in record.getMessage()
