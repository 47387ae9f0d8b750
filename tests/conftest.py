"""Shared fixtures: short temp dirs for sockets, the development server, the real daemon process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/display/golden/*.png from the current renderer instead of comparing")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


#: The interpreter the daemon and CLI run under. bench/bookworm sets it to Debian's
#: python3 with Debian's packages (what Raspberry Pi OS ships) and PYTHONPATH=src.
DAEMON_PYTHON = os.environ.get("DEVICELINK_DAEMON_PYTHON", sys.executable).split()


def write_config(*args, **kwargs) -> Path:
    """devicelink_sim.devconfig.write_config, imported late: bench/bookworm runs the unit
    tests under Debian's python with only src/ on the path."""
    from devicelink_sim.devconfig import write_config as write

    return write(*args, **kwargs)


@pytest.fixture
def short_tmp():
    """AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="dl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dev_server():
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1) as srv:
        yield srv




class Daemon:
    """`devicelink run` as a real process. Waits on its log lines (events), never on sleeps."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.socket = str(config.parent / "agent.sock")
        self.state_dir = config.parent / "state"
        # The wall clock counts as synchronised (a test machine may have no NTP): restarts then
        # serve the stored token; tests/test_clock.py covers the unsynchronised case.
        self.env = {**os.environ, "DEVICELINK_LOG_LEVEL": "DEBUG", "DEVICELINK_CLOCK_SYNCED": "1", **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.log: list[str] = []
        self.stdout = ""
        self._changed = threading.Condition()
        self._cursor = 0
        self._closed = False
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        self.proc = subprocess.Popen([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(self.config), "run"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._out.start()
        self.wait_for(r"devicelink ready on")
        self._cursor = 0  # later waits also see what was logged before "ready"
        return self

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        for chunk in iter(lambda: self.proc.stdout.read(1), ""):
            self.stdout += chunk

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The next log line matching ``pattern``, after the line the previous wait matched."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._cursor < len(self.log):
                    line = self.log[self._cursor]
                    self._cursor += 1
                    if match := regex.search(line):
                        return match
                if self._closed:
                    raise AssertionError(f"the daemon exited ({self.proc.poll()}) before {pattern!r}; log:\n"
                                         + "".join(self.log[-30:]))
                if not self._changed.wait(deadline - time.monotonic()):
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout} s; log:\n"
                                         + "".join(self.log[-30:]))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(self.config), *args],
                              capture_output=True, text=True, env=self.env, timeout=60)

    def client(self):
        from devicelink.ipc.client import Client

        return Client(self.socket)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._out.join(timeout=5)
        return code


@pytest.fixture
def daemons():
    """Start daemons with ``daemons(config)``; every one is stopped at the end of the test."""
    started: list[Daemon] = []

    def start(config: Path, **kw) -> Daemon:
        d = Daemon(config, **kw).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
