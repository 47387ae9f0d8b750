"""Issue 10, items 1, 5 and 17: the state directory under a local attacker, a lost key, and
a state directory the daemon's user does not own. Real files chowned to another uid, real
daemons (as another uid through ``setpriv``, so those tests need root and skip otherwise)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devicelink.errors import StoreError, StoreUnreadable
from devicelink import files
from devicelink.files import write_atomic
from devicelink.tokens import keys
from devicelink.tokens import store as store_module
from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

RECORD = {"issuer": "https://id.example", "tokens": {"access_token": "at-SECRET", "refresh_token": "rt-SECRET"}}
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files owned by another uid")
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv to run the daemon as another uid")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def start(state_dir: Path) -> bytes:
    """What the daemon does before it opens the store."""
    ensure_private_dir(state_dir)
    try:
        return keys.load_key("file", state_dir)[0]
    finally:
        keys.release_state_lock(state_dir)


# -- item 1: planted files ---------------------------------------------------------------

@as_root
def test_the_attack_planted_key_and_temp_symlink_never_get_the_grant(tmp_path):
    """The attack as found: a world-writable state dir, another user's state.key and a
    symlink named like our temp file pointing into the attacker's file."""
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    os.chown(loot, NOBODY, NOBODY)
    planted_key = os.urandom(32)
    (state / "state.key").write_bytes(planted_key)
    os.chown(state / "state.key", NOBODY, NOBODY)
    os.symlink(loot, state / ".state.bin.tmp")
    os.lchown(state / ".state.bin.tmp", NOBODY, NOBODY)

    with pytest.raises(StoreError) as info:
        start(state)
    message = str(info.value)
    assert "writable by other users (mode 0777)" in message and "chmod 700" in message and "\n" not in message
    assert stat.S_IMODE(state.stat().st_mode) == 0o777  # not "tightened" and then trusted

    os.chmod(state, 0o700)  # the operator tightens it, but leaves the planted files
    with pytest.raises(StoreError, match=r"\.state\.bin\.tmp is a symbolic link"):
        start(state)
    (state / ".state.bin.tmp").unlink()
    with pytest.raises(StoreError, match="state.key is owned by nobody, not by root"):
        start(state)
    with pytest.raises(StoreError, match="state.key is owned by nobody.*never used"):
        keys.load_key("file", state)  # the key layer refuses it too, checked or not
    assert loot.read_bytes() == b""


def test_a_save_never_writes_through_a_planted_temp_name(tmp_path):
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    state = tmp_path / "state"
    ensure_private_dir(state)
    os.symlink(loot, state / ".state.bin.tmp")  # the old, predictable temp name
    store = EncryptedFileStore(state, os.urandom(32))
    store.save(RECORD)
    assert loot.read_bytes() == b""
    assert store.load() == RECORD and not store.path.is_symlink()


