"""Startup time and memory of the real daemon, as a device would run it.

    .venv/bin/python bench/rss_startup.py [--python /usr/bin/python3] [--restarts 10] [--requests 1000]
                                          [--src DIR] [--against DIR] [--smaps] [--json]

This script runs in the project's venv (it needs the development server,
``devicelink_sim``); the daemon runs under ``--python`` (default: the venv's
interpreter). The daemon gets ``PYTHONPATH=<repo>/src`` (or ``--src``, to try a
patched copy) and nothing else on its path, so ``--python /usr/bin/python3`` means Debian's interpreter
with Debian's httpx, h11, cryptography and segno (see bench/bookworm), and no
package from the venv.

Steps: pair one daemon against ``DevServer(interval=1)`` and stop it; then,
``--restarts`` times, start it again (it restores the grant from its state
file) and measure

* startup: from just before the process is spawned to the first answer to
  ``GET /v1/health`` on its socket (a raw AF_UNIX connect retried every 1 ms);
* RSS at start: VmRSS from /proc/PID/status right after that answer;
* RSS after load: VmRSS after ``--requests`` ``GET /v1/token`` requests on one
  keep-alive connection (each answer read in full before the next request), and
  its split into RssAnon (heap, Python objects) and RssFile (mapped .so files);
  ``--smaps`` also lists the largest mappings, e.g. cryptography's OpenSSL.

``--against DIR`` measures a second tree (``git worktree add /tmp/base <commit>``,
then ``--against /tmp/base/src``) in the same run, alternating restarts, and
prints both side by side. Prints min / median / max of each, the daemon interpreter and the versions of
the packages it imported. A benchmark, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: devicelink\r\n\r\n"
TOKEN = b"GET /v1/token HTTP/1.1\r\nHost: devicelink\r\n\r\n"

VERSIONS = r"""
import json, sys
import httpx, h11, cryptography, segno
try:
    from cryptography.hazmat.backends.openssl.backend import backend
    openssl = backend.openssl_version_text()
except Exception as exc:  # the API moved in some release: say so rather than fail
    openssl = f"unknown ({exc})"
print(json.dumps({
    "python": sys.version.split()[0],
    "executable": sys.executable,
    **{m.__name__: f"{m.__version__}  ({m.__file__.rsplit('/', 2)[0]})" for m in (httpx, h11, cryptography, segno)},
    "openssl (cryptography)": openssl,
}))
"""


def daemon_env(src: Path = ROOT / "src") -> dict[str, str]:
    """The daemon's environment: ours minus anything that could put the venv on its path, and
    minus PYTHONDONTWRITEBYTECODE: the first run (the pairing) writes the bytecode, which an
    installed package has, or every start would compile whatever src/ changed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NOTIFY_SOCKET", "DEVICELINK_LOG_LEVEL",
                        "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(src)
    env["PYTHONNOUSERSITE"] = "1"
    # A device whose clock is synchronised (this machine may have no NTP): a restart then
    # serves the stored token at once. On an unsynchronised clock it refreshes first.
    env["DEVICELINK_CLOCK_SYNCED"] = "1"
    return env


from devicelink_sim.devconfig import write_config  # noqa: E402  (socket_bench uses it from here)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its split into RssAnon (heap, Python objects) and RssFile (mapped code, .so files)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}


def top_mappings(pid: int, n: int = 8) -> list[tuple[float, str]]:
    """The ``n`` mappings (by file, or [anon]/[heap]) with the most resident memory, in MiB."""
    totals: dict[str, int] = {}
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header line
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts[0] == "Rss:":
                totals[name] = totals.get(name, 0) + int(parts[1])
    return sorted(((kib / 1024, name) for name, kib in totals.items()), reverse=True)[:n]


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length (all the daemon sends). ``buf`` keeps leftovers."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    del buf[:len(head) + 4]
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if match is None:
        raise ValueError(f"no content-length in {head!r}")
    length = int(match.group(1))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection mid-body")
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, body


