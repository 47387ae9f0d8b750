"""Key sources (file, credential, auto), the state-dir lock, and re-keying: real files, real
AES-GCM, and the real ``systemd-creds`` of this machine with a test host key
(``SYSTEMD_CREDENTIAL_SECRET``). Crashes are simulated by stopping at the Nth file-system
change (the only edge we cannot otherwise reach): no handler runs, as in a real crash."""

from __future__ import annotations

import base64
import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from devicelink import config as config_module
from devicelink.config import Config, ProviderConfig, StorageConfig
from devicelink.errors import ConfigError, DeviceLinkError, StoreError, StoreUnreadable
from devicelink.rekey import rekey
from devicelink.tokens import keys
from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

RECORD = {"issuer": "https://id.example", "tokens": {"access_token": "at-SECRET", "refresh_token": "rt-SECRET"}}
SYSTEMD_CREDS = shutil.which("systemd-creds")
needs_systemd_creds = pytest.mark.skipif(SYSTEMD_CREDS is None, reason="systemd-creds is not installed")


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    ensure_private_dir(d)
    return d


def config(state_dir: Path, key: str = "file") -> Config:
    return Config(provider=ProviderConfig(issuer="https://id.example", client_id="tv"),
                  path=state_dir.parent / "config.toml", storage=StorageConfig(state_dir=state_dir, key=key))


def start(source: str, state_dir: Path) -> tuple[bytes, str]:
    """What a daemon start does before opening the store; then the process 'exits'."""
    try:
        return keys.load_key(source, state_dir)
    finally:
        keys.release_state_lock(state_dir)


def opens(state_dir: Path, key: bytes):
    """The record ``key`` opens, or None."""
    try:
        return EncryptedFileStore(state_dir, key).load()
    except StoreUnreadable:
        return None


def paired(state_dir: Path, source: str = "file") -> bytes:
    key, _ = start(source, state_dir)
    EncryptedFileStore(state_dir, key).save(RECORD)
    return key


# -- file ---------------------------------------------------------------------------------

def test_file_key_is_made_once_0600_and_stable(state_dir):
    key, source = start("file", state_dir)
    assert source == "file" and len(key) == 32
    path = state_dir / "state.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == key
    assert start("file", state_dir) == (key, "file")
    assert start("auto", state_dir) == (key, "file")  # no credential: the file
    assert sorted(p.name for p in state_dir.iterdir()) == ["state.key", "state.lock"]


def test_file_key_creation_is_atomic(state_dir, monkeypatch):
    real_replace = os.replace

    def fail(*a, **kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StoreError, match="cannot write"):
        start("file", state_dir)
    assert not (state_dir / "state.key").exists() and not list(state_dir.glob(".*.tmp"))

    # A crash after the temp file was written: no key file, so the next start makes one.
    class Crash(BaseException):
        pass

    def crash(*a, **kw):
        raise Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        start("file", state_dir)
    assert not (state_dir / "state.key").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    key, _ = start("file", state_dir)
    assert (state_dir / "state.key").read_bytes() == key and not list(state_dir.glob(".*.tmp"))


