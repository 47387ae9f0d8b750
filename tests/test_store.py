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
