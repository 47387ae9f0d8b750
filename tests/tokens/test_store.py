"""The encrypted state file and its key: real files, real AES-GCM."""

from __future__ import annotations

import os
import stat

import pytest

from devicelink.errors import ConfigError, StoreError, StoreUnreadable
from devicelink.tokens import keys
from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

RECORD = {"tokens": {"access_token": "at-SECRET", "refresh_token": "rt-SECRET"}, "issuer": "https://id"}


def test_round_trip_is_encrypted_and_private(tmp_path):
    key, source = keys.load_key("file", tmp_path)
    assert source == "file" and len(key) == 32
    assert stat.S_IMODE((tmp_path / "state.key").stat().st_mode) == 0o600
    store = EncryptedFileStore(tmp_path, key)
    store.save(RECORD)
    assert store.load() == RECORD
    raw = store.path.read_bytes()
    assert b"SECRET" not in raw and raw.startswith(b"DLS1")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_key_is_stable_across_starts(tmp_path):
    assert keys.load_key("auto", tmp_path)[0] == keys.load_key("file", tmp_path)[0]


def test_missing_store_is_none(tmp_path):
    assert EncryptedFileStore(tmp_path, os.urandom(32)).load() is None


@pytest.mark.parametrize("damage", [
    lambda b: b[:-1],                     # truncated
    lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # one bit flipped
    lambda b: b"",                        # empty (a power cut on a filesystem without rename ordering)
    lambda b: b"not ours at all",
])
def test_damaged_store_is_unreadable_not_a_crash(tmp_path, damage):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(RECORD)
    store.path.write_bytes(damage(store.path.read_bytes()))
    with pytest.raises(StoreUnreadable) as info:
        store.load()
    assert str(store.path) in str(info.value) and "SECRET" not in str(info.value)


def test_other_key_or_other_label_cannot_open(tmp_path):
    key = os.urandom(32)
    EncryptedFileStore(tmp_path, key).save(RECORD)
    with pytest.raises(StoreUnreadable, match="another key"):
        EncryptedFileStore(tmp_path, os.urandom(32)).load()
    with pytest.raises(StoreUnreadable):
        EncryptedFileStore(tmp_path, key, label="another-device").load()


def test_stale_temp_file_does_not_matter(tmp_path):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    (tmp_path / ".state.bin.tmp").write_bytes(b"half a write")
    os.chmod(tmp_path / ".state.bin.tmp", 0o644)
    store.save(RECORD)
    assert store.load() == RECORD
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_unwritable_dir_is_a_store_error(tmp_path):
    store = EncryptedFileStore(tmp_path / "missing", os.urandom(32))
    with pytest.raises(StoreError, match="cannot write"):
        store.save(RECORD)


def test_clear(tmp_path):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(RECORD)
    store.clear()
    assert store.load() is None
    store.clear()  # idempotent


def test_state_dir_created_private(tmp_path):
    d = tmp_path / "a" / "state"
    ensure_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    os.chmod(d, 0o755)
    ensure_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_bad_key_file_length(tmp_path):
    (tmp_path / "state.key").write_bytes(b"short")
    with pytest.raises(StoreError, match="exactly 32 bytes"):
        keys.load_key("file", tmp_path)