def test_file_key_is_fsynced_with_its_directory(state_dir, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    start("file", state_dir)
    assert synced == [False, True]  # the file, then the directory holding its new name


def test_loose_key_file_is_tightened(state_dir):
    key, _ = start("file", state_dir)
    os.chmod(state_dir / "state.key", 0o644)
    assert start("file", state_dir)[0] == key
    assert stat.S_IMODE((state_dir / "state.key").stat().st_mode) == 0o600


def test_a_tightened_key_still_asks_doctor_for_a_rekey_until_one_is_done(state_dir):
    """Issue 10, item 18: the daemon fixes the mode at start, which used to leave doctor
    saying ok and hid that the key could have been read. It stays a FAIL until re-keyed."""
    from devicelink.doctor.local import check_key

    start("file", state_dir)
    os.chmod(state_dir / "state.key", 0o644)
    start("file", state_dir)  # the daemon tightens it
    (finding,) = check_key(config(state_dir), None)
    assert finding.level == "fail" and "mode 0644 until" in finding.what and "devicelink rekey" in finding.fix
    assert stat.S_IMODE((state_dir / keys.EXPOSED_NOTE).stat().st_mode) == 0o600
    rekey(config(state_dir))
    (finding,) = check_key(config(state_dir), None)
    assert finding.level == "ok" and not (state_dir / keys.EXPOSED_NOTE).exists()


@pytest.mark.parametrize("content, found", [
    (b"", "empty"),
    (b"short", "5 bytes of text"),
    (os.urandom(33), "33 bytes"),
    (os.urandom(32).hex().encode() + b"\n", "64 hex digits and a newline"),
])
def test_bad_key_file_says_what_it_found(state_dir, content, found):
    (state_dir / "state.key").write_bytes(content)
    with pytest.raises(StoreError, match="exactly 32 bytes") as info:
        start("file", state_dir)
    assert found in str(info.value)
    if content.strip():
        assert content.strip().decode(errors="replace") not in str(info.value)  # never the key itself


def test_no_key_file_beside_a_state_is_said(state_dir, caplog):
    EncryptedFileStore(state_dir, os.urandom(32)).save(RECORD)
    with caplog.at_level(logging.WARNING):
        start("file", state_dir)
    assert "written with another key" in caplog.text and "starts unpaired" in caplog.text


# -- credential ---------------------------------------------------------------------------

@pytest.fixture
def creds(tmp_path, monkeypatch) -> Path:
    """$CREDENTIALS_DIRECTORY, as systemd sets it for a unit with credentials."""
    d = tmp_path / "creds"
    d.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def test_credential_is_read_from_credentials_directory(state_dir, creds):
    key = os.urandom(32)
    (creds / "devicelink.key").write_bytes(key)
    assert start("credential", state_dir) == (key, "credential")
    assert start("auto", state_dir) == (key, "credential")
    assert keys.key_source("auto") == keys.key_source("credential") == "credential"
    assert not (state_dir / "state.key").exists()  # auto never made a file key


KEY = os.urandom(32)


@pytest.mark.parametrize("content, found", [
    (b"", "it is empty"),
    (KEY[:31], "found 31 bytes"),
    (KEY + b"\n", "found 33 bytes"),
    (KEY.hex().encode() + b"\n", "65 bytes of text: 64 hex digits and a newline"),
    (KEY.hex().encode(), "64 bytes of text: 64 hex digits (the key"),
    (base64.b64encode(KEY) + b"\n", "45 bytes of text: base64 and a newline"),
    (b"correct horse battery staple\n", "29 bytes of text"),
])
def test_bad_credential_is_a_config_error_saying_what_it_found(state_dir, creds, content, found):
    (creds / "devicelink.key").write_bytes(content)
    for source in ("credential", "auto"):  # auto does not fall back to the file either
        with pytest.raises(ConfigError) as info:
            start(source, state_dir)
        message = str(info.value)
        assert "devicelink.key" in message and "exactly 32 raw bytes" in message and found in message
        assert "systemd-creds encrypt --name=devicelink.key" in message  # the fix
        assert KEY.hex() not in message and base64.b64encode(KEY).decode() not in message
        assert "horse" not in message
    if b"hex" in found.encode():
        assert "--transcode=unhex" in message
    assert not (state_dir / "state.key").exists()


def test_missing_credential_is_a_config_error_naming_the_unit_line(state_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"devicelink.key.*not set.*LoadCredentialEncrypted=devicelink.key:"):
        start("credential", state_dir)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match=r"has none.*LoadCredentialEncrypted=devicelink.key:/etc/credstore"):
        start("credential", state_dir)
    assert not (state_dir / "state.key").exists()


def test_a_symlinked_credential_is_not_followed(state_dir, creds, tmp_path):
    elsewhere = tmp_path / "someone-elses.key"
    elsewhere.write_bytes(os.urandom(32))
    (creds / "devicelink.key").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"devicelink.key .*cannot be read"):
        start("credential", state_dir)


