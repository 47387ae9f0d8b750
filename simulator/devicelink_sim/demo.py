"""``devicelink-sim demo``: the whole device flow on one machine, for real, on the virtual device.

1. The development authorization server (:class:`DevServer`) starts in this
   process on 127.0.0.1.
2. The virtual device starts (device/, as ``devicelink-sim device``): the real
   daemon, ``devicelink run``, as a child process, drawing with the ``png``
   display driver, its status LED and button on gpiozero's MockFactory pins.
   Its page is served on 127.0.0.1 and its address printed, for anyone who
   wants to watch the screen and LED, press the button or approve on the phone.
3. A scripted phone opens the address the screen's QR code holds
   (``verification_uri_complete``) and approves on the verification page, as a
   person would (``--human``: you do, on the page).
4. ``curl --unix-socket`` and ``devicelink token`` ask the daemon for a token.
   Tokens are only ever printed redacted (first 6 characters).

It needs the ``sim`` extra only (Flask, Authlib, PyJWT, Pillow, gpiozero). Nothing
is faked: if a step fails, the demo says which one in one line and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from .device.board import DeviceFailed
from .device.run import DEFAULT_PORT, Simulation, uninterrupted

SCOPE = "openid profile offline_access"
CODE_TIMEOUT = 30.0  # s for the first pairing code to reach the status
PAIRED_TIMEOUT = 60.0  # s from the scripted approval to "paired"
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
    """The demo's own lines."""

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


