"""``devicelink doctor``: look at everything the daemon needs and say what to fix.

For support people and fleet tooling: one line per finding,
``ok|warn|FAIL  <check>: <what> — <what to fix>``, or a JSON list with ``--json``.
It runs with or without the daemon and without root; what this user may not look
at is itself a finding (a warning: the daemon's user may well be allowed).

It only looks. In particular it never calls ``tokens.keys.load_key``: that takes
``state.lock`` for the life of the process (and ``file_key`` would even create a
key), so the key is judged by ``stat`` alone, and the daemon's own answer says
which source it uses. Nothing it prints holds a token or a secret: the status
object has none, and the client secret and the key are never read.

Exit code: 0 when nothing failed, else the contract's code for the first failed
check (78 config, 5 daemon not reachable, 6 authorization server not reachable),
else 1 (key, state directory, display, GPIO: what stops ``run`` with 1).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import importlib.util
import json
import logging
import os
import pwd
import socket
import ssl
import stat
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import urlsplit

from devicelink import __version__
from devicelink.config import Config, load, transport_allowed
from devicelink.errors import ConfigError

OK, WARN, FAIL = "ok", "warn", "fail"
SOCKET_GROUP = "devicelink"
SOCKET_MODE = 0o660
DAEMON_TIMEOUT = 5.0
SERVER_TIMEOUT = 10.0
CLOCK_SKEW = 60  # seconds between our clock and the server's Date header worth a warning
GPIOCHIP = Path("/dev/gpiochip0")
START = "start the daemon: systemctl start devicelink (journalctl -u devicelink says why it stopped)"
AS_ROOT = "run doctor as root or as the daemon's user (sudo devicelink doctor) to check it"

#: The exit code of a failed check (docs/cli.md); any other check's failure is 1.
EXIT_FOR_CHECK = {"config": 78, "policy": 78, "socket": 5, "daemon": 5, "server": 6}
#: The endpoints [provider] may set; a config with the first two needs no discovery.
ENDPOINTS = ("device_authorization_endpoint", "token_endpoint", "revocation_endpoint")


class Finding(NamedTuple):
    level: str  # ok | warn | fail
    check: str  # config, policy, key, state, clock, socket, daemon, server, display, gpio
    what: str
    fix: str = ""

    def line(self) -> str:
        label = "FAIL" if self.level == FAIL else self.level
        return f"{label:<4}  {self.check}: {self.what}" + (f" — {self.fix}" if self.fix else "")

    def as_json(self) -> dict[str, str | None]:
        return {"check": self.check, "level": self.level, "message": self.what, "fix": self.fix or None}


def main(config_path: Path, as_json: bool = False) -> int:
    """Run every check, print the findings, return the exit code."""
    findings = run(config_path)
    if as_json:
        print(json.dumps([f.as_json() for f in findings], indent=2))
    else:
        print("\n".join(f.line() for f in findings))
    return exit_code(findings)


def exit_code(findings: list[Finding]) -> int:
    for f in findings:
        if f.level == FAIL:
            return EXIT_FOR_CHECK.get(f.check, 1)
    return 0


def run(config_path: Path) -> list[Finding]:
    """All the findings, in the order they are printed. The daemon is asked first
    (its answer says which key source it really uses), but reported after the clock."""
    from devicelink.ipc.client import default_socket_path

    config_findings, cfg = _guarded("config", check_config, config_path)
    sock = str(cfg.socket.path) if cfg is not None else default_socket_path()
    socket_findings, sock_stat = _guarded("socket", check_socket, sock)
    daemon_findings, status = (_guarded("daemon", check_daemon, sock)
                               if sock_stat is not None else ([], None))
    findings = list(config_findings)
    if cfg is not None:
        findings += _guarded("policy", check_policy, cfg)[0]
        daemon_uid = sock_stat.st_uid if sock_stat is not None else None
        findings += _guarded("key", check_key, cfg, status)[0]
        findings += _guarded("state", check_state_dir, cfg.storage.state_dir, daemon_uid)[0]
    findings += _guarded("clock", check_clock)[0]
    findings += socket_findings + daemon_findings
    if cfg is not None:
        findings += _guarded("server", check_server, cfg)[0]
        findings += _guarded("display", check_display, cfg)[0]
        findings += _guarded("gpio", check_gpio, cfg)[0]
    return findings


def _guarded(check: str, fn: Callable[..., Any], *args: Any) -> tuple[list[Finding], Any]:
    """``fn``'s findings (and whatever else it returns); a bug in a check is a warning,
    never a traceback that hides the other checks."""
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - doctor must finish
        return [Finding(WARN, check, f"could not be checked ({type(exc).__name__}: {exc})",
                        "please report this as a devicelink bug")], None
    return result if isinstance(result, tuple) else (result, None)


# -- config and per-app policy ---------------------------------------------------------


def check_config(path: Path) -> tuple[list[Finding], Config | None]:
    try:
        cfg = load(path)
    except ConfigError as exc:
        fix = (f"fix {path} (docs/config.md); the daemon will not start" if os.path.lexists(path) else
               "write one (docs/config.md), or pass --config PATH / set DEVICELINK_CONFIG")
        return [Finding(FAIL, "config", str(exc), fix)], None
    findings = [Finding(OK, "config", f"{path} is valid")]
    secret = cfg.provider.client_secret_file
    if secret is not None:
        findings.append(_secret_file(secret))
    return findings, cfg


def _secret_file(path: Path) -> Finding:
    """The client secret's file by ``stat`` only: the secret itself is never read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding(FAIL, "config", f"[provider] client_secret_file {path} does not exist",
                       "put the client secret there (mode 0600, owned by the daemon's user)")
    except PermissionError:
        return Finding(WARN, "config", f"[provider] client_secret_file {path}: permission denied", AS_ROOT)
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return Finding(FAIL, "config", f"[provider] client_secret_file {path} is empty or not a file",
                       "put the client secret there")
    if st.st_mode & 0o077:
        return Finding(WARN, "config", f"[provider] client_secret_file {path} is readable by other users "
                       f"(mode {_mode(st)})", f"chmod 600 {path}")
    return Finding(OK, "config", f"client secret file {path} present, mode {_mode(st)}")


