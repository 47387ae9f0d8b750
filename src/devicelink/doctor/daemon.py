"""The checks of the socket and of the daemon behind it (asked through the client library)."""

from __future__ import annotations

import grp
import os
import stat

from devicelink import __version__
from devicelink.doctor.findings import AS_ROOT, FAIL, OK, WARN, Finding, group_name, mode_of

SOCKET_GROUP = "devicelink"
SOCKET_MODE = 0o660
DAEMON_TIMEOUT = 5.0
START = "start the daemon: systemctl start devicelink (journalctl -u devicelink says why it stopped)"


DETAILS = "journalctl -u devicelink has the details"
#: What to do about ``last_error``, by its ``last_error_kind`` (engine/answers.py ``Trouble``):
#: only what the daemon really gets past by itself is said to be retried.
ADVICE = {
    "upstream": (WARN, "the daemon retries by itself with backoff; the server check below and " + DETAILS),
    "budget": (WARN, "the daemon waits for its hourly request budget, then retries by itself"),
    "refused": (WARN, "the daemon confirms the refusal with one more attempt, then asks to pair again"),
    "client": (FAIL, "the server did not accept this client: fix what the error names in [provider] "
                     "(a grant held is kept, and works again once it is right)"),
    "storage": (FAIL, "free space in the state directory, or move away what sits at state.bin; the daemon "
                      "saves by itself once it can, and until then do not stop it: the grant on disk is stale"),
    "unreadable": (FAIL, "the state was set aside: restore the key that encrypted it and rename the file back "
                         "(docs/files.md), or pair again"),
    "grant_ended": (WARN, "pair again: devicelink pair (or the button)"),
    "pairing": (WARN, "fix what the error names, then pair again: devicelink pair (or the button)"),
    "not_revoked": (WARN, "this is final: remove this device in your account at the provider to end "
                          "the grant there"),
    "lifetime": (WARN, "the provider's access-token lifetime for this client is very short; lengthen it there"),
}


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
    group = group_name(st.st_gid)
    findings = []
    if stat.S_IMODE(st.st_mode) != SOCKET_MODE:
        findings.append(Finding(WARN, "socket", f"{path} has mode {mode_of(st)}, expected 0660",
                                "restart the daemon, which sets it"))
    try:
        wanted = grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        wanted = None
    if wanted is not None and st.st_gid != wanted:
        findings.append(Finding(WARN, "socket", f"{path} belongs to group {group}, not {SOCKET_GROUP}: apps in "
                                f"group {SOCKET_GROUP} cannot connect", f"run the service with Group={SOCKET_GROUP}"))
    findings = findings or [Finding(OK, "socket", f"{path}: mode {mode_of(st)}, group {group}")]
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
    return judge_status(status), status


def _unreachable_fix(exc: Exception, path: str) -> str:
    text = str(exc)
    if "permission denied" in text:
        try:
            group = group_name(os.stat(path).st_gid)
        except OSError:
            group = SOCKET_GROUP
        return f"add this user to group {group} (usermod -aG {group} USER, then log in again), or run as root"
    if "did not answer" in text:
        return "the daemon may be hung: journalctl -u devicelink; systemctl restart devicelink"
    return START


def judge_status(status: dict) -> list[Finding]:
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
        level, fix = ADVICE.get(status.get("last_error_kind") or "", (WARN, DETAILS))
        findings.append(Finding(level, "daemon", f"last error: {status['last_error']}", fix))
    findings += [Finding(WARN, "daemon", f"warning: {warning}") for warning in status.get("warnings") or ()
                 if warning != status.get("last_error")]
    if status.get("pending_revocations"):
        findings.append(Finding(WARN, "daemon", f"{status['pending_revocations']} revocation(s) not yet "
                                "confirmed by the server", "retried in the background until the server answers"))
    version = status.get("version")
    if version and version != __version__:
        findings.append(Finding(WARN, "daemon", f"the daemon runs devicelink {version}, this command is "
                                f"{__version__}", "restart the daemon after an upgrade"))
    return findings
