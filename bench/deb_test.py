"""The .deb on a clean Debian 12 system booted with systemd: install, pair, serve, upgrade, purge.

    .venv/bin/python bench/deb_test.py dist/devicelink_0.1.0_all.deb dist/devicelink_0.1.0+ci1_all.deb
        [--wheel dist/devicelink-0.1.0-py3-none-any.whl] [--json FILE] [--keep] [--cache DIR]
        [--mirror URL] [--runs N]

As root on a Debian 12 host (.ci/deb runs it in CI). The second package is a
newer build of the same tree (scripts/build-deb --version), for the upgrade.

1. A Bookworm root from ``mmdebstrap --variant=minbase`` with systemd, dbus and
   curl, from the Debian mirror this machine's apt uses. It is cached as a
   tarball under ``--cache`` (default /var/cache/devicelink-ci), named by a hash
   of what went into it; an empty cache builds it (about 20 s). Each run unpacks
   a fresh copy. apt's and pip's downloads are cached there too (bind-mounted),
   so the dependencies come from the network once. One run at a time holds the
   cache (a lock file in it).
2. ``systemd-nspawn --boot`` with the host's network namespace: systemd is PID 1
   in the container, and 127.0.0.1 is the host's, where this script runs the
   development server (devicelink_sim, from the venv) and plays the phone. No
   machined is needed on the host (``--register=no --keep-unit``); commands run
   in the container through ``nsenter``.
3. Inside, as an owner would: ``apt-get install ./devicelink_*.deb``; nothing
   starts and nothing fails before a config exists; write one config file; the
   socket unit starts the daemon on the first connection; the phone approves the
   code; doctor passes; an app's installer adds a clients.d file, the group and a
   reload, then the app's user gets a token with ``curl --unix-socket`` and
   another user is refused; a reboot starts the daemon
   paired; ``apt-get install --reinstall``, an upgrade, and remove + install keep
   the grant (no new device authorization at the server); ``apt-get purge``
   deletes the state and the config and leaves other packages' files.
4. Numbers: .deb size, install time, start -> ready and RSS (paired; after 1,000
   tokens served from memory; after its first exchange with the server, which
   loads httpx) of the installed daemon under systemd, and the
   latency of ``devicelink token`` from the installed package (bench/deb_inside.py).
5. With ``--wheel``: docs/debian.md's venv and pipx recipes, each in a fresh root
   (dependencies from PyPI, the units from systemd/, the ExecStart= drop-in).

Each check prints ``ok`` or ``FAIL``; the last line is ``deb: N passed, M failed``
and the exit code is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
#: What the root holds besides minbase: systemd as PID 1 (systemd-sysv), dbus as on any
#: Raspberry Pi OS, curl for the socket check. Not python3: the package pulls it in.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "curl")
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"}
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CI_DIR = "/srv/ci"  # in the container: the .debs and deb_inside.py (not /tmp: nspawn mounts a tmpfs there)
APP_USER = "kiosk"


def log(message: str) -> None:
    print(message, flush=True)


# -- the root ----------------------------------------------------------------------------------


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses for the main archive (not -security)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.exists():
            match = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s.*\bmain\b", path.read_text(), re.M)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_host_tools() -> None:
    missing = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(missing)} on the host")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def root_tarball(cache: Path, mirror: str) -> tuple[Path, float | None]:
    """The cached root, built when missing: (path, seconds it took to build, or None if cached)."""
    version = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout.strip()
    recipe = json.dumps({"suite": SUITE, "mirror": mirror, "variant": "minbase", "include": INCLUDE,
                         "mmdebstrap": version, "arch": os.uname().machine})
    tarball = cache / f"{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.tar"
    if tarball.exists():
        return tarball, None
    cache.mkdir(parents=True, exist_ok=True)
    log(f"building the {SUITE} root ({', '.join(INCLUDE)}) from {mirror} into {tarball}")
    started = time.monotonic()
    partial = tarball.with_suffix(".tar.partial")
    done = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(INCLUDE)}", SUITE, str(partial),
                           mirror], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"deb_test: mmdebstrap failed:\n{done.stderr[-3000:]}")
    partial.rename(tarball)  # only a whole root is ever cached
    for old in cache.glob(f"{SUITE}-*.tar"):  # roots of other recipes: not used again
        if old != tarball:
            old.unlink()
            old.with_name(f"{old.stem}.recipe.json").unlink(missing_ok=True)
    (cache / f"{tarball.stem}.recipe.json").write_text(recipe + "\n")
    return tarball, time.monotonic() - started


# -- the container -----------------------------------------------------------------------------


class Container:
    """A booted copy of the root: ``systemd-nspawn --boot``, commands through nsenter."""

    def __init__(self, root: Path, binds: dict[Path, str], log_path: Path) -> None:
        self.root, self.binds, self.log_path = root, binds, log_path
        self.name = f"devicelink-ci-{os.getpid()}"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, timeout: float = 120) -> float:
        started = time.monotonic()
        binds = [f"--bind={host}:{inside}" for host, inside in self.binds.items()]
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", f"--directory={self.root}", "--boot", "--register=no", "--keep-unit",
             "--console=passive", f"--machine={self.name}", *binds],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()
        deadline = started + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise SystemExit(f"deb_test: systemd-nspawn exited {self.proc.returncode}: "
                                 f"{self.log_path.read_text()[-2000:]}")
            self.leader = self._find_leader()
            if time.monotonic() > deadline:
                raise SystemExit("deb_test: the container's init did not appear")
            time.sleep(0.05)
        # is-system-running --wait needs the manager's bus: retry until it is up.
        while True:
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"deb_test: the container did not boot: {state!r}")
            time.sleep(0.2)
        return time.monotonic() - started

    def _find_leader(self) -> int:
        """The container's PID 1: the child of systemd-nspawn that is PID 1 in its namespace."""
        assert self.proc
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("PPid") == str(self.proc.pid) and fields.get("NSpid", "").split()[-1:] == ["1"]:
                return int(entry.name)
        return 0

    def sh(self, script: str, *, user: str | None = None, check: bool = True, timeout: float = 300,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``sh -c script`` in the container (as ``user`` through runuser), with a clean environment."""
        argv = ["sh", "-c", script]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        variables = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive",
                     **(env or {})}
        full = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--pid", "--cgroup", "--",
                "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise Failed(f"`{script}`{f' as {user}' if user else ''} exited {done.returncode}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn: an orderly shutdown of the container
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.leader = 0
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


class Failed(Exception):
    """A check that did not hold."""


class Stop(Exception):
    """A check failed: the ones after it build on it, so the scenario ends there."""


# -- the checks --------------------------------------------------------------------------------


class Run:
    def __init__(self) -> None:
        self.passed, self.failed = 0, 0
        self.numbers: dict[str, object] = {}

    @contextlib.contextmanager
    def check(self, what: str):
        started = time.monotonic()
        try:
            yield
        except (Failed, AssertionError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
            self.failed += 1
            log(f"FAIL  {what} ({time.monotonic() - started:.1f} s): {exc}")
            raise Stop from exc
        else:
            self.passed += 1
            log(f"ok    {what} ({time.monotonic() - started:.1f} s)")


def wait_status(box: Container, want, timeout: float = 60, exe: str = "devicelink") -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        done = box.sh(f"{exe} status --json", check=False)
        if done.returncode == 0:
            last = json.loads(done.stdout)
            if want(last):
                return last
        time.sleep(0.2)
    raise Failed(f"status did not come: last {last}")


def unit(box: Container, name: str, prop: str) -> str:
    return box.sh(f"systemctl show --property={prop} --value {name}").stdout.strip()


def write_config(box: Container, issuer: str, client_id: str) -> None:
    """The README's config file, with the dev server's issuer (http:// on loopback only)."""
    config = (f'[provider]\nissuer = "{issuer}"\nclient_id = "{client_id}"\n'
              'scope = "openid profile offline_access"\nallow_insecure_http = true\n\n'
              '[display]\ndriver = "terminal"\n')
    box.sh(f"printf %s {shlex.quote(config)} | tee /etc/devicelink/config.toml > /dev/null")


def add_app(box: Container) -> None:
    """What an app's installer does (README): a clients.d file, its user in the group, a reload."""
    app = f'[[client]]\nname = "player"\nuser = "{APP_USER}"\nscope = "openid profile"\n'
    box.sh(f"printf %s {shlex.quote(app)} | tee /etc/devicelink/clients.d/player.toml > /dev/null && "
           f"usermod -aG devicelink {APP_USER} && systemctl reload devicelink")


def token_for(box: Container, user: str) -> subprocess.CompletedProcess:
    return box.sh("curl -s -w '\\n%{http_code}' --unix-socket /run/devicelink/agent.sock http://devicelink/v1/token",
                  user=user, check=False)


def served_token(box: Container, server) -> str:
    done = token_for(box, APP_USER)
    body, _, code = done.stdout.rpartition("\n")
    if code != "200":
        raise Failed(f"GET /v1/token as {APP_USER}: {code} {body[:300]}")
    token = json.loads(body)["access_token"]
    if server.access_token_info(token) is None:
        raise Failed("the served token is not one the server knows as valid")
    return token


def assert_still_paired(box: Container, server, authorizations: int, before_pid: str | None = None) -> None:
    current = wait_status(box, lambda s: s["state"] in ("paired", "refreshing", "offline"), timeout=60)
    if current.get("account", {}).get("sub") != "alice":
        raise Failed(f"not paired as alice: {current}")
    served_token(box, server)
    if server.stats.device_authorizations != authorizations:
        raise Failed(f"the device asked for a new code: {server.stats.device_authorizations} device "
                     f"authorizations, {authorizations} before")
    if before_pid is not None and unit(box, "devicelink.service", "MainPID") == before_pid:
        raise Failed(f"the daemon was not restarted (MainPID {before_pid})")


def median(values: list[float]) -> float:
    return statistics.median(values)


def scenario(run: Run, box: Container, debs: list[Path], server, runs: int) -> None:
    first, newer = (f"{CI_DIR}/{deb.name}" for deb in debs)
    version_of = {first: debs[0].name.split("_")[1], newer: debs[1].name.split("_")[1]}

    with run.check("apt-get install ./devicelink_*.deb into a clean root"):
        box.sh("apt-get update -q", timeout=300)
        before = int(box.sh("dpkg-query -W -f='${Package}\\n' | wc -l").stdout)
        started = time.monotonic()
        box.sh(f"apt-get install -y -q {first}", timeout=600)
        run.numbers["install_s"] = time.monotonic() - started
        installed = box.sh("dpkg-query -W -f='${Version}' devicelink").stdout
        assert installed == version_of[first], installed
        depends = box.sh("dpkg-query -W -f='${Depends}' devicelink").stdout
        assert "python3-httpx" in depends and "python3-cryptography" in depends, depends
        after = int(box.sh("dpkg-query -W -f='${Package}\\n' | wc -l").stdout)
        run.numbers["packages_installed"] = after - before  # devicelink and what it pulled in

    with run.check("install made the user, the state and config directories, bytecode, man page, completion, fonts"):
        box.sh("getent passwd devicelink && getent group devicelink")
        box.sh("test \"$(stat -c '%a %U %G' /var/lib/devicelink)\" = '700 devicelink devicelink'")
        box.sh("test \"$(stat -c '%a %U' /etc/devicelink/clients.d)\" = '755 root'")
        box.sh("ls /usr/lib/python3/dist-packages/devicelink/__pycache__/cli.cpython-3*.pyc "
               "/usr/lib/python3/dist-packages/devicelink/ipc/__pycache__/server.cpython-3*.pyc")
        # The bash completion, sourced as bash-completion would: `devicelink rekey --to <TAB>`.
        done = box.sh("bash -c '. /usr/share/bash-completion/completions/devicelink; "
                      "COMP_WORDS=(devicelink rekey --to \"\"); COMP_CWORD=3; _devicelink; echo ${COMPREPLY[*]}'")
        assert done.stdout.split() == ["file", "credential"], done.stdout
        box.sh("test -s /usr/share/man/man8/devicelink.8.gz && test -x /usr/bin/devicelink "
               "&& test ! -e /usr/bin/devicelink-sim")
        box.sh("test -s /usr/share/doc/devicelink/examples/config.toml")
        # The fonts are links to fonts-dejavu-core's; Pillow (Recommends) draws with them.
        box.sh("python3 -c 'from devicelink.display import typeface; typeface.font(12, bold=True).getbbox(\"0O\")'")

    with run.check("without a config nothing starts and nothing fails; apps hear exit 5"):
        for name in ("devicelink.socket", "devicelink.service"):
            assert box.sh(f"systemctl is-enabled {name}").stdout.strip() == "enabled", name
            assert unit(box, name, "ActiveState") == "inactive", name
            assert unit(box, name, "ConditionResult") == "no", name
        assert box.sh("systemctl is-failed devicelink.socket devicelink.service", check=False).returncode != 0
        done = box.sh("devicelink status", check=False)
        assert done.returncode == 5, (done.returncode, done.stderr)

    authorizations = server.stats.device_authorizations
    with run.check("one config file, then the socket unit starts the daemon on the first connection"):
        box.sh(f"useradd --create-home {APP_USER}")
        write_config(box, server.issuer, server.client_id)
        box.sh("systemctl start devicelink.socket")
        assert unit(box, "devicelink.service", "ActiveState") == "inactive"
        assert box.sh("stat -c '%a %U %G' /run/devicelink/agent.sock").stdout.split() == ["660", "root", "devicelink"]
        pairing = wait_status(box, lambda s: s["state"] == "pairing" and s.get("pairing"), timeout=60)
        assert unit(box, "devicelink.service", "ActiveState") == "active"
        assert unit(box, "devicelink.service", "SubState") == "running"
        user_code = pairing["pairing"]["user_code"]

    with run.check("the phone approves: the daemon pairs against the dev server outside"):
        server.approve(user_code)
        paired = wait_status(box, lambda s: s["state"] == "paired", timeout=60)
        assert paired["account"]["name"] == "Alice Example", paired
        assert server.stats.device_authorizations == authorizations + 1
        assert "paired" in unit(box, "devicelink.service", "StatusText")
        box.sh("test -s /var/lib/devicelink/state.bin && "
               "test \"$(stat -c '%a %U' /var/lib/devicelink/state.bin)\" = '600 devicelink'")
    authorizations = server.stats.device_authorizations

    with run.check("devicelink doctor passes"):
        done = box.sh("devicelink doctor", check=False, timeout=120)
        log("      " + done.stdout.strip().replace("\n", "\n      "))
        assert done.returncode == 0, done.stderr
        assert "FAIL" not in done.stdout

    with run.check(f"an app's clients.d file and systemctl reload: {APP_USER} gets a token with curl "
                   "--unix-socket; nobody is refused"):
        refused = token_for(box, APP_USER)
        assert refused.returncode != 0, f"{APP_USER} got a token before it was let in: {refused.stdout}"
        add_app(box)
        served_token(box, server)
        refused = token_for(box, "nobody")
        # nobody is not in the group devicelink: the socket itself is closed to it.
        assert refused.returncode != 0 or refused.stdout.rsplit("\n", 1)[-1] in ("403", "000"), refused.stdout
        box.sh("devicelink token > /dev/null", user=APP_USER)

    with run.check("a reboot starts the daemon at boot (enabled) with its grant"):
        box.poweroff()
        box.boot()
        wait = time.monotonic() + 60
        while unit(box, "devicelink.service", "ActiveState") != "active":
            if time.monotonic() > wait:
                raise Failed("devicelink.service did not start at boot")
            time.sleep(0.2)
        assert_still_paired(box, server, authorizations)

    measure(run, box, runs)

    with run.check("apt-get install --reinstall restarts the daemon and keeps the grant"):
        pid = unit(box, "devicelink.service", "MainPID")
        box.sh(f"apt-get install -y -q --reinstall {first}", timeout=300)
        assert_still_paired(box, server, authorizations, before_pid=pid)

    with run.check("an upgrade to a newer build restarts the daemon and keeps the grant"):
        pid = unit(box, "devicelink.service", "MainPID")
        socket_since = unit(box, "devicelink.socket", "ActiveEnterTimestampMonotonic")
        started = time.monotonic()
        box.sh(f"apt-get install -y -q {newer}", timeout=300)
        run.numbers["upgrade_s"] = time.monotonic() - started
        version = box.sh("dpkg-query -W -f='${Version}' devicelink").stdout
        assert version == version_of[newer], version
        assert_still_paired(box, server, authorizations, before_pid=pid)
        # The socket kept listening through the upgrade: only the service restarted.
        since = unit(box, "devicelink.socket", "ActiveEnterTimestampMonotonic")
        assert since == socket_since, f"devicelink.socket was restarted ({socket_since} -> {since})"

    with run.check("apt-get remove stops it and keeps the grant; installing again serves it"):
        box.sh("apt-get remove -y -q devicelink", timeout=300)
        box.sh("test ! -e /usr/bin/devicelink && test ! -e /run/devicelink/agent.sock")
        assert unit(box, "devicelink.service", "ActiveState") in ("inactive", "")
        box.sh("test -s /var/lib/devicelink/state.bin && test -s /etc/devicelink/config.toml")
        box.sh(f"apt-get install -y -q {newer}", timeout=300)
        assert_still_paired(box, server, authorizations)

    with run.check("apt-get purge deletes the state and the config, keeps other packages' files"):
        box.sh("apt-get purge -y -q devicelink", timeout=300)
        box.sh("test ! -e /var/lib/devicelink && test ! -e /etc/devicelink/config.toml")
        box.sh("test -e /etc/devicelink/clients.d/player.toml")  # the app's, not ours
        box.sh("test ! -e /etc/systemd/system/sockets.target.wants/devicelink.socket && "
               "test ! -e /etc/systemd/system/multi-user.target.wants/devicelink.service && "
               "test ! -e /lib/systemd/system/devicelink.service && test ! -e /usr/lib/python3/dist-packages/devicelink")
        assert box.sh("dpkg-query -W -f='${Status}' devicelink", check=False).stdout.strip() in ("", "unknown ok not-installed")
        assert box.sh("systemctl is-failed devicelink.socket devicelink.service", check=False).returncode != 0


#: docs/debian.md's recipes without the package: what to install with apt, the install
#: command, and the ExecStart= of the drop-in.
RECIPES = {
    "venv": ("python3-venv", "python3 -m venv /opt/devicelink && /opt/devicelink/bin/pip install {wheel}",
             "/opt/devicelink/bin/devicelink"),
    "pipx": ("pipx", "PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install {wheel}",
             "/usr/local/bin/devicelink"),
}
UNITS_BY_HAND = """cd {ci}/systemd
install -m 0644 devicelink.service devicelink.socket /etc/systemd/system/
install -D -m 0644 sysusers.d/devicelink.conf /etc/sysusers.d/devicelink.conf
install -D -m 0644 tmpfiles.d/devicelink.conf /etc/tmpfiles.d/devicelink.conf
systemd-sysusers devicelink.conf && systemd-tmpfiles --create devicelink.conf
mkdir -p /etc/systemd/system/devicelink.service.d
printf '[Service]\\nExecStart=\\nExecStart={exe} run\\n' > /etc/systemd/system/devicelink.service.d/{kind}.conf
"""


def recipe(run: Run, box: Container, kind: str, wheel: str, server) -> None:
    """docs/debian.md's venv or pipx recipe in a clean root: the units from systemd/, the drop-in,
    one config file; then the daemon pairs, doctor passes, and the sandbox runs the venv's code."""
    packages, install, exe = RECIPES[kind]
    with run.check(f"{kind} recipe: install the wheel (dependencies from PyPI), the units and the drop-in"):
        box.sh(f"apt-get update -q && apt-get install -y -q --no-install-recommends {packages}", timeout=600)
        box.sh(install.format(wheel=f"{CI_DIR}/{wheel}"), timeout=600,
               env={"PIP_CERT": f"{CI_DIR}/ca-certificates.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        box.sh(UNITS_BY_HAND.format(ci=CI_DIR, exe=exe, kind=kind))
    with run.check(f"{kind} recipe: the units run it, it pairs, doctor passes"):
        write_config(box, server.issuer, server.client_id)
        box.sh("systemctl daemon-reload && systemctl enable --now devicelink.socket devicelink.service")
        pid = unit(box, "devicelink.service", "MainPID")
        cmdline = box.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
        assert exe in cmdline, cmdline
        pairing = wait_status(box, lambda s: s["state"] == "pairing" and s.get("pairing"), timeout=60, exe=exe)
        server.approve(pairing["pairing"]["user_code"])
        wait_status(box, lambda s: s["state"] == "paired", timeout=60, exe=exe)
        done = box.sh(f"{exe} doctor", check=False, timeout=120)
        assert done.returncode == 0 and "FAIL" not in done.stdout, done.stdout + done.stderr
        box.sh("curl -sf --unix-socket /run/devicelink/agent.sock http://devicelink/v1/token > /dev/null")


def measure(run: Run, box: Container, runs: int) -> None:
    inside = f"python3 {CI_DIR}/deb_inside.py"
    with run.check(f"measured start -> ready ({runs} restarts), RSS, token latency"):
        # A device whose clock NTP has synchronised, as systemd-timesyncd tells it (it does not
        # run in a container): otherwise every start refreshes the stored token before serving
        # it (docs/clock.md), which is a request to the server, not startup.
        box.sh("mkdir -p /run/systemd/timesync && touch /run/systemd/timesync/synchronized")
        # The grant was saved while the clock was not known to be right (the reboot before
        # this cleared /run): once the daemon sees the flag, the first token refreshes once
        # and saves the grant with a trusted clock, so that each restart below serves its
        # token from memory.
        wait_status(box, lambda s: s.get("clock_synced") is True, timeout=30)
        box.sh("curl -sf --unix-socket /run/devicelink/agent.sock http://devicelink/v1/token > /dev/null")
        restarted = box.sh("systemctl restart devicelink.service && journalctl --sync && "
                           "journalctl -o cat _PID=$(systemctl show -P MainPID devicelink.service)").stdout
        assert "restored the grant" in restarted and "not known to be synchronised" not in restarted, restarted
        started = json.loads(box.sh(f"{inside} startup --runs {runs}", timeout=600).stdout)
        # Root is the owner: it gets the grant's own token, served from memory. The app's
        # policy allows less than the grant, so its first token is a narrowed one from the
        # server (RFC 6749 section 6): the daemon's first HTTP exchange since the start,
        # which loads httpx, as the hourly refresh would anyway.
        from_memory = json.loads(box.sh(f"{inside} load --requests 1000", timeout=300).stdout)
        serving = json.loads(box.sh(f"{inside} rss").stdout)
        json.loads(box.sh(f"{inside} load --requests 1000", user=APP_USER, timeout=300).stdout)
        after = json.loads(box.sh(f"{inside} rss").stdout)
        assert after["pid"] == serving["pid"] == started["pid"], "the daemon restarted under load"
        latency = json.loads(box.sh(f"{inside} latency --runs 30", user=APP_USER, timeout=600).stdout)
        run.numbers.update({
            "start_to_ready_ms": median(started["ready_ms"]),
            "start_to_ready_ms_min_max": [min(started["ready_ms"]), max(started["ready_ms"])],
            "start_to_health_ms": median(started["health_ms"]),
            "rss_paired_mib": median([r["VmRSS"] for r in started["rss_kib"]]) / 1024,
            "rss_serving_mib": serving["rss_kib"]["VmRSS"] / 1024,
            "rss_after_exchange_mib": after["rss_kib"]["VmRSS"] / 1024,
            "rss_after_exchange_anon_file_mib": [after["rss_kib"]["RssAnon"] / 1024,
                                                 after["rss_kib"]["RssFile"] / 1024],
            "token_requests_per_s": from_memory["requests"] / from_memory["seconds"],
            "devicelink_token_ms": median(latency["devicelink token"]),
            "curl_token_ms": median(latency["curl"]),
            "python3_pass_ms": median(latency["python3 -c pass"]),
        })


def report(run: Run) -> None:
    n = run.numbers
    rows = [
        ("deb size", "deb_kib", "{:.0f} KiB"),
        ("root build (cold cache)", "root_build_s", "{:.1f} s"),
        ("apt-get install (clean root, deps included)", "install_s", "{:.1f} s"),
        ("  packages it installed (devicelink included)", "packages_installed", "{}"),
        ("apt-get install (upgrade)", "upgrade_s", "{:.1f} s"),
        ("start -> ready (systemctl start, median)", "start_to_ready_ms", "{:.0f} ms"),
        ("start -> first /v1/health (median)", "start_to_health_ms", "{:.0f} ms"),
        ("RSS paired, after start (median)", "rss_paired_mib", "{:.1f} MiB"),
        ("RSS serving, after 1,000 tokens from memory", "rss_serving_mib", "{:.1f} MiB"),
        ("RSS after the first exchange (httpx loaded)", "rss_after_exchange_mib", "{:.1f} MiB"),
        ("GET /v1/token on one connection", "token_requests_per_s", "{:.0f} /s"),
        ("devicelink token (median)", "devicelink_token_ms", "{:.1f} ms"),
        ("curl --unix-socket (median)", "curl_token_ms", "{:.1f} ms"),
        ("python3 -c pass (median)", "python3_pass_ms", "{:.1f} ms"),
    ]
    log("\n== the installed package (Debian 12, systemd 252, this machine)")
    for label, key, fmt in rows:
        if n.get(key) is not None:
            log(f"  {label:46} {fmt.format(n[key])}")


@contextlib.contextmanager
def booted(tarball: Path, cache: Path, scratch: Path, name: str, files: list[Path]):
    """A fresh copy of the cached root with ``files`` in /srv/ci, booted; powered off after."""
    root = scratch / name
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], check=True)
    ci = root / CI_DIR.lstrip("/")
    ci.mkdir(parents=True)
    for path in files:
        (shutil.copytree if path.is_dir() else shutil.copy)(path, ci / path.name)
    # The host's CA bundle, for pip in the recipes (a proxy's CA, where there is one, is in it).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ci / "ca-certificates.crt")
    binds = {cache / "apt-archives": "/var/cache/apt/archives", cache / "pip": "/root/.cache/pip"}
    for host in binds:
        host.mkdir(parents=True, exist_ok=True)
    (cache / "apt-archives" / "partial").mkdir(exist_ok=True)
    box = Container(root, binds, scratch / f"{name}.log")
    try:
        box.boot()
        yield box
    finally:
        box.poweroff()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deb", type=Path)
    parser.add_argument("newer", type=Path, help="a newer build of the same tree, for the upgrade")
    parser.add_argument("--wheel", type=Path, help="the project's wheel: also check docs/debian.md's venv and "
                        "pipx recipes with it (their dependencies come from PyPI)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DEVICELINK_CI_CACHE", "/var/cache/devicelink-ci")))
    parser.add_argument("--mirror", default=os.environ.get("DEVICELINK_DEBIAN_MIRROR") or None)
    parser.add_argument("--runs", type=int, default=8, help="restarts for start -> ready")
    parser.add_argument("--keep", action="store_true", help="keep the scratch roots and the containers' logs")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("deb_test: needs root (mmdebstrap, systemd-nspawn)")

    from devicelink_sim.authserver import DevServer

    run = Run()
    run.numbers["deb_kib"] = args.deb.stat().st_size / 1024
    ensure_host_tools()
    # One run at a time per cache: the root is built there, and apt and pip in the
    # containers lock the caches bind-mounted from it (other worktrees on this machine).
    args.cache.mkdir(parents=True, exist_ok=True)
    lock = open(args.cache / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"waiting for another run holding {args.cache / 'lock'}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    mirror = args.mirror or apt_mirror()
    tarball, built = root_tarball(args.cache, mirror)
    run.numbers["root_build_s"] = built
    scratch = Path(tempfile.mkdtemp(prefix="devicelink-deb-", dir="/var/tmp"))
    log(f"root {tarball.name} ({'built' if built else 'cached'}), mirror {mirror}, scratch {scratch}")
    try:
        with DevServer(interval=1) as server:
            files = [args.deb, args.newer, ROOT / "bench" / "deb_inside.py"]
            with booted(tarball, args.cache, scratch, "deb", files) as box:
                try:
                    scenario(run, box, [args.deb, args.newer], server, args.runs)
                except Stop:
                    log("(the checks after a failed one build on it: stopped there)")
            if args.wheel:
                for kind in RECIPES:
                    with booted(tarball, args.cache, scratch, kind, [args.wheel, ROOT / "systemd"]) as box:
                        with contextlib.suppress(Stop):
                            recipe(run, box, kind, args.wheel.name, server)
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    report(run)
    if args.json:
        args.json.write_text(json.dumps(run.numbers, indent=2) + "\n")
    log(f"deb: {run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
