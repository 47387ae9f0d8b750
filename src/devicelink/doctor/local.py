"""The checks of this machine's own files: the config and the per-app policy, the
state key and the state directory (by ``stat`` alone), and the clock."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from devicelink.config import Config, load, trusted_owners
from devicelink.doctor.findings import AS_ROOT, FAIL, OK, WARN, Finding, mode_of, user_name
from devicelink.errors import ConfigError


# -- config and per-app policy ---------------------------------------------------------


def check_config(path: Path, daemon_uid: int | None = None) -> tuple[list[Finding], Config | None]:
    """The config as the daemon running as ``daemon_uid`` (default: this user) would load it:
    owned by root or that user, not writable by others."""
    try:
        cfg = load(path, trusted_owners(daemon_uid))
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
                       f"(mode {mode_of(st)})", f"chmod 600 {path}")
    return Finding(OK, "config", f"client secret file {path} present, mode {mode_of(st)}")


def check_policy(cfg: Config, daemon_uid: int | None = None) -> list[Finding]:
    """The entries and drop-ins the daemon running as ``daemon_uid`` (default: this user) would
    skip (``policy.load(cfg).problems``), one line each, or refuse."""
    from devicelink import policy

    try:
        loaded = policy.load(cfg, daemon_uid)
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
        return [Finding(FAIL, "key", f"{path} has mode {mode_of(st)}: other users can read the state key",
                        f"chmod 600 {path}; as it could be read, re-key: devicelink rekey (docs/keys.md)")]
    if st.st_size != keys.KEY_BYTES:
        return [Finding(FAIL, "key", f"{path} is {st.st_size} bytes, a key is exactly {keys.KEY_BYTES}",
                        "restore the key file (removing it makes a new key: the device starts unpaired)")]
    if (was := keys.exposed(cfg.storage.state_dir)) is not None:  # the daemon tightened it: still re-key
        return [Finding(FAIL, "key", f"{path} was readable by other users ({was}); the daemon set it to 0600, "
                        "but the key could have been read", "re-key: devicelink rekey (docs/keys.md)")]
    return [Finding(OK, "key", f"key file {path}{said}: {keys.KEY_BYTES} bytes, mode {mode_of(st)}, "
                    f"owner {user_name(st.st_uid)}")]


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


def daemon_uid(socket_owner: int | None) -> int:
    """The daemon's user, whom the files are judged for: devicelink.service's ``User=`` when
    systemd knows the unit (the socket belongs to root when devicelink.socket made it), else
    the socket's owner, else whoever runs doctor."""
    uid = _service_uid()
    if uid is None:
        uid = socket_owner if socket_owner is not None else os.geteuid()
    return uid


def check_state_dir(state_dir: Path, daemon_uid: int | None) -> list[Finding]:
    """The state directory as the daemon's user (``daemon_uid``, default: this user) would find
    it at start: owned by it, not writable by others, nothing planted in it, writable by it;
    and grants set aside as unreadable."""
    from devicelink.tokens.store import UNREADABLE, give_fix, state_dir_problems

    uid = daemon_uid if daemon_uid is not None else os.geteuid()
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return [Finding(OK, "state", f"{state_dir} does not exist yet: the daemon makes it (0700) at start")]
    except PermissionError:
        return [Finding(WARN, "state", f"cannot look at {state_dir}: permission denied", AS_ROOT)]
    problems = state_dir_problems(state_dir, uid)
    findings = [Finding(FAIL, "state", what, fix) for what, fix in problems]
    if not problems and stat.S_ISDIR(st.st_mode):
        writable = _writable_as(state_dir, uid)
        if writable is False:
            findings.append(Finding(FAIL, "state", f"{state_dir} is not writable by {user_name(uid)}, the daemon's "
                                    "user: it cannot save the grant", give_fix(state_dir, uid)))
        if st.st_mode & 0o077:
            findings.append(Finding(WARN, "state", f"{state_dir} has mode {mode_of(st)}, expected 0700",
                                    f"chmod 700 {state_dir} (the daemon also tightens it at start)"))
        try:
            aside = sorted(n for n in os.listdir(state_dir) if UNREADABLE in n)
        except OSError:
            aside = []
        if aside:
            findings.append(Finding(WARN, "state", f"{len(aside)} state file(s) set aside as unreadable in "
                                    f"{state_dir} ({', '.join(aside)}): a grant written with another key, or "
                                    "damaged", "to get it back: stop the daemon, restore the key that wrote it, "
                                    "rename the newest back to state.bin; else remove them (docs/files.md)"))
    return findings or [Finding(OK, "state", f"{state_dir}: mode {mode_of(st)}, owner {user_name(st.st_uid)}, "
                                "writable by the daemon's user")]


def _service_uid() -> int | None:
    """The ``User=`` of devicelink.service, when systemd knows the unit (root when none is set)."""
    import pwd
    import shutil
    import subprocess

    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        done = subprocess.run([systemctl, "show", "--property=User,LoadState", "devicelink.service"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    props = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    if done.returncode != 0 or props.get("LoadState") != "loaded":
        return None
    try:
        return pwd.getpwnam(props["User"]).pw_uid if props.get("User") else 0
    except KeyError:
        return None


def _writable_as(directory: Path, uid: int) -> bool | None:
    """Whether ``uid`` (with its groups) may create files in ``directory``; None when this
    process cannot tell (not root, and not that user)."""
    if uid == os.geteuid():
        return os.access(directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    if os.geteuid() != 0:
        return None
    import pwd
    import shutil
    import subprocess

    probe = shutil.which("test", path="/usr/bin:/bin")  # coreutils' test(1): access(2) as that user
    if probe is None:
        return None
    try:
        pw = pwd.getpwuid(uid)
        groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
        gid = pw.pw_gid
    except KeyError:
        groups, gid = [], uid
    try:
        done = subprocess.run([probe, "-w", str(directory), "-a", "-x", str(directory)], user=uid, group=gid,
                              extra_groups=groups, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(done.returncode)


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