def check_policy(cfg: Config) -> list[Finding]:
    """The entries and drop-ins the daemon would skip (``policy.load(cfg).problems``), one line each."""
    from devicelink import policy

    try:
        loaded = policy.load(cfg)
    except ConfigError as exc:
        return [Finding(FAIL, "policy", str(exc), "fix it; the daemon will not start")]
    fix = "fix or remove it; until then the daemon skips it (systemctl reload devicelink after)"
    findings = [Finding(WARN, "policy", problem, fix) for problem in loaded.problems]
    if not loaded.problems:
        count = len(loaded)
        what = (f"{count} app entr{'y' if count == 1 else 'ies'} ([[client]] and clients.d/)" if count else
                "no [[client]] entries: only root and the daemon's own user may ask for tokens")
        findings.append(Finding(OK, "policy", what))
    return findings


# -- the state key and the state directory ---------------------------------------------


def check_key(cfg: Config, status: dict | None) -> list[Finding]:
    from devicelink.tokens import keys

    running = status.get("key_source") if status else None
    source = running if running in ("file", "credential") else keys.key_source(cfg.storage.key)
    said = " (the daemon says so)" if running else ""
    if source == "credential":
        return [_credential(keys, running is not None)]
    path = Path(cfg.storage.state_dir) / keys.KEY_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if _state_files(cfg.storage.state_dir):
            return [Finding(FAIL, "key", f"no key file {path}, but a state file exists: it was written with "
                            "another key, so the next start makes a new key and the device starts unpaired",
                            "restore state.key, or set [storage] key to the source that wrote it (docs/keys.md)")]
        auto = (" (key = 'auto': the service uses the systemd credential instead when its unit loads one)"
                if cfg.storage.key == "auto" and not running else "")
        return [Finding(OK, "key", f"no key file yet: the daemon makes {path} at its first start{auto}")]
    except PermissionError:
        return [Finding(WARN, "key", f"cannot look at {path}: permission denied", AS_ROOT)]
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return [Finding(FAIL, "key", f"{path} is not a regular file (the daemon refuses symlinks)",
                        "put the 32-byte key file itself there")]
    if st.st_mode & 0o077:
        return [Finding(FAIL, "key", f"{path} has mode {_mode(st)}: other users can read the state key",
                        f"chmod 600 {path}; as it could be read, re-key: devicelink rekey (docs/keys.md)")]
    if st.st_size != keys.KEY_BYTES:
        return [Finding(FAIL, "key", f"{path} is {st.st_size} bytes, a key is exactly {keys.KEY_BYTES}",
                        "restore the key file (removing it makes a new key: the device starts unpaired)")]
    return [Finding(OK, "key", f"key file {path}{said}: {keys.KEY_BYTES} bytes, mode {_mode(st)}, "
                    f"owner {_user(st.st_uid)}")]