def test_unreadable_credential_is_a_config_error(state_dir, creds):
    (creds / "devicelink.key").mkdir()  # unreadable even for root
    with pytest.raises(ConfigError, match=r"devicelink.key .*cannot be read"):
        start("auto", state_dir)


def test_auto_uses_the_file_only_without_a_credential(state_dir, tmp_path, monkeypatch):
    file_key, source = start("auto", state_dir)
    assert source == "file" and keys.key_source("auto") == "file"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # credentials, but not ours
    assert start("auto", state_dir) == (file_key, "file")
    (tmp_path / "devicelink.key").write_bytes(b"\0" * 31)  # ours, broken: an error, never the file
    with pytest.raises(ConfigError):
        start("auto", state_dir)


def test_printable_32_byte_credential_is_used_with_a_warning(state_dir, creds, caplog):
    (creds / "devicelink.key").write_bytes(b"a typed password of 32 chars!!!!")
    with caplog.at_level(logging.WARNING):
        assert start("credential", state_dir)[0] == b"a typed password of 32 chars!!!!"
    assert "32 printable characters" in caplog.text and "a typed password of" not in caplog.text


def test_unknown_source_is_a_config_error(state_dir):
    with pytest.raises(ConfigError, match="auto, file or credential"):
        start("plaintext", state_dir)


# -- the lock -----------------------------------------------------------------------------

def test_one_process_per_state_dir(state_dir, monkeypatch):
    other = keys.try_lock_state_dir(state_dir)  # another process: a separate open file
    try:
        t = time.monotonic()
        with pytest.raises(keys.StateDirBusy, match=rf"pid {os.getpid()}.*rekey.*second daemon"):
            keys.lock_state_dir(state_dir, wait=0.3)
        assert time.monotonic() - t >= 0.3
    finally:
        os.close(other)
    keys.lock_state_dir(state_dir, wait=0)
    keys.lock_state_dir(state_dir, wait=0)  # again in the same process: it already holds it


def test_a_starting_daemon_waits_for_a_rekey(state_dir):
    held = keys.try_lock_state_dir(state_dir)
    code = ("import sys, time; from pathlib import Path; from devicelink.tokens import keys; "
            "t = time.monotonic(); keys.load_key('file', Path(sys.argv[1])); print(time.monotonic() - t)")
    child = subprocess.Popen([sys.executable, "-c", code, str(state_dir)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)
    assert child.poll() is None  # still waiting
    os.close(held)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0 and float(out) >= 0.7


# -- the real systemd-creds ---------------------------------------------------------------

@pytest.fixture
def host_key(tmp_path, monkeypatch) -> Path:
    """A test host key for systemd-creds, in place of /var/lib/systemd/credential.secret."""
    if SYSTEMD_CREDS is None:
        pytest.skip("systemd-creds is not installed")
    secret = tmp_path / "host" / "credential.secret"
    secret.parent.mkdir(mode=0o700)
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(secret))
    run("setup")
    assert secret.stat().st_size > 4096 and stat.S_IMODE(secret.stat().st_mode) == 0o400
    return secret