def test_credential_key(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(ConfigError, match="devicelink.key"):
        keys.load_key("credential", tmp_path)
    assert keys.load_key("auto", tmp_path)[1] == "file"  # no credential: the file
    (creds / "devicelink.key").write_bytes(b"k" * 32)
    assert keys.load_key("auto", tmp_path) == (b"k" * 32, "credential")
    assert keys.load_key("credential", tmp_path) == (b"k" * 32, "credential")


# -- two generations ----------------------------------------------------------------

OLD = {**RECORD, "tokens": {"access_token": "at-OLD", "refresh_token": "rt-OLD"}}
NEW = {**RECORD, "tokens": {"access_token": "at-NEW", "refresh_token": "rt-NEW"}}


def test_save_keeps_the_previous_generation(tmp_path):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    assert not store.previous_path.exists()  # the first save has nothing to keep
    store.save(NEW)
    assert store.load() == NEW
    assert store.previous_path.name == "state.prev.bin"
    for path in (store.path, store.previous_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"SECRET" not in path.read_bytes() and b"OLD" not in path.read_bytes()
    store.path.unlink()
    assert store.load() == OLD  # the previous generation really is the one before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("damage", [
    lambda b: b[:len(b) // 2],            # torn: half the file
    lambda b: b[:-1],                     # truncated by one byte
    lambda b: b[:40] + bytes([b[40] ^ 0x80]) + b[41:],  # one bit flipped in the ciphertext
    lambda b: b"",                        # empty (metadata written, data lost)
    lambda b: b"\0" * len(b),             # zeroed blocks
])
def test_torn_newest_loads_the_previous_generation(tmp_path, caplog, damage):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    store.save(NEW)
    store.path.write_bytes(damage(store.path.read_bytes()))
    with caplog.at_level("WARNING", logger="devicelink.tokens.store"):
        assert store.load() == OLD
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(store.path) in lines[0] and "previous generation" in lines[0]
    assert "SECRET" not in lines[0] and "OLD" not in lines[0]

    # The next save replaces the damaged newest and keeps the good previous generation
    # (rotating the damaged one into its place would leave nothing readable between the renames).
    store.save(NEW)
    assert store.load() == NEW
    store.path.unlink()
    assert store.load() == OLD


def test_both_generations_unreadable(tmp_path):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    store.save(NEW)
    store.path.write_bytes(b"DLS1" + b"x" * 40)
    store.previous_path.write_bytes(store.previous_path.read_bytes()[:-3])
    with pytest.raises(StoreUnreadable) as info:
        store.load()
    message = str(info.value)
    assert str(store.path) in message and "previous generation is unreadable too" in message
    assert "\n" not in message and "SECRET" not in message
    # another key opens neither generation
    store.save(NEW)
    store.save(NEW)
    with pytest.raises(StoreUnreadable, match="another key.*previous generation is unreadable too"):
        EncryptedFileStore(tmp_path, os.urandom(32)).load()


def test_newest_missing_beside_a_previous_generation(tmp_path, caplog):
    # A save cut off between its two renames: the previous generation is the newest committed one.
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    store.save(NEW)
    os.replace(store.path, store.previous_path)
    with caplog.at_level("WARNING", logger="devicelink.tokens.store"):
        assert store.load() == NEW
    assert "missing" in caplog.text and "previous generation" in caplog.text
    store.save(OLD)  # nothing to rotate: the previous generation stays
    assert store.load() == OLD
    store.path.unlink()
    assert store.load() == NEW


class _Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler cleans up."""


# A save's system calls, in order; a crash just before each one, and after the last.
SAVE_STEPS = ["open temp", "write temp", "fsync temp", "rename newest -> previous",
              "rename temp -> newest", "open dir", "fsync dir", "done"]


@pytest.mark.parametrize("step", range(len(SAVE_STEPS)), ids=SAVE_STEPS)
def test_a_crash_at_any_step_of_a_save_leaves_a_whole_generation(tmp_path, monkeypatch, step):
    key = os.urandom(32)
    store = EncryptedFileStore(tmp_path, key)
    store.save(OLD)
    store.save(OLD)
    calls = []

    def crashing(name, real):
        def call(*args, **kwargs):
            if len(calls) == step:
                raise _Crash
            calls.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("open", "write", "fsync", "replace"):
        monkeypatch.setattr(os, name, crashing(name, getattr(os, name)))
    try:
        store.save(NEW)
    except _Crash:
        pass
    monkeypatch.undo()
    assert calls == ["open", "write", "fsync", "replace", "replace", "open", "fsync"][:step]
    # what a restarted daemon finds: the old record until the new one is renamed in, then the new
    expected = OLD if step <= SAVE_STEPS.index("rename temp -> newest") else NEW
    assert EncryptedFileStore(tmp_path, key).load() == expected


def test_clear_removes_both_generations(tmp_path):
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    store.save(NEW)
    store.clear()
    assert not store.path.exists() and not store.previous_path.exists()
    assert store.load() is None


def test_a_record_without_a_grant_keeps_no_previous_generation(tmp_path):
    # Unpaired, a revocation still owed: the grant given up must not come back through a
    # fallback to the previous generation.
    store = EncryptedFileStore(tmp_path, os.urandom(32))
    store.save(OLD)
    store.save(NEW)
    owed = {**RECORD, "tokens": None, "pending_revocations": [["rt-NEW", "refresh_token"]]}
    store.save(owed)
    assert store.load() == owed
    assert not store.previous_path.exists()
    store.path.write_bytes(store.path.read_bytes()[:-1])
    with pytest.raises(StoreUnreadable, match="no previous generation"):
        store.load()
    # pairing again: generations as usual
    store.save(OLD)
    store.save(NEW)
    store.path.unlink()
    assert store.load() == OLD