def _credential(keys: Any, running: bool) -> Finding:
    given = keys.credential_path()  # set when doctor itself runs with the unit's credentials
    if given is not None and os.path.lexists(given):
        try:
            size = os.stat(given).st_size
        except OSError as exc:
            return Finding(WARN, "key", f"cannot look at the credential {given}: {exc.strerror}", AS_ROOT)
        if size != keys.KEY_BYTES:
            return Finding(FAIL, "key", f"the credential {given} is {size} bytes, a key is exactly "
                           f"{keys.KEY_BYTES}", "seal 32 raw bytes (docs/keys.md)")
        return Finding(OK, "key", f"systemd credential {keys.CREDENTIAL_NAME}: {keys.KEY_BYTES} bytes")
    if running:
        return Finding(OK, "key", f"the daemon reads the systemd credential {keys.CREDENTIAL_NAME}")
    unit = f"LoadCredentialEncrypted={keys.CREDENTIAL_NAME}:{keys.CREDSTORE_PATH}"
    try:
        present = keys.CREDSTORE_PATH.exists() and os.stat(keys.CREDSTORE_PATH).st_size > 0
    except PermissionError:
        return Finding(WARN, "key", f"cannot look for the sealed credential {keys.CREDSTORE_PATH}: permission "
                       "denied", AS_ROOT)
    if present:
        return Finding(OK, "key", f"sealed credential {keys.CREDSTORE_PATH} present (the unit needs {unit})")
    return Finding(WARN, "key", f"[storage] key is 'credential', but {keys.CREDSTORE_PATH} does not exist",
                   f"seal one (head -c 32 /dev/urandom | systemd-creds encrypt --name={keys.CREDENTIAL_NAME} - "
                   f"{keys.CREDSTORE_PATH}) and load it with {unit} (docs/keys.md)")


def _state_files(state_dir: Path) -> bool:
    try:
        return any(n.startswith("state.") and n.endswith(".bin") for n in os.listdir(state_dir))
    except OSError:
        return False


def check_state_dir(state_dir: Path, daemon_uid: int | None) -> list[Finding]:
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return [Finding(OK, "state", f"{state_dir} does not exist yet: the daemon makes it (0700) at start")]
    except PermissionError:
        return [Finding(WARN, "state", f"cannot look at {state_dir}: permission denied", AS_ROOT)]
    if not stat.S_ISDIR(st.st_mode):
        return [Finding(FAIL, "state", f"{state_dir} is not a directory", "move it away; the daemon makes the "
                        "directory")]
    findings = []
    if st.st_mode & 0o077:
        findings.append(Finding(WARN, "state", f"{state_dir} has mode {_mode(st)}, expected 0700",
                                f"chmod 700 {state_dir} (the daemon also tightens it at start)"))
    if daemon_uid is not None and st.st_uid != daemon_uid:
        findings.append(Finding(WARN, "state", f"{state_dir} is owned by {_user(st.st_uid)}, but the daemon "
                                f"runs as {_user(daemon_uid)}", f"chown -R {_user(daemon_uid)} {state_dir}"))
    return findings or [Finding(OK, "state", f"{state_dir}: mode {_mode(st)}, owner {_user(st.st_uid)}")]


# -- the clock ---------------------------------------------------------------------------


def check_clock() -> list[Finding]:
    from devicelink import clock

    reading = clock.default_probe().check()
    if reading.synced:
        return [Finding(OK, "clock", f"the wall clock is synchronised (told by {reading.source})")]
    if reading.synced is False:
        return [Finding(WARN, "clock", f"the wall clock is not synchronised (told by {reading.source}): TLS "
                        "can fail with 'certificate is not yet valid', stored tokens are refreshed before use",
                        "enable NTP (timedatectl set-ntp true) and let the device reach an NTP server")]
    return [Finding(WARN, "clock", "cannot tell whether the wall clock is synchronised",
                    f"run systemd-timesyncd, or set {clock.OVERRIDE_ENV}=1 if the RTC is known to be right")]


# -- the socket and the daemon -----------------------------------------------------------