def run(*args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run([SYSTEMD_CREDS, *args], input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def seal(key: bytes, path: Path, with_key: str = "host") -> Path:
    """`systemd-creds encrypt --name=devicelink.key --with-key=host - PATH`, as docs/keys.md says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run("encrypt", "--name=devicelink.key", f"--with-key={with_key}", "-", str(path), stdin=key)
    return path


_starts = iter(range(1_000_000))


def systemd_start(credential: Path, tmp_path: Path, monkeypatch) -> Path:
    """What systemd does for LoadCredentialEncrypted=devicelink.key:PATH at service start:
    decrypt into a fresh read-only directory and point $CREDENTIALS_DIRECTORY at it.
    (systemd-run cannot do it here: PID 1 is not systemd in this container.)"""
    d = tmp_path / f"run-credentials-{next(_starts)}"
    d.mkdir(mode=0o700)
    run("decrypt", "--name=devicelink.key", str(credential), str(d / "devicelink.key"))
    os.chmod(d / "devicelink.key", 0o400)
    os.chmod(d, 0o500)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def test_real_systemd_creds_host_key_round_trip(state_dir, tmp_path, host_key, monkeypatch):
    key = os.urandom(32)
    cred = seal(key, tmp_path / "credstore.encrypted" / "devicelink.key")
    assert key not in cred.read_bytes() and cred.read_bytes().startswith(b"Whxqht")  # sealed, base64
    systemd_start(cred, tmp_path, monkeypatch)
    assert start("credential", state_dir) == (key, "credential")
    assert start("auto", state_dir) == (key, "credential")
    EncryptedFileStore(state_dir, key).save(RECORD)
    assert opens(state_dir, start("credential", state_dir)[0]) == RECORD
    # The name is bound into the credential: systemd refuses it under another name.
    other = subprocess.run([SYSTEMD_CREDS, "decrypt", "--name=other", str(cred), "-"], capture_output=True)
    assert other.returncode != 0 and b"does not match" in other.stderr
    # Another host key cannot open it.
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(tmp_path / "other.secret"))
    run("setup")
    assert subprocess.run([SYSTEMD_CREDS, "decrypt", "--name=devicelink.key", str(cred), "-"],
                          capture_output=True).returncode != 0


def test_real_systemd_creds_text_key_is_refused_and_the_suggested_fix_works(state_dir, tmp_path, host_key,
                                                                            monkeypatch):
    key = os.urandom(32)
    cred = seal(key.hex().encode() + b"\n", tmp_path / "credstore.encrypted" / "devicelink.key")  # `xxd -p | ...`
    systemd_start(cred, tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="64 hex digits and a newline") as info:
        start("credential", state_dir)
    assert "--transcode=unhex" in str(info.value)
    fixed = tmp_path / "credstore.encrypted" / "devicelink.key.new"
    raw = run("decrypt", "--name=devicelink.key", "--transcode=unhex", str(cred), "-")
    seal(raw, fixed)
    systemd_start(fixed, tmp_path, monkeypatch)
    assert start("credential", state_dir) == (key, "credential")


def test_tpm2_sealing_without_a_tpm_is_a_clear_error_and_changes_nothing(state_dir, tmp_path, host_key):
    if subprocess.run([SYSTEMD_CREDS, "has-tpm2", "-q"]).returncode == 0:
        pytest.skip("this machine has a TPM2")
    old = paired(state_dir)
    with pytest.raises(ConfigError, match=r"systemd-creds encrypt --with-key=tpm2 failed: .*TPM2"):
        rekey(config(state_dir, "credential"), seal_with="tpm2", credential=tmp_path / "cs" / "devicelink.key")
    assert opens(state_dir, old) == RECORD and start("file", state_dir)[0] == old
    assert not (state_dir / "rekey").exists() and not (tmp_path / "cs" / "devicelink.key").exists()


# -- rekey --------------------------------------------------------------------------------

def test_rekey_file_keeps_the_grant_and_the_old_key_opens_nothing(state_dir, caplog):
    old = paired(state_dir)
    message = rekey(config(state_dir))
    assert "is a new key, and the state is encrypted under it" in message
    new, source = start("file", state_dir)
    assert source == "file" and new != old and len(new) == 32
    assert opens(state_dir, new) == RECORD
    assert opens(state_dir, old) is None  # neither generation of the store opens with it
    assert stat.S_IMODE((state_dir / "state.key").stat().st_mode) == 0o600
    assert {p.name for p in state_dir.iterdir()} <= {"state.bin", "state.prev.bin", "state.key", "state.lock"}
    assert "SECRET" not in caplog.text and "SECRET" not in message


def test_rekey_with_auto_and_the_file_key(state_dir):
    old = paired(state_dir, "auto")
    rekey(config(state_dir, "auto"))
    new, source = start("auto", state_dir)
    assert source == "file" and new != old and opens(state_dir, new) == RECORD


def test_rekey_without_a_grant_makes_a_new_key(state_dir):
    old, _ = start("file", state_dir)
    assert "no grant to keep" in rekey(config(state_dir))
    assert start("file", state_dir)[0] != old
    (state_dir / "state.key").unlink()
    rekey(config(state_dir))  # no key yet either: one is made
    assert len((state_dir / "state.key").read_bytes()) == 32


def test_rekey_refuses_while_the_daemon_runs(state_dir):
    old = paired(state_dir)
    code = ("import sys; from pathlib import Path; from devicelink.tokens import keys; "
            "keys.load_key('file', Path(sys.argv[1])); print('ready', flush=True); sys.stdin.read()")
    daemon = subprocess.Popen([sys.executable, "-c", code, str(state_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline() == "ready\n"
        with pytest.raises(StoreError, match=rf"daemon is running \(pid {daemon.pid}\).*systemctl stop devicelink"):
            rekey(config(state_dir))
    finally:
        daemon.communicate("", timeout=30)
    assert start("file", state_dir)[0] == old and opens(state_dir, old) == RECORD
    rekey(config(state_dir))  # the daemon has exited: now it works


def test_rekey_refuses_in_the_process_that_runs_the_daemon(state_dir):
    keys.load_key("file", state_dir)
    with pytest.raises(StoreError, match="held by this process"):
        rekey(config(state_dir))


def test_rekey_refuses_a_state_no_key_here_opens(state_dir):
    paired(state_dir)
    (state_dir / "state.key").write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="does not open with the key from the file.*nothing changed"):
        rekey(config(state_dir))
    (state_dir / "state.key").unlink()
    with pytest.raises(StoreError, match="no key is here to open it"):
        rekey(config(state_dir))
    assert not (state_dir / "state.key").exists() and not (state_dir / "rekey").exists()


def test_rekey_to_another_source_needs_the_config_first(state_dir, tmp_path):
    old = paired(state_dir, "auto")
    for cfg in (config(state_dir, "auto"), config(state_dir, "file")):
        with pytest.raises(ConfigError, match=r'first set \[storage\] key = "credential"'):
            rekey(cfg, "credential", credential=tmp_path / "cs" / "devicelink.key")
    with pytest.raises(ConfigError, match="file or credential"):
        rekey(config(state_dir), "plaintext")
    assert start("file", state_dir)[0] == old and opens(state_dir, old) == RECORD
    assert not (tmp_path / "cs").exists() and not (state_dir / "rekey").exists()


def test_rekey_file_to_credential_completes_at_the_next_start(state_dir, tmp_path, host_key, monkeypatch):
    old = paired(state_dir)
    cred = tmp_path / "credstore.encrypted" / "devicelink.key"
    message = rekey(config(state_dir, "credential"), credential=cred, seal_with="host")
    assert f"LoadCredentialEncrypted=devicelink.key:{cred}" in message and "next start completes" in message
    assert (state_dir / "rekey").is_dir()  # until the daemon starts with the new key
    assert opens(state_dir / "rekey", old) == RECORD
    with pytest.raises(StoreError, match="waits for the daemon's next start"):
        rekey(config(state_dir, "auto"), credential=cred)

    systemd_start(cred, tmp_path, monkeypatch)
    new, source = start("credential", state_dir)
    assert source == "credential" and opens(state_dir, new) == RECORD
    assert not (state_dir / "rekey").exists() and not (state_dir / "state.key").exists()
    assert opens(state_dir, old) is None
    assert start("credential", state_dir) == (new, "credential")


def test_a_start_with_the_old_key_rolls_back_and_rekey_runs_again(state_dir, tmp_path, host_key, monkeypatch,
                                                                  caplog):
    old = paired(state_dir)
    cred = tmp_path / "credstore.encrypted" / "devicelink.key"
    rekey(config(state_dir, "credential"), credential=cred)
    with caplog.at_level(logging.WARNING):
        assert start("file", state_dir)[0] == old  # config set back to "file" before the start
    assert "rolled back" in caplog.text
    assert opens(state_dir, old) == RECORD and not (state_dir / "rekey").exists()
    rekey(config(state_dir, "credential"), credential=cred)  # the stale credential is not the old key
    systemd_start(cred, tmp_path, monkeypatch)
    assert opens(state_dir, start("credential", state_dir)[0]) == RECORD


def test_rotate_the_credential_with_one_the_operator_sealed(state_dir, tmp_path, host_key, monkeypatch):
    k0, k1 = os.urandom(32), os.urandom(32)
    cred = seal(k0, tmp_path / "credstore.encrypted" / "devicelink.key")
    systemd_start(cred, tmp_path, monkeypatch)
    assert paired(state_dir, "credential") == k0
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")  # `devicelink rekey` from a root shell
    new = seal(k1, tmp_path / "credstore.encrypted" / "devicelink.key.new")
    with pytest.raises(ConfigError, match="must not be at"):
        rekey(config(state_dir, "credential"), credential=cred, new_credential=cred)
    rekey(config(state_dir, "credential"), credential=cred, new_credential=new)
    assert not new.exists()
    systemd_start(cred, tmp_path, monkeypatch)
    assert start("credential", state_dir) == (k1, "credential")
    assert opens(state_dir, k1) == RECORD and opens(state_dir, k0) is None
    assert not (state_dir / "rekey").exists()


def test_rekey_inside_the_unit_uses_credentials_directory(state_dir, tmp_path, host_key, monkeypatch):
    """Run under `systemd-run -p LoadCredentialEncrypted=...`: the old key comes from there."""
    cred = seal(os.urandom(32), tmp_path / "credstore.encrypted" / "devicelink.key")
    systemd_start(cred, tmp_path, monkeypatch)
    paired(state_dir, "credential")
    rekey(config(state_dir, "credential"), credential=cred)
    systemd_start(cred, tmp_path, monkeypatch)
    assert opens(state_dir, start("credential", state_dir)[0]) == RECORD


def test_rekey_credential_to_file_finishes_at_once(state_dir, tmp_path, host_key, monkeypatch):
    k0 = os.urandom(32)
    cred = seal(k0, tmp_path / "credstore.encrypted" / "devicelink.key")
    systemd_start(cred, tmp_path, monkeypatch)
    paired(state_dir, "credential")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    message = rekey(config(state_dir, "file"), credential=cred)  # config already says "file"
    assert f"{cred} is no longer needed" in message
    assert not (state_dir / "rekey").exists()
    new, source = start("file", state_dir)
    assert source == "file" and opens(state_dir, new) == RECORD and opens(state_dir, k0) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the state directory's owner")
def test_rekey_as_root_writes_as_the_state_directory_owner(short_tmp):
    os.chmod(short_tmp, 0o711)
    state = short_tmp / "state"
    ensure_private_dir(state)
    paired(state)
    nobody = 65534
    for p in [state, *state.iterdir()]:
        os.chown(p, nobody, nobody)
    rekey(config(state))
    assert {p.name: p.stat().st_uid for p in state.iterdir()} == {
        name: nobody for name in ("state.key", "state.bin", "state.prev.bin", "state.lock")
        if (state / name).exists()}
    assert os.geteuid() == 0 and os.getegid() == 0
    # the daemon runs as the owner (a root daemon refuses another user's key: issue 10, item 1)
    with pytest.raises(StoreError, match="state.key is owned by nobody, not by root"):
        start("file", state)
    from devicelink.rekey import _as_owner

    with _as_owner(state):
        assert opens(state, start("file", state)[0]) == RECORD


# -- crashes and failures at every step ---------------------------------------------------

class Crash(BaseException):
    """The process stops here: no except clause runs (only finally blocks: closes)."""


MUTATIONS = ("replace", "rename", "unlink", "rmdir", "mkdir", "fsync")


@contextmanager
def stop_at(monkeypatch, n: int, failure: str):
    """Raise at the ``n``-th file-system change: ``crash`` (nothing handles it) or ``eio``."""
    seen = []
    real = {name: getattr(os, name) for name in MUTATIONS}

    def wrap(name):
        def change(*args, **kwargs):
            seen.append(" ".join([name, *map(str, args)]))
            if len(seen) == n:
                raise Crash(name) if failure == "crash" else OSError(errno.EIO, "Input/output error")
            return real[name](*args, **kwargs)
        return change

    for name in MUTATIONS:
        monkeypatch.setattr(os, name, wrap(name))
    try:
        yield seen
    finally:
        for name in MUTATIONS:
            monkeypatch.setattr(os, name, real[name])


class Scenario:
    """One kind of re-key, and what the daemon's next start loads."""

    def __init__(self, kind: str, root: Path, monkeypatch) -> None:
        self.kind, self.root, self.monkeypatch = kind, root, monkeypatch
        self.state = root / "state"
        ensure_private_dir(self.state)
        self.cred = root / "credstore.encrypted" / "devicelink.key"
        self.new_key = os.urandom(32)
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        if kind == "credential":  # rotate the sealed key
            self.old_key = os.urandom(32)
            seal(self.old_key, self.cred)
            EncryptedFileStore(self.state, self.old_key).save(RECORD)
        else:  # "file": rotate the file key; "file->credential": move to a sealed key
            self.old_key = paired(self.state)
        self.source = "file" if kind == "file" else "credential"
        self.cfg = config(self.state, self.source)

    def rekey(self) -> str:
        return rekey(self.cfg, new_key=self.new_key, credential=self.cred, seal_with="host")

    def start(self) -> bytes | None:
        """The daemon's next start: None when systemd cannot start it (the credential is missing)."""
        self.monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        if self.source == "credential":
            if not self.cred.exists():
                return None
            systemd_start(self.cred, self.root, self.monkeypatch)
        key, _ = start(self.source, self.state)
        self.monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        return key


@pytest.mark.parametrize("failure", ["crash", "eio"])
@pytest.mark.parametrize("then", ["start", "rekey again"])
@pytest.mark.parametrize("kind", ["file", "credential", "file->credential"])
def test_rekey_stopped_at_every_step_never_loses_the_grant(tmp_path, monkeypatch, kind, then, failure):
    if kind != "file" and SYSTEMD_CREDS is None:
        pytest.skip("systemd-creds is not installed")
    if kind != "file":
        secret = tmp_path / "host.secret"
        monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(secret))
        run("setup")
    outcomes = set()
    n = 0
    while True:
        n += 1
        s = Scenario(kind, tmp_path / f"run{n}", monkeypatch)
        with stop_at(monkeypatch, n, failure) as seen:
            try:
                s.rekey()
                finished = True
            except Crash:
                finished = False
            except DeviceLinkError as exc:  # an I/O error is reported as one of ours, never a traceback
                assert failure == "eio", exc
                finished = False
        if finished and len(seen) < n:
            break  # past the last change: every step was covered
        if finished:  # an error something handles (Path.mkdir(exist_ok=True) on an existing directory)
            assert failure == "eio"
        elif then == "rekey again":
            s.new_key = os.urandom(32)
            s.rekey()
        key = s.start()
        if key is None:  # systemd would not start the unit: the operator runs rekey again
            assert kind == "file->credential" and then == "start"
            s.new_key = os.urandom(32)
            s.rekey()
            key = s.start()
        assert opens(s.state, key) == RECORD, f"lost the grant stopping at change {n} ({seen[-1]})"
        assert not (s.state / "rekey").exists()
        if key != s.old_key:
            assert opens(s.state, s.old_key) is None
            outcomes.add("new key")
        else:
            outcomes.add("old key")
        assert s.start() == key and opens(s.state, key) == RECORD  # and the start after that
    assert n > 12, f"only {n - 1} file-system changes: the harness did not reach the steps"
    if then == "start" and kind != "file->credential":  # both sides of the switch were hit
        assert outcomes == {"old key", "new key"}
    if kind == "file->credential":  # a start is only possible once the credential is installed
        assert outcomes == {"new key"}


@pytest.mark.parametrize("side", ["before the switch", "after the switch"])
def test_a_start_stopped_while_settling_a_rekey_settles_it_the_next_time(tmp_path, monkeypatch, side):
    def interrupted_rekey(root: Path) -> Scenario:
        s = Scenario("file", root, monkeypatch)
        with stop_at(monkeypatch, 10**6, "crash") as seen:
            s.rekey()
        switch = next(i for i, change in enumerate(seen, 1) if change.startswith("replace")
                      and change.endswith("/state.key"))  # the rename that switches the key
        s = Scenario("file", root.with_name(root.name + "b"), monkeypatch)
        with stop_at(monkeypatch, switch + (side == "after the switch"), "crash"), pytest.raises(Crash):
            s.rekey()
        assert (s.state / "rekey").is_dir()
        return s

    m = 0
    while True:
        m += 1
        s = interrupted_rekey(tmp_path / f"run{m}")
        with stop_at(monkeypatch, m, "crash") as seen:
            try:
                key = s.start()
                finished = True
            except Crash:
                finished = False
        if finished:
            break
        key = s.start()
        assert opens(s.state, key) == RECORD, f"lost the grant stopping the start at change {m} ({seen[-1]})"
        assert not (s.state / "rekey").exists()
        assert key == (s.old_key if side == "before the switch" else s.new_key)
    assert m > 3 and opens(s.state, key) == RECORD


# -- the real daemon ----------------------------------------------------------------------

def test_the_daemon_keeps_its_grant_across_a_rekey(short_tmp, dev_server, daemons):
    from tests.conftest import write_config

    cfg_path = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg_path)
    code = d.wait_for(r"pairing: enter code (\S+) at")
    dev_server.approve(code.group(1), subject="alice", name="Alice Example")
    d.wait_for(r"state pairing -> paired")
    token = d.cli("token").stdout.strip()
    cfg = config_module.load(cfg_path)
    with pytest.raises(StoreError, match=rf"daemon is running \(pid {d.proc.pid}\)"):
        rekey(cfg)
    old = (d.state_dir / "state.key").read_bytes()
    assert d.stop() == 0
    rekey(cfg)
    assert (d.state_dir / "state.key").read_bytes() != old
    d2 = daemons(cfg_path)
    d2.wait_for(r"restored the grant as Alice Example")
    assert d2.cli("token").stdout.strip() == token
    assert dev_server.stats.device_authorizations == 1


def test_the_daemon_moves_its_grant_to_a_sealed_key(short_tmp, dev_server, daemons, host_key, monkeypatch):
    from tests.conftest import write_config

    cfg_path = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg_path)
    code = d.wait_for(r"pairing: enter code (\S+) at")
    dev_server.approve(code.group(1), subject="alice", name="Alice Example")
    d.wait_for(r"state pairing -> paired")
    token = d.cli("token").stdout.strip()
    assert d.stop() == 0

    cfg_path.write_text(cfg_path.read_text().replace('key = "file"', 'key = "credential"'))
    cred = short_tmp / "credstore.encrypted" / "devicelink.key"
    rekey(config_module.load(cfg_path), credential=cred, seal_with="host")
    systemd_start(cred, short_tmp, monkeypatch)  # the daemon below inherits $CREDENTIALS_DIRECTORY
    d2 = daemons(cfg_path)
    d2.wait_for(r"restored the grant as Alice Example")
    assert any("key from credential" in line for line in d2.log)
    assert d2.cli("token").stdout.strip() == token
    assert dev_server.stats.device_authorizations == 1
    assert not (d2.state_dir / "state.key").exists() and not (d2.state_dir / "rekey").exists()
