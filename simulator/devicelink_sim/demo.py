"""``devicelink-sim demo``: the whole device flow on one machine, for real.

1. The development authorization server (:class:`DevServer`) starts in this
   process on 127.0.0.1.
2. The real daemon, ``devicelink run``, starts as a child process with the
   terminal display: its pairing screen (QR code, user code, address,
   countdown) is drawn on this terminal. Its log goes to ``daemon.log`` in the
   demo's temp dir, so log lines never cut through the QR code.
3. A scripted phone approves the code on the server (``--human``: you do, in
   a browser).
4. ``curl --unix-socket`` and ``devicelink token`` ask the daemon for a token.
   Tokens are only ever printed redacted (first 6 characters).

Nothing is faked: if a step fails, the demo says which one in one line and
exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable

from .authserver import DevServer
from .devconfig import write_config

SCOPE = "openid profile offline_access"
READY_TIMEOUT = 30.0  # s for `devicelink run` to log "devicelink ready on"
CODE_TIMEOUT = 30.0  # s for the first pairing code to reach the status
PAIRED_TIMEOUT = 60.0  # s from the scripted approval to "paired"
POLL = 0.2  # s between status requests
HUMAN_TIMEOUT = 15 * 60.0  # the code expires first (10 min); this is only a backstop


class DemoFailed(Exception):
    """What went wrong, as one line for the person running the demo."""

    def __init__(self, message: str, show_log: bool = False) -> None:
        super().__init__(message)
        self.show_log = show_log


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def redact(token: str) -> str:
    """How a token appears in the demo's output: never whole."""
    return token[:6] + "…"


class Terminal:
    """The demo's own lines. ``stdout`` is shared with the daemon's display, so flush every line."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def fail(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def step(self, text: str, mark: str = "▸") -> None:
        print(f"\x1b[1m{mark} {text}\x1b[0m" if self.tty else f"{mark} {text}", flush=True)

    def command(self, argv: str) -> None:
        self.step(argv, mark="$")

    def during_pairing(self, text: str) -> None:
        """A line while the daemon's pairing screen is up. On a TTY the daemon rewrites
        the line above the cursor (its countdown) every second, so insert this line
        *above* the countdown and leave the cursor where the daemon expects it. One
        write() each, so the daemon's writes cannot land in the middle."""
        if self.tty:
            sys.stdout.write(f"\x1b[A\r\x1b[L{text}\n\n")  # up, column 1, insert a line
            sys.stdout.flush()
        else:
            self.say(text)