def check_socket(path: str) -> tuple[list[Finding], os.stat_result | None]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [Finding(FAIL, "socket", f"no socket at {path}", START)], None
    except PermissionError:
        return [Finding(FAIL, "socket", f"cannot reach {path}: permission denied on its directory",
                        f"add this user to group {SOCKET_GROUP}, or run as root")], None
    if not stat.S_ISSOCK(st.st_mode):
        return [Finding(FAIL, "socket", f"{path} is not a socket",
                        "remove it, then " + START.split(" (")[0])], None
    group = _group(st.st_gid)
    findings = []
    if stat.S_IMODE(st.st_mode) != SOCKET_MODE:
        findings.append(Finding(WARN, "socket", f"{path} has mode {_mode(st)}, expected 0660",
                                "restart the daemon, which sets it"))
    try:
        wanted = grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        wanted = None
    if wanted is not None and st.st_gid != wanted:
        findings.append(Finding(WARN, "socket", f"{path} belongs to group {group}, not {SOCKET_GROUP}: apps in "
                                f"group {SOCKET_GROUP} cannot connect", f"run the service with Group={SOCKET_GROUP}"))
    findings = findings or [Finding(OK, "socket", f"{path}: mode {_mode(st)}, group {group}")]
    return findings, st


def check_daemon(path: str) -> tuple[list[Finding], dict | None]:
    from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable

    try:
        with Client(path, timeout=DAEMON_TIMEOUT) as client:
            try:
                status = client.status()
            except DaemonError as exc:
                if exc.code != "forbidden":
                    raise
                healthy = client.health()
                return [Finding(WARN, "daemon", f"the daemon answers ({'healthy' if healthy else 'unhealthy'}), "
                                "but may not tell this user its status (forbidden)", AS_ROOT)], None
    except DaemonUnreachable as exc:
        return [Finding(FAIL, "daemon", str(exc), _unreachable_fix(exc, path))], None
    except DaemonError as exc:
        return [Finding(FAIL, "daemon", f"the daemon answered {exc.status} {exc.code}: {exc.description}",
                        "journalctl -u devicelink; systemctl restart devicelink")], None
    return _judge_status(status), status


def _unreachable_fix(exc: Exception, path: str) -> str:
    text = str(exc)
    if "permission denied" in text:
        try:
            group = _group(os.stat(path).st_gid)
        except OSError:
            group = SOCKET_GROUP
        return f"add this user to group {group} (usermod -aG {group} USER, then log in again), or run as root"
    if "did not answer" in text:
        return "the daemon may be hung: journalctl -u devicelink; systemctl restart devicelink"
    return START


def _judge_status(status: dict) -> list[Finding]:
    state = status.get("state")
    account = status.get("account") or {}
    who = f" as {account.get('name') or account.get('sub')}" if account else ""
    findings = []
    if state == "reauth_required":
        findings.append(Finding(WARN, "daemon", "state reauth_required: the server ended the grant or the user "
                                "declined", "pair again: devicelink pair (or the button)"))
    elif state == "unpaired":
        findings.append(Finding(WARN, "daemon", "state unpaired: no grant", "devicelink pair (or the button)"))
    else:
        findings.append(Finding(OK, "daemon", f"the daemon answers: state {state}{who}"))
    if status.get("last_error"):
        findings.append(Finding(WARN, "daemon", f"last error: {status['last_error']}",
                                "the daemon retries by itself; journalctl -u devicelink has the details"))
    if status.get("pending_revocations"):
        findings.append(Finding(WARN, "daemon", f"{status['pending_revocations']} revocation(s) not yet "
                                "confirmed by the server", "retried in the background until the server answers"))
    version = status.get("version")
    if version and version != __version__:
        findings.append(Finding(WARN, "daemon", f"the daemon runs devicelink {version}, this command is "
                                f"{__version__}", "restart the daemon after an upgrade"))
    return findings


# -- the authorization server ------------------------------------------------------------