def scripted_phone(uri: str, user: str = "alice") -> str:
    """What a phone does with the QR code: open ``uri`` (the verification page with the code
    filled in), check the code is there, and approve as ``user``. The answer page's text."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("user_code", [""])[0]
    with opener.open(uri, timeout=10) as page:
        html = page.read().decode("utf-8", "replace")
    if code not in html or 'value="approve"' not in html:
        raise DemoFailed(f"the verification page at {uri} does not show the code {code} with an Approve button")
    form = urllib.parse.urlencode({"user_code": code, "user": user, "action": "approve"}).encode()
    target = urllib.parse.urljoin(uri, "/device")
    with opener.open(urllib.request.Request(target, data=form, method="POST"), timeout=10) as answer:
        return answer.read().decode("utf-8", "replace")


class Demo:
    def __init__(self, human: bool, approve_after: float, keep: bool, stay: bool = False,
                 port: int = DEFAULT_PORT) -> None:
        self.human = human
        self.approve_after = approve_after
        self.keep = keep
        self.stay = stay
        self.term = Terminal()
        self.sim = Simulation(port=port, port_fallback=port == DEFAULT_PORT, keep=keep, interval=2,
                              access_token_lifetime=3600, scope=SCOPE,
                              extra_config="\n[pairing]\nrestart_on_expiry = 0   # one code; the demo ends if it expires\n")
        self.dir = self.sim.directory
        self.socket = str(self.dir / "agent.sock")
        self.config = self.dir / "config.toml"
        self._server_log: logging.Handler | None = None
        self._stop = threading.Event()
        script = Path(sys.executable).parent / "devicelink"
        # Run the `devicelink` command itself; fall back to the module when it is not installed as a script.
        self.devicelink = [str(script)] if script.exists() else [sys.executable, "-m", "devicelink"]

    @property
    def daemon(self):
        return self.sim.device

    # -- the story ---------------------------------------------------------------

    def play(self) -> None:
        say, step = self.term.say, self.term.step
        step("Starting the development authorization server and the virtual device")
        self._log_server()
        try:
            self.sim.start()
        except DeviceFailed as exc:
            raise DemoFailed(f"the virtual device did not start: {exc}", show_log=True) from None
        except OSError as exc:
            raise DemoFailed(f"cannot start on 127.0.0.1: {exc.strerror or exc}") from None
        device = self.sim.device
        say(f"  issuer {self.sim.issuer}   (its log: {self.dir / 'server.log'})")
        say(f"  the daemon: devicelink --config {self.config} run   (its log: {device.log_path})")
        say(f"  on a virtual board: a {device.size[0]}x{device.size[1]} screen (the png driver, {device.screen_dir}),"
            f" an LED on GPIO17 and a button on GPIO27 (gpiozero's mock pins)")
        say(f"  serial {device.serial}: it registers itself (RFC 7591) with a key of its own, then pairs")
        step(f"Watch it and click it: {self.sim.url}")
        say("  (its screen, LED and button live; the phone's verification page; the server's fault switches)")

        status = self._wait(lambda s: s.get("pairing"), CODE_TIMEOUT, "show a pairing code")
        pairing = status["pairing"]
        code, uri = pairing["user_code"], pairing.get("verification_uri_complete") or pairing["verification_uri"]
        step(f"The device shows code {code} and a QR code for {uri}")
        say(f"  its screen: {device.screen_dir / 'latest.png'}; its LED breathes (pairing)")
        if self.human:
            say(f"👤 Approve it yourself: open {self.sim.url}, click Scan the code, then Approve on the phone")
            say(f"   (or open {uri} in a browser). Waiting for you...")
            status = self._wait(self._paired, HUMAN_TIMEOUT, "be paired")
        else:
            if self.approve_after and self._stop.wait(self.approve_after):
                raise KeyboardInterrupt
            say(f"📱 A scripted phone scans the QR code, opens {uri} and approves as Alice Example")
            try:
                answer = scripted_phone(uri)
            except OSError as exc:
                raise DemoFailed(f"the scripted phone could not approve: {exc}") from None
            if "Approved" not in answer:
                raise DemoFailed(f"the verification page did not approve code {code} (expired?)")
            status = self._wait(self._paired, PAIRED_TIMEOUT, "be paired")

        account = status["account"] or {}
        # The LED follows the state over the pin wire: give its level a moment to arrive.
        self.sim.hub.wait_for(lambda values: (values.get("led") or {}).get("value") == 1.0, 5)
        led = (self.sim.hub.get("led") or {}).get("value")
        say()
        step(f"The daemon is paired: code {code} was approved as {account.get('sub')!r} ({account.get('name')})")
        say(f"  its screen says Paired as {account.get('name')}; its LED is {'on' if led == 1.0 else led}")
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
        if self.stay:
            say()
            step(f"The device keeps running: {self.sim.url} (press its button, break the server). Ctrl-C stops it.")
            self.daemon.proc.wait()
            raise DemoFailed(f"the daemon {_exit_text(self.daemon.proc.returncode)}", show_log=True)

    # -- the pieces ----------------------------------------------------------------

    def _log_server(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._server_log = logging.FileHandler(self.dir / "server.log")
        self._server_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        sim_logger = logging.getLogger("devicelink_sim")
        sim_logger.addHandler(self._server_log)
        sim_logger.setLevel(logging.INFO)

    @staticmethod
    def _paired(status: dict) -> bool:
        state = status["state"]
        if state in ("paired", "refreshing"):
            return True
        if state == "pairing":
            return False
        reason = status.get("last_error") or status.get("message") or "no reason given"
        raise DemoFailed(f"pairing ended in state {state!r}: {reason}")

    def _wait(self, done, timeout: float, what: str) -> dict:
        """The status once ``done(status)``, pushed by the daemon's events; fail if it dies or time runs out."""
        try:
            return self.sim.device.wait_for_status(done, timeout)
        except DeviceFailed as exc:
            raise DemoFailed(str(exc), show_log=True) from None
        except TimeoutError as exc:
            raise DemoFailed(f"the daemon did not {what} within {timeout:g} s ({exc})", show_log=True) from None

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
        """Stop the daemon, the page and the server, remove the temp dir unless --keep; the daemon's exit status."""
        code = self.sim.stop()
        if self._server_log is not None:
            logging.getLogger("devicelink_sim").removeHandler(self._server_log)
            self._server_log.close()
        return code


def run(human: bool = False, approve_after: float = 4.0, keep: bool = False, stay: bool = False,
        port: int = DEFAULT_PORT) -> int:
    demo = Demo(human, approve_after, keep, stay, port)
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
        daemon_exit = uninterrupted(demo.cleanup, previous)

    if failure is None and not interrupted and daemon_exit not in (0, None):
        failure = DemoFailed(f"the daemon {_exit_text(daemon_exit)} when asked to stop", show_log=True)
    tail = demo.daemon.log_tail if demo.daemon else ()
    if failure is not None and failure.show_log and tail:
        term.say("The daemon's last log lines:")
        for line in tail:
            term.say(f"  | {line}")
    where = f"; kept {demo.dir}" if demo.keep else ""
    if interrupted:
        term.fail(f"devicelink-sim demo: interrupted; stopped the daemon and the servers{where}")
        return 130 if not demo.stay else 0
    if failure is not None:
        term.fail(f"devicelink-sim demo: {failure}{where}")
        return 1
    term.say()
    term.step("Stopped the daemon (SIGTERM), its page and the server; "
              + (f"kept {demo.dir} (config.toml, daemon.log, server.log, screen/, state/)" if demo.keep
                 else f"removed {demo.dir}"))
    if not demo.human:
        term.say("  To approve the code yourself on the device's page: devicelink-sim demo --human")
        term.say("  To keep the device running and play with it: devicelink-sim device")
    return 0