class DaemonProcess:
    """``devicelink --config CFG run``: stdout is this terminal, stderr goes to a log file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=12)
        self._ready = threading.Event()  # "devicelink ready on" was logged, or the log ended
        self._ready_seen = False
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "DEVICELINK_CONFIG")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devicelink", "--config", str(self.config), "run"],
            stdin=subprocess.DEVNULL, stdout=None, stderr=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise DemoFailed(f"the daemon did not get ready within {READY_TIMEOUT:g} s", show_log=True)
        if not self._ready_seen:  # its log ended: it exited, or is about to
            self.proc.wait(timeout=10)
            self.check_alive()

    def _read_log(self) -> None:
        assert self.proc and self.proc.stderr
        with open(self.log_path, "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                if not self._ready_seen and "devicelink ready on" in line:
                    self._ready_seen = True
                    self._ready.set()
        self._ready.set()  # the daemon is gone: stop waiting

    def check_alive(self) -> None:
        code = self.proc.poll() if self.proc else None
        if code is not None:
            if self._reader:
                self._reader.join(timeout=5)  # its last words
            raise DemoFailed(f"the daemon {_exit_text(code)}", show_log=True)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, but fail at once if the daemon dies meanwhile."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return
        self.check_alive()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader:
            self._reader.join(timeout=5)
        return code


class Demo:
    def __init__(self, human: bool, approve_after: float, keep: bool) -> None:
        self.human = human
        self.approve_after = approve_after
        self.keep = keep
        self.term = Terminal()
        self.dir = Path(tempfile.mkdtemp(prefix="dlsim-", dir="/tmp"))  # short: AF_UNIX paths
        self.config = self.dir / "config.toml"
        self.socket = str(self.dir / "agent.sock")
        self.server: DevServer | None = None
        self.daemon: DaemonProcess | None = None
        self._server_log: logging.Handler | None = None
        script = Path(sys.executable).parent / "devicelink"
        # Run the `devicelink` command itself; fall back to the module when it is not installed as a script.
        self.devicelink = [str(script)] if script.exists() else [sys.executable, "-m", "devicelink"]

    # -- the story ---------------------------------------------------------------

    def play(self) -> None:
        say, step = self.term.say, self.term.step
        step("Starting the development authorization server")
        self._start_server()
        say(f"  issuer {self.server.issuer}   (its log: {self.dir / 'server.log'})")
        self._write_config()
        step(f"Starting the daemon: devicelink --config {self.config} run")
        say(f"  its log: {self.dir / 'daemon.log'}")
        self.daemon = DaemonProcess(self.config, self.dir / "daemon.log")
        self.daemon.start()

        with Client(self.socket, timeout=5) as client:
            status = self._wait(client, lambda s: s.get("pairing"), CODE_TIMEOUT, "show a pairing code")
            code = status["pairing"]["user_code"]
            if self.human:
                self._let_a_human_approve(status["pairing"])
                status = self._wait(client, self._paired, HUMAN_TIMEOUT, "be paired")
            else:
                self.daemon.wait(self.approve_after)
                self.term.during_pairing(f"📱 A scripted phone approves code {code}")
                try:
                    self.server.approve(code, subject="alice", name="Alice Example")
                except KeyError:
                    raise DemoFailed(f"the server no longer knows the code {code} (expired?)") from None
                status = self._wait(client, self._paired, PAIRED_TIMEOUT, "be paired")

        account = status["account"] or {}
        say()
        step(f"The daemon is paired: code {code} was approved as {account.get('sub')!r} "
             f"({account.get('name')})")
        say(f"  its tokens are encrypted in {self.dir / 'state'}")
        say(f"  apps ask it for an access token on {self.socket}")
        say()
        from_curl = self._token_with_curl()
        say()
        from_cli = self._token_with_cli()
        if from_curl is not None:
            say("  (the same token as curl's: served from the daemon's memory)" if from_cli == from_curl
                else "  (not the token curl got: the daemon refreshed in between)")
        say()
        self._show_status()

    def _let_a_human_approve(self, pairing: dict) -> None:
        line = self.term.during_pairing
        line("👤 Approve it yourself: in a browser on this machine, open")
        line(f"     {pairing.get('verification_uri_complete') or pairing['verification_uri']}")
        line(f"   (or {pairing['verification_uri']} and type the code). Waiting for you...")

    # -- the pieces ----------------------------------------------------------------

    def _start_server(self) -> None:
        self._server_log = logging.FileHandler(self.dir / "server.log")
        self._server_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        sim_logger = logging.getLogger("devicelink_sim")
        sim_logger.addHandler(self._server_log)
        sim_logger.setLevel(logging.INFO)
        try:
            self.server = DevServer(interval=2).start()
        except OSError as exc:
            raise DemoFailed(f"cannot start the development server on 127.0.0.1: {exc.strerror}") from None

    def _write_config(self) -> None:
        write_config(self.dir, self.server.issuer, self.server.client_id, scope=SCOPE, display="terminal",
                     extra="\n[pairing]\nrestart_on_expiry = 0   # one code; the demo ends if it expires\n")

    @staticmethod
    def _paired(status: dict) -> bool:
        state = status["state"]
        if state in ("paired", "refreshing"):
            return True
        if state == "pairing":
            return False
        reason = status.get("last_error") or status.get("message") or "no reason given"
        raise DemoFailed(f"pairing ended in state {state!r}: {reason}")

    def _wait(self, client: Client, done, timeout: float, what: str) -> dict:
        """Poll the status until ``done(status)``; fail if the daemon dies or time runs out."""
        deadline = time.monotonic() + timeout
        status: dict = {}
        while True:
            self.daemon.check_alive()
            try:
                status = client.status()
            except (DaemonUnreachable, DaemonError) as exc:
                self.daemon.check_alive()
                raise DemoFailed(f"cannot ask the daemon for its status: {exc}", show_log=True) from None
            if done(status):
                return status
            if time.monotonic() > deadline:
                why = f" (last error: {status['last_error']})" if status.get("last_error") else ""
                raise DemoFailed(f"the daemon did not {what} within {timeout:g} s{why}", show_log=True)
            time.sleep(POLL)

    def _token_with_curl(self) -> str | None:
        curl = shutil.which("curl")
        url = "http://devicelink/v1/token"
        self.term.command(f"curl --unix-socket {self.socket} {url}")
        if curl is None:
            self.term.say("  curl is not installed here: skipped")
            return None
        result = subprocess.run([curl, "--silent", "--show-error", "--max-time", "10",
                                 "--unix-socket", self.socket, url],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DemoFailed(f"curl failed (exit {result.returncode}): {result.stderr.strip()}")
        try:
            body = json.loads(result.stdout)
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            # Show the error code only: never echo an answer that might hold a token.
            error = body.get("error") if isinstance(body, dict) else None
            raise DemoFailed(f"curl got no token from the daemon ({error or 'not a token answer'})")
        self.term.say(f"  curl got a {body.get('token_type')} token ({len(token)} chars, "
                      f"expires in {body.get('expires_in')} s): {redact(token)}")
        return token

    def _devicelink(self, command: str) -> str:
        """Run ``devicelink --config CFG COMMAND`` as the person would; its stdout."""
        self.term.command(f"devicelink --config {self.config} {command}")
        result = subprocess.run([*self.devicelink, "--config", str(self.config), command],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DemoFailed(f"`devicelink {command}` failed (exit {result.returncode}): "
                             f"{result.stderr.strip() or 'no message'}")
        return result.stdout

    def _token_with_cli(self) -> str:
        out = self._devicelink("token")
        token = out.strip()
        if not token or len(out.splitlines()) != 1:
            raise DemoFailed("`devicelink token` did not print one token on one line")
        self.term.say(f"  devicelink token printed a token ({len(token)} chars): {redact(token)}")
        return token

    def _show_status(self) -> None:
        for line in self._devicelink("status").splitlines():
            self.term.say(f"  {line}")

    # -- the end -------------------------------------------------------------------

    def cleanup(self) -> int | None:
        """Stop the daemon and the server, remove the temp dir unless --keep; the daemon's exit status."""
        code = self.daemon.stop() if self.daemon else None
        if self.server is not None:
            self.server.stop()
        if self._server_log is not None:
            logging.getLogger("devicelink_sim").removeHandler(self._server_log)
            self._server_log.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return code