def check_server(cfg: Config) -> list[Finding]:
    """Discovery (RFC 8414, then OpenID Connect) as the daemon does it, or the configured
    endpoints when both are set; TLS verified, http:// only as the config allows it.
    The daemon's own flows and HTTP adapter, each request tried once."""
    from devicelink.errors import GrantFailed, ProtocolViolation
    from devicelink.oauth import grant
    from devicelink.oauth import messages as m
    from devicelink.oauth.http import ClientAuth, run_sync

    p = cfg.provider
    configured = {k: v for k in ENDPOINTS if (v := getattr(p, k))}
    seen: list[tuple[m.Request, m.Reply]] = []

    def drive(flow: Any) -> Any:  # discovery and probes take no client authentication
        with _quiet("asyncio", "devicelink.oauth.http"):  # what goes wrong is a finding, not a log line
            return run_sync(flow, ClientAuth(p.client_id), deadline=SERVER_TIMEOUT,
                            observe=lambda request, reply: seen.append((request, reply)))

    try:
        if m.Endpoints.complete(configured):
            answers = drive(grant.probe(configured[name] for name in ENDPOINTS[:2]))
            return [_answers(name, url, resp) for name, (url, resp) in zip(ENDPOINTS, answers)] \
                + _skew(answers[-1][1])
        metadata = drive(grant.discover(p.issuer, None))
        endpoints = grant.resolve_endpoints(metadata, configured)
    except GrantFailed:
        request, failure = seen[-1]
        return [Finding(FAIL, "server", *_unanswered(failure, request.url))]
    except ProtocolViolation as exc:
        if not any(isinstance(reply, m.Response) and reply.status == 200 for _, reply in seen):
            return [Finding(FAIL, "server", str(exc), "check [provider] issuer")]
        return [Finding(FAIL, "server", str(exc), "check [provider] issuer against the server's issuer "
                        "(exactly, trailing slash included), or set the endpoints in [provider]")]
    for name in ENDPOINTS:
        url = getattr(endpoints, name)
        if url and not transport_allowed(url, p.allow_insecure_http):
            return [Finding(FAIL, "server", f"the discovery document's {name} {url} is not https",
                            "the server must publish https:// endpoints")]
    request, resp = seen[-1]
    return [Finding(OK, "server", f"{request.url}: issuer matches, device authorization at "
                    f"{endpoints.device_authorization_endpoint}")] + _skew(resp)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _answers(name: str, url: str, resp: Any) -> Finding:
    fine = resp.status < 500
    return Finding(OK if fine else WARN, "server", f"{name} {url} answers (HTTP {resp.status} to a GET)",
                   "" if fine else "the server has trouble; try again later")


def _unanswered(failure: Any, url: str) -> tuple[str, str]:
    if failure.exc is not None:
        return describe_network_failure(failure.exc, url)
    return f"no usable answer from {_where(url)}: {failure.reason}", "check the network, a firewall or a proxy"


def _where(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def describe_network_failure(exc: BaseException, url: str) -> tuple[str, str]:
    """What went wrong reaching ``url``, and what to do, from the exception's causes."""
    from devicelink import clock

    host, where = urlsplit(url).hostname or url, _where(url)
    chain = _causes(exc)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = getattr(cert, "verify_message", None) or str(cert or exc)
        what = clock.explain_failure(f"the TLS certificate of {host} was refused: {reason}", clock.clock_synced())
        return what, ("set the clock (NTP) if it is wrong; else this device does not trust the server's "
                      "certificate chain (ca-certificates)")
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return f"TLS with {where} failed: {exc}", "is it an https server on that port? a proxy in between?"
    if any(isinstance(e, socket.gaierror) for e in chain) or "name resolution" in str(exc).lower() \
            or "name or service not known" in str(exc).lower():
        return f"cannot resolve {host} (DNS)", "check the network and DNS (resolvectl status, /etc/resolv.conf)"
    if any(isinstance(e, TimeoutError) for e in chain):  # httpx's timeouts are raised from one
        return f"no answer from {where} within {SERVER_TIMEOUT:g} s", "check the network, a firewall or a proxy"
    err = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
    if err is not None and err.errno == errno.ECONNREFUSED:
        return f"{where} refused the connection", "is the server up, and the port in [provider] issuer right?"
    if err is not None and err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where} is not reachable: {err.strerror}", "check the network connection"
    return f"cannot reach {where}: {type(exc).__name__}: {str(exc)[:160]}", "check the network"


