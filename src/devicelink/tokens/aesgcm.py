"""AES-256-GCM, the cipher of the state file and of sealed secrets, loading no more of
``cryptography`` than it needs.

From cryptography 42 on, ``AESGCM`` is implemented in Rust and cheap to import: it is used
as it is. Before that (Debian 12 and Raspberry Pi OS Bookworm ship 38), importing it imports
the whole OpenSSL backend: x509, every asymmetric key type, PKCS#12, SSH keys,
``email.utils``. On Debian's packages that was about 25 of the daemon's 135 ms from start
to serving, and 4.5 of its 30 MiB (bench/rss_startup.py, docs/benchmarks.md), for one
cipher. There :class:`EvpAesGcm` makes the OpenSSL EVP calls that cryptography 38's own
backend makes for ``AESGCM`` (backends/openssl/aead.py), through the same cffi binding the
backend uses. The output is the same, byte for byte: tests/tokens/test_aesgcm.py checks
each against the other under Debian's interpreter (bench/bookworm).
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidTag

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...


def aes_gcm(key: bytes) -> Aead:
    """AES-256-GCM under ``key``: ``encrypt`` returns ciphertext then a 16-byte tag,
    ``decrypt`` raises :class:`cryptography.exceptions.InvalidTag` for anything the key,
    nonce and associated data did not produce."""
    if _binding() is not None:
        return EvpAesGcm(key)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM takes a 32-byte key")
    return AESGCM(key)


def _binding():
    """cryptography's cffi binding ``(ffi, lib)`` when this cryptography's ``AESGCM`` would
    load the whole OpenSSL backend (before 42) and the binding has the EVP calls; else None."""
    global _BINDING
    if _BINDING is _UNKNOWN:
        _BINDING = None
        import cryptography

        major = cryptography.__version__.split(".", 1)[0]
        if major.isdigit() and int(major) < 42:
            try:
                from cryptography.hazmat.bindings._openssl import ffi, lib
            except ImportError:
                pass
            else:
                if all(hasattr(lib, name) for name in _EVP_CALLS):
                    _BINDING = ffi, lib
    return _BINDING


_UNKNOWN = object()
_BINDING: object = _UNKNOWN
_EVP_CALLS = ("EVP_get_cipherbyname", "EVP_CIPHER_CTX_new", "EVP_CIPHER_CTX_free", "EVP_CipherInit_ex",
              "EVP_CipherUpdate", "EVP_CipherFinal_ex", "EVP_CIPHER_CTX_ctrl", "EVP_CTRL_AEAD_GET_TAG",
              "EVP_CTRL_AEAD_SET_TAG", "ERR_clear_error")


class EvpAesGcm:
    """AES-256-GCM with 12-byte nonces and 16-byte tags through OpenSSL's EVP interface: a
    fresh cipher context per call, as cryptography 38 does."""

    def __init__(self, key: bytes) -> None:
        binding = _binding()
        if binding is None:
            raise RuntimeError("this cryptography has no OpenSSL EVP binding: use aes_gcm()")
        if len(key) != KEY_BYTES:
            raise ValueError("AES-256-GCM takes a 32-byte key")
        self._ffi, self._lib = binding
        self._key = bytes(key)
        self._cipher = self._lib.EVP_get_cipherbyname(b"aes-256-gcm")
        self._check(self._cipher != self._ffi.NULL, "EVP_get_cipherbyname")

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        ffi, lib = self._ffi, self._lib
        ctx = self._context(nonce, associated_data, encrypt=True)
        out = self._update(ctx, data)
        size = ffi.new("int *")
        self._check(lib.EVP_CipherFinal_ex(ctx, ffi.new("unsigned char[]", 16), size) == 1 and size[0] == 0,
                    "EVP_CipherFinal_ex")
        tag = ffi.new("unsigned char[]", TAG_BYTES)
        self._check(lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, tag) == 1,
                    "EVP_CTRL_AEAD_GET_TAG")
        return out + ffi.buffer(tag)[:]

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        if len(data) < TAG_BYTES:
            raise InvalidTag
        ffi, lib = self._ffi, self._lib
        ctx = self._context(nonce, associated_data, encrypt=False)
        tag = data[-TAG_BYTES:]
        self._check(lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, tag) == 1,
                    "EVP_CTRL_AEAD_SET_TAG")
        out = self._update(ctx, data[:-TAG_BYTES])
        size = ffi.new("int *")
        if lib.EVP_CipherFinal_ex(ctx, ffi.new("unsigned char[]", 16), size) != 1:  # the tag did not match
            lib.ERR_clear_error()
            raise InvalidTag
        return out

    def _context(self, nonce: bytes, associated_data: bytes, *, encrypt: bool):
        if len(nonce) != NONCE_BYTES:
            raise ValueError("the nonce must be 12 bytes")  # GCM's default IV length: no SET_IVLEN
        ffi, lib = self._ffi, self._lib
        ctx = lib.EVP_CIPHER_CTX_new()
        self._check(ctx != ffi.NULL, "EVP_CIPHER_CTX_new")
        ctx = ffi.gc(ctx, lib.EVP_CIPHER_CTX_free)
        self._check(lib.EVP_CipherInit_ex(ctx, self._cipher, ffi.NULL, self._key, nonce, int(encrypt)) == 1,
                    "EVP_CipherInit_ex")
        size = ffi.new("int *")
        self._check(lib.EVP_CipherUpdate(ctx, ffi.NULL, size, associated_data, len(associated_data)) == 1,
                    "EVP_CipherUpdate (associated data)")
        return ctx

    def _update(self, ctx, data: bytes) -> bytes:
        ffi = self._ffi
        out, size = ffi.new("unsigned char[]", len(data)), ffi.new("int *")
        self._check(self._lib.EVP_CipherUpdate(ctx, out, size, data, len(data)) == 1 and size[0] == len(data),
                    "EVP_CipherUpdate")
        return ffi.buffer(out, len(data))[:]

    def _check(self, ok: bool, call: str) -> None:
        if not ok:
            self._lib.ERR_clear_error()
            raise RuntimeError(f"OpenSSL AES-256-GCM: {call} failed")