def run(human: bool = False, approve_after: float = 4.0, keep: bool = False) -> int:
    demo = Demo(human, approve_after, keep)
    term = demo.term
    failure: DemoFailed | None = None
    interrupted = False
    # SIGTERM (e.g. a test's timeout) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.play()
    except DemoFailed as exc:
        failure = exc
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # a bug, or something unforeseen: still one line, still cleaned up
        failure = DemoFailed(f"unexpected {type(exc).__name__}: {exc}", show_log=True)
    finally:
        # No second interruption halfway through stopping the daemon.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            daemon_exit = demo.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)

    # Printed after the daemon stopped: on a TTY it clears a pairing screen when it exits.
    if failure is None and not interrupted and daemon_exit not in (0, None):
        failure = DemoFailed(f"the daemon {_exit_text(daemon_exit)} when asked to stop", show_log=True)
    if failure is not None and failure.show_log and demo.daemon and demo.daemon.tail:
        term.say("The daemon's last log lines:")
        for line in demo.daemon.tail:
            term.say(f"  | {line}")
    where = f"; kept {demo.dir}" if demo.keep else ""
    if interrupted:
        term.fail(f"devicelink-sim demo: interrupted; stopped the daemon and the server{where}")
        return 130
    if failure is not None:
        term.fail(f"devicelink-sim demo: {failure}{where}")
        return 1
    term.say()
    term.step("Stopped the daemon (SIGTERM) and the server; "
              + (f"kept {demo.dir} (config.toml, daemon.log, server.log, state/)" if demo.keep
                 else f"removed {demo.dir}"))
    if not demo.human:
        term.say("  To approve the code yourself in a browser: devicelink-sim demo --human")
    return 0
