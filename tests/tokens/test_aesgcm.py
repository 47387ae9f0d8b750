"""tokens/aesgcm.py: the state file's AES-256-GCM. Before cryptography 42 it goes through
OpenSSL's EVP calls itself; it must then be cryptography's own AESGCM byte for byte. The
venv has a newer cryptography, so the EVP tests run under Debian's interpreter and its
cryptography 38 (bench/bookworm); the vectors run everywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devicelink.tokens import aesgcm

evp = pytest.mark.skipif(aesgcm._binding() is None,
                         reason="this cryptography's AESGCM is cheap to import: no EVP path (runs in bench/bookworm)")

# NIST GCM test vectors (gcmEncryptExtIV256.rsp): key, IV, plaintext, AAD, ciphertext, tag.
VECTORS = [
    ("b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4", "516c33929df5a3284ff463d7",
     "", "", "", "bdc1ac884d332457a1d2664f168c76f0"),
    ("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22", "0d18e06c7c725ac9e362e1ce",
     "2db5168e932556f8089a0622981d017d", "", "fa4362189661d163fcd6a56d8bf0405a", "d636ac1bbedd5cc3ee727dc2ab4a9489"),
    ("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b", "ac93a1a6145299bde902f21a",
     "2d71bcfa914e4ac045b2aa60955fad24", "1e0889016f67601c8ebea4943bc23ad6", "8995ae2e6df3dbf96fac7b7137bae67f",
     "eca5aa77d51d4a0a14d9c51e1da474ab"),
]

SIZES = [0, 1, 15, 16, 17, 255, 4096, 100_000]


@pytest.mark.parametrize("key, iv, plain, aad, cipher, tag", VECTORS)
def test_nist_vectors(key: str, iv: str, plain: str, aad: str, cipher: str, tag: str) -> None:
    box = aesgcm.aes_gcm(bytes.fromhex(key))
    sealed = box.encrypt(bytes.fromhex(iv), bytes.fromhex(plain), bytes.fromhex(aad))
    assert sealed.hex() == cipher + tag
    assert box.decrypt(bytes.fromhex(iv), sealed, bytes.fromhex(aad)) == bytes.fromhex(plain)


@evp
@pytest.mark.parametrize("key, iv, plain, aad, cipher, tag", VECTORS)
def test_the_evp_path_on_nist_vectors(key: str, iv: str, plain: str, aad: str, cipher: str, tag: str) -> None:
    box = aesgcm.EvpAesGcm(bytes.fromhex(key))
    assert box.encrypt(bytes.fromhex(iv), bytes.fromhex(plain), bytes.fromhex(aad)).hex() == cipher + tag


@evp
def test_before_42_the_evp_path_is_taken() -> None:
    assert isinstance(aesgcm.aes_gcm(os.urandom(32)), aesgcm.EvpAesGcm)


@evp
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("aad_size", [0, 1, 20, 1000])
def test_the_evp_path_and_cryptography_agree_both_ways(size: int, aad_size: int) -> None:
    key, nonce, data, aad = os.urandom(32), os.urandom(12), os.urandom(size), os.urandom(aad_size)
    ours, theirs = aesgcm.EvpAesGcm(key), AESGCM(key)
    sealed = ours.encrypt(nonce, data, aad)
    assert sealed == theirs.encrypt(nonce, data, aad)
    assert ours.decrypt(nonce, sealed, aad) == data
    assert theirs.decrypt(nonce, sealed, aad) == data


@pytest.mark.parametrize("make", [aesgcm.aes_gcm, pytest.param(aesgcm.EvpAesGcm, marks=evp)])
def test_anything_the_key_did_not_seal_is_refused(make) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), b"DLS1devicelink"
    box = make(key)
    sealed = box.encrypt(nonce, b'{"tokens": "..."}', aad)
    flipped = [sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1:] for i in (0, len(sealed) - 17, len(sealed) - 1)]
    for data, n, a, k in [*((f, nonce, aad, key) for f in flipped),  # ciphertext, its last byte, the tag
                          (sealed, nonce, b"DLS1other", key),  # another label
                          (sealed, os.urandom(12), aad, key),
                          (sealed, nonce, aad, os.urandom(32)),
                          (sealed[:-1], nonce, aad, key), (sealed[:15], nonce, aad, key), (b"", nonce, aad, key)]:
        with pytest.raises(InvalidTag):
            make(k).decrypt(n, data, a)
    assert box.decrypt(nonce, sealed, aad) == b'{"tokens": "..."}'  # a refusal left nothing behind


@pytest.mark.parametrize("make", [aesgcm.aes_gcm, pytest.param(aesgcm.EvpAesGcm, marks=evp)])
def test_wrong_key_and_nonce_sizes_are_errors_not_ciphertexts(make) -> None:
    with pytest.raises(ValueError):
        make(os.urandom(16))
    with pytest.raises(ValueError):
        make(os.urandom(32)).encrypt(b"", b"x", b"")


def test_opening_the_state_loads_no_more_of_cryptography_than_it_needs(tmp_path) -> None:
    """Before 42, not the OpenSSL backend (x509 and the rest); from 42, AESGCM as it is."""
    code = f"""
import os, sys
from devicelink.tokens.store import EncryptedFileStore
store = EncryptedFileStore({str(tmp_path)!r}, os.urandom(32))
store.save({{"tokens": None}})
assert store.load() == {{"tokens": None}}
print(int("cryptography.hazmat.backends.openssl.backend" in sys.modules), int("cryptography.x509" in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
    assert out == ["0", "0"]