def _causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its causes, and the members of any exception group among them
    (a connection to a name with several addresses can fail on each)."""
    chain: list[BaseException] = []
    todo = [exc] if exc is not None else []
    while todo and len(chain) < 20:
        exc = todo.pop(0)
        chain.append(exc)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        if (cause := exc.__cause__ or exc.__context__) is not None:
            todo.append(cause)
    return chain


def _skew(resp: Any) -> list[Finding]:
    """The server's Date header against our wall clock: a board without an RTC that has
    not synchronised yet shows here before it breaks TLS."""
    import email.utils
    import time

    try:
        server = email.utils.parsedate_to_datetime(resp.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return []
    skew = time.time() - server
    if abs(skew) <= CLOCK_SKEW:
        return []
    return [Finding(WARN, "clock", f"the wall clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                    "the server's", "synchronise it (NTP): TLS and token lifetimes depend on it")]


# -- display and GPIO --------------------------------------------------------------------


def check_display(cfg: Config) -> list[Finding]:
    d = cfg.display
    if d.driver == "none":
        return []
    if d.driver == "terminal":
        return [Finding(OK, "display", "terminal: the code is printed where the daemon's output goes")]
    if importlib.util.find_spec("PIL") is None:
        return [Finding(FAIL, "display", f"driver {d.driver!r} draws with Pillow, which is not installed",
                        "install devicelink[oled] (or apt install python3-pil)")]
    if d.driver == "png":
        return [_png_dir(d.png_dir)]
    if d.driver == "framebuffer":
        return [_device_node("display", Path(d.framebuffer or "/dev/fb0"),
                             "connect HDMI / load vc4-kms-v3d (dtoverlay=vc4-kms-v3d; hdmi_force_hotplug=1)")]
    if _find("luma.oled") is None:
        return [Finding(FAIL, "display", f"driver {d.driver!r} needs luma.oled, which is not installed",
                        "install devicelink[oled] (or apt install python3-luma.oled)")]
    if d.spi_port is not None or d.spi_device is not None:
        node = Path(f"/dev/spidev{d.spi_port or 0}.{d.spi_device or 0}")
        return [_device_node("display", node, "enable SPI (raspi-config nonint do_spi 0, or dtparam=spi=on)"),
                _device_node("display", GPIOCHIP, "the D/C and reset pins need the GPIO chip")]
    node = Path(f"/dev/i2c-{1 if d.i2c_port is None else d.i2c_port}")
    return [_device_node("display", node, "enable I2C (raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on)")]


def check_gpio(cfg: Config) -> list[Finding]:
    g = cfg.gpio
    if g is None or (g.led is None and g.button is None):
        return []
    if g.led is not None and g.led == g.button:
        return [Finding(FAIL, "gpio", f"the LED and the button are both on GPIO{g.led}", "use two pins")]
    if _find("gpiozero") is None:
        return [Finding(FAIL, "gpio", "[gpio] is configured, but gpiozero is not installed",
                        "install devicelink[gpio] (or apt install python3-gpiozero python3-lgpio)")]
    if os.environ.get("GPIOZERO_PIN_FACTORY", "").lower() == "mock":
        return [Finding(OK, "gpio", "GPIOZERO_PIN_FACTORY=mock: simulated pins, no hardware to check")]
    return [_device_node("gpio", GPIOCHIP, "not a Raspberry Pi? remove [gpio]; on a Pi 5 with a kernel before "
                         "6.6.45 the header is gpiochip4 (update the kernel)")]


def _device_node(check: str, node: Path, missing_fix: str) -> Finding:
    try:
        st = os.stat(node)
    except FileNotFoundError:
        return Finding(FAIL, check, f"{node} not found", missing_fix)
    except OSError as exc:
        return Finding(FAIL, check, f"{node}: {exc.strerror}", missing_fix)
    if not stat.S_ISCHR(st.st_mode):
        return Finding(FAIL, check, f"{node} is not a device", missing_fix)
    group = _group(st.st_gid)
    if os.access(node, os.R_OK | os.W_OK):
        return Finding(OK, check, f"{node} present, group {group}")
    return Finding(WARN, check, f"{node} present, but this user may not open it (group {group})",
                   f"the daemon's user must be in group {group} (SupplementaryGroups={group} in the unit)")


def _png_dir(directory: Path | None) -> Finding:
    if directory is None:
        return Finding(FAIL, "display", "driver 'png' needs [display] png_dir", "set png_dir in the config")
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the daemon makes the missing folders
    if not probe.is_dir():
        return Finding(FAIL, "display", f"png_dir {directory}: {probe} is not a directory", "pick another png_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Finding(WARN, "display", f"png_dir {directory}: {probe} is not writable by this user",
                       "it must be writable by the daemon's user")
    made = "" if probe == Path(directory) else " (made at start)"
    return Finding(OK, "display", f"png: frames go to {directory}{made}")


def _find(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # the parent package is missing
        return None


# -- names for ids ---------------------------------------------------------------------


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