def test_temp_files_have_unpredictable_names_and_are_made_exclusively(tmp_path, monkeypatch):
    made = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        made.append((Path(path).name, flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    for _ in range(2):
        write_atomic(tmp_path / "state.bin", b"x")
    temps = [(name, flags) for name, flags in made if name.endswith(".tmp")]
    assert len(temps) == 2 and temps[0][0] != temps[1][0]
    for name, flags in temps:
        assert name.startswith(".state.bin.") and len(name) == len(".state.bin.") + 16 + len(".tmp")
        assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


@pytest.mark.parametrize("plant", ["symlink", "group-writable"] + (["other-owner"] if os.geteuid() == 0 else []))
def test_a_state_file_that_is_not_ours_is_refused_not_set_aside(tmp_path, plant):
    key = os.urandom(32)
    state = tmp_path / "state"
    ensure_private_dir(state)
    store = EncryptedFileStore(state, key, set_aside=True)
    store.save(RECORD)
    if plant == "symlink":
        real = tmp_path / "elsewhere.bin"
        store.path.rename(real)
        os.symlink(real, store.path)
    elif plant == "group-writable":
        os.chmod(store.path, 0o620)
    else:
        os.chown(store.path, NOBODY, NOBODY)
    with pytest.raises(StoreError) as info:
        store.load()
    assert not isinstance(info.value, StoreUnreadable)  # the daemon stops; it does not start unpaired
    assert "refusing to read it" in str(info.value) and "SECRET" not in str(info.value)
    assert os.path.lexists(store.path) and not list(state.glob("*unreadable*"))
    with pytest.raises(StoreError, match="the daemon does not start with it in its state directory"):
        ensure_private_dir(state)


def test_stale_temp_files_of_ours_are_removed_at_start_under_the_lock(tmp_path):
    state = tmp_path / "state"
    ensure_private_dir(state)
    for name in (".state.bin.0123456789abcdef.tmp", ".state.key.tmp", ".state.bin.tmp"):
        (state / name).write_bytes(b"half a write")
        os.chmod(state / name, 0o600)
    (state / "keep.tmpx").write_bytes(b"")
    os.chmod(state / "keep.tmpx", 0o600)
    start(state)
    assert sorted(p.name for p in state.iterdir()) == ["keep.tmpx", "state.key", "state.lock"]
    assert files.remove_stale_temps(state) == []


@as_root
def test_a_foreign_temp_file_is_never_unlinked_by_cleanup(tmp_path):
    (tmp_path / ".state.bin.tmp").write_bytes(b"")
    os.chown(tmp_path / ".state.bin.tmp", NOBODY, NOBODY)
    assert files.remove_stale_temps(tmp_path) == [] and (tmp_path / ".state.bin.tmp").exists()


def test_a_journal_holding_a_foreign_file_is_refused(tmp_path):
    state = tmp_path / "state"
    ensure_private_dir(state)
    (state / "rekey").mkdir(mode=0o700)
    os.symlink("/etc/passwd", state / "rekey" / "state.bin")
    with pytest.raises(StoreError, match=r"rekey/state\.bin is a symbolic link"):
        start(state)


# -- item 5: an unreadable state file is moved aside --------------------------------------

def test_a_lost_key_sets_the_grant_aside_and_restoring_the_key_restores_it(tmp_path):
    state = tmp_path / "state"
    old_key = start(state)
    EncryptedFileStore(state, old_key).save(RECORD)
    EncryptedFileStore(state, old_key).save(RECORD)  # two generations
    saved_key = (state / "state.key").read_bytes()
    (state / "state.key").unlink()  # lost (or the credential missing): a new key is made

    new_key = start(state)
    store = EncryptedFileStore(state, new_key, set_aside=True)
    with pytest.raises(StoreUnreadable) as info:
        store.load()
    message = str(info.value)
    assert "moved aside as state.bin.unreadable-" in message and "state.prev.bin.unreadable-" in message
    assert "restore the key" in message and "\n" not in message and "SECRET" not in message
    [aside] = state.glob("state.bin.unreadable-*")
    # pairing again (two saves: a rotation) never touches it
    store.save({**RECORD, "tokens": {"access_token": "a2", "refresh_token": "r2"}})
    store.save({**RECORD, "tokens": {"access_token": "a3", "refresh_token": "r3"}})
    assert aside.exists() and stat.S_IMODE(aside.stat().st_mode) == 0o600

    (state / "state.key").write_bytes(saved_key)
    os.rename(aside, state / "state.bin")
    assert EncryptedFileStore(state, start(state), set_aside=True).load() == RECORD


def test_at_most_a_few_unreadable_copies_are_kept(tmp_path):
    state = tmp_path / "state"
    ensure_private_dir(state)
    for n in range(store_module.UNREADABLE_KEPT + 2):
        EncryptedFileStore(state, os.urandom(32)).save(RECORD)
        with pytest.raises(StoreUnreadable):
            EncryptedFileStore(state, os.urandom(32), set_aside=True).load()
        assert not (state / "state.bin").exists()
    assert len(list(state.glob("state.bin.unreadable-*"))) == store_module.UNREADABLE_KEPT


def test_tools_trying_keys_set_nothing_aside(tmp_path):
    EncryptedFileStore(tmp_path, os.urandom(32)).save(RECORD)
    with pytest.raises(StoreUnreadable):
        EncryptedFileStore(tmp_path, os.urandom(32)).load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_the_daemon_sets_an_unreadable_grant_aside_and_gets_it_back(short_tmp, dev_server, daemons):
    from tests.conftest import write_config

    cfg_path = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg_path)
    dev_server.approve(d.wait_for(r"pairing: enter code (\S+) at").group(1), subject="alice", name="Alice Example")
    d.wait_for(r"state pairing -> paired")
    token = d.cli("token").stdout.strip()
    assert d.stop() == 0
    key_file = d.state_dir / "state.key"
    saved_key = key_file.read_bytes()
    key_file.unlink()

    d2 = daemons(cfg_path)
    line = d2.wait_for(r"moved aside as (state\.bin\.unreadable-\S+) ")
    d2.wait_for(r"pairing: enter code")  # starts unpaired, as before; the grant is kept aside
    assert d2.stop() == 0
    aside = d2.state_dir / line.group(1)
    assert aside.exists()

    key_file.write_bytes(saved_key)
    os.replace(aside, d2.state_dir / "state.bin")
    d3 = daemons(cfg_path)
    d3.wait_for(r"restored the grant as Alice Example")
    assert d3.cli("token").stdout.strip() == token


# -- item 17: a state directory the daemon's user does not own ----------------------------

def _as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": SRC, "DEVICELINK_LOG_LEVEL": "INFO"}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-m", "devicelink", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


@needs_setpriv
def test_a_root_owned_state_dir_stops_a_non_root_daemon_with_the_fix(short_tmp):
    from tests.conftest import write_config

    os.chmod(short_tmp, 0o755)
    cfg_path = write_config(short_tmp, "https://id.example.com", "tv")
    os.chmod(cfg_path, 0o644)
    state = short_tmp / "state"
    state.mkdir(mode=0o700)  # root's, as a `mkdir` by hand or an install without tmpfiles leaves it
    done = _as_nobody("--config", str(cfg_path), "run", cwd=short_tmp)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "state directory" in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{state} is owned by root, but the daemon runs as nobody" in lines[0]
    assert f"chown -R nobody: {state}" in lines[0]
    assert f"d {state} 0700 nobody nogroup -" in lines[0]
    assert sorted(os.listdir(state)) == []


@as_root
def test_a_state_dir_of_another_non_root_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(StoreError) as info:
        start(state)
    assert "is owned by nobody, but the daemon runs as root" in str(info.value)
    assert f"chown -R root: {state}" in str(info.value) and "or run the daemon as nobody" in str(info.value)
    assert os.listdir(state) == []  # nothing made in it: no key, no lock