class Daemon:
    """``python -m devicelink run``; its log goes to a file we poll (no reader threads)."""

    def __init__(self, python: list[str], config: Path, src: Path) -> None:
        self.python, self.config, self.src = python, config, src
        self.socket = str(config.parent / "agent.sock")
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([*self.python, "-m", "devicelink", "--config", str(self.config), "run"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         env=daemon_env(self.src), cwd=self.config.parent)

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := regex.search(self.log.read_text()):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"no log line matching {pattern!r}; log:\n{self.log.read_text()[-3000:]}")

    def health(self, timeout: float = 30.0) -> tuple[int, socket.socket]:
        """Connect as soon as the socket accepts, send GET /v1/health; the status and the open socket."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the socket never answered; log:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.001)
        sock.sendall(HEALTH)
        status, _ = read_response(sock, bytearray())
        return status, sock

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def pair(python: list[str], config: Path, src: Path, srv) -> None:
    d = Daemon(python, config, src)
    d.spawn()
    try:
        code = d.wait_for_log(r"pairing: enter code (\S+) at (\S+)").group(1)
        srv.approve(code)
        d.wait_for_log(r"state pairing -> paired")
    finally:
        d.stop()


def one_run(python: list[str], config: Path, src: Path, requests: int, smaps: bool = False) -> dict[str, float]:
    d = Daemon(python, config, src)
    t0 = time.perf_counter()
    d.spawn()
    try:
        status, sock = d.health()
        startup = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"GET /v1/health answered {status}: the grant was not restored")
        rss_start = rss_kib(d.proc.pid)
        buf = bytearray()
        with sock:
            for _ in range(requests):
                sock.sendall(TOKEN)
                status, body = read_response(sock, buf)
                if status != 200 or b"access_token" not in body:
                    raise RuntimeError(f"GET /v1/token answered {status}: {body[:200]!r}")
            rss_loaded = rss_kib(d.proc.pid)
            if smaps:
                print("\nlargest resident mappings after the requests (MiB):")
                for mib, name in top_mappings(d.proc.pid):
                    print(f"  {mib:6.1f}  {name}")
    finally:
        code = d.stop()
    if code != 0:
        raise RuntimeError(f"the daemon exited {code}; log:\n{d.log.read_text()[-3000:]}")
    return {"startup_ms": startup * 1000, "rss_start_mib": rss_start["VmRSS"] / 1024,
            "rss_loaded_mib": rss_loaded["VmRSS"] / 1024, "anon_loaded_mib": rss_loaded["RssAnon"] / 1024,
            "file_loaded_mib": rss_loaded["RssFile"] / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
                    help="the daemon's interpreter (a command, split on spaces); default: the venv's")
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--requests", type=int, default=1000, help="GET /v1/token requests before the second RSS")
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="the daemon's PYTHONPATH (to try a patched copy of src); default: the repo's src")
    ap.add_argument("--against", type=Path, metavar="DIR",
                    help="another src/ (e.g. a checkout of an older commit): measured alternately with --src, "
                         "in the same run, and printed side by side")
    ap.add_argument("--smaps", action="store_true", help="print the largest mappings of the last run")
    ap.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = ap.parse_args()
    python = args.python.split()
    # The daemon runs in a temporary directory: make a relative interpreter path absolute.
    python[0] = os.path.abspath(shutil.which(python[0]) or python[0])
    src = args.src.resolve()

    from devicelink_sim.authserver import DevServer

    versions = json.loads(subprocess.run([*python, "-c", VERSIONS], env=daemon_env(src), cwd="/",
                                         capture_output=True, text=True, check=True).stdout)
    print("daemon interpreter:")
    for name, value in versions.items():
        print(f"  {name:24} {value}")

    trees = {"this tree": src}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with DevServer(interval=1) as srv, tempfile.TemporaryDirectory(prefix="dl-bench-", dir="/tmp") as tmp:
        configs = {}
        for i, (name, tree) in enumerate(trees.items()):
            (Path(tmp) / str(i)).mkdir()
            configs[name] = write_config(Path(tmp) / str(i), srv.issuer, srv.client_id)
            pair(python, configs[name], tree, srv)
        for i in range(args.restarts):  # alternately, so the machine's noise falls on both alike
            for name, tree in trees.items():
                last = args.smaps and i == args.restarts - 1 and name == "this tree"
                runs[name].append(one_run(python, configs[name], tree, args.requests, smaps=last))

    print(f"\n{args.restarts} restarts, {args.requests} GET /v1/token on one keep-alive connection each"
          + (f"; against = {trees['against']}" if "against" in trees else ""))
    print(f"  {'':34}" + "".join(f" {name + ': min':>16} {'median':>8} {'max':>8}" for name in trees))
    for key, label in [("startup_ms", "start -> /v1/health answered (ms)"),
                       ("rss_start_mib", "VmRSS after start (MiB)"),
                       ("rss_loaded_mib", f"VmRSS after {args.requests} tokens (MiB)"),
                       ("anon_loaded_mib", "  of which RssAnon (MiB)"),
                       ("file_loaded_mib", "  of which RssFile (MiB)")]:
        line = f"  {label:34}"
        for name in trees:
            values = [r[key] for r in runs[name]]
            line += f" {min(values):16.1f} {statistics.median(values):8.1f} {max(values):8.1f}"
        print(line)
    if args.json:
        print(json.dumps({"versions": versions, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
