"""Where the state key comes from (``[storage] key``).

- ``file``: ``state_dir/state.key``, 32 random bytes made at first start, mode 0600.
- ``credential``: the systemd credential ``devicelink.key``
  (``LoadCredentialEncrypted=devicelink.key:/etc/credstore.encrypted/devicelink.key``),
  read from ``$CREDENTIALS_DIRECTORY``; sealed to the host key or a TPM2 by ``systemd-creds``.
- ``auto``: the credential when the service has one, else the file.

There is no plaintext fallback: without a key the daemon does not start.
"""

from __future__ import annotations

import os
from pathlib import Path

from devicelink.errors import ConfigError, StoreError
from devicelink.tokens.store import atomic_write

KEY_BYTES = 32
KEY_FILE = "state.key"
CREDENTIAL_NAME = "devicelink.key"


def load_key(source: str, state_dir: Path) -> tuple[bytes, str]:
    """The 32-byte state key and the name of where it came from ("file" or "credential")."""
    credential = _credential_path()
    if source == "credential" or (source == "auto" and credential is not None and credential.exists()):
        if credential is None or not credential.exists():
            raise ConfigError(f"[storage] key: 'credential' needs the systemd credential {CREDENTIAL_NAME} "
                              "(LoadCredentialEncrypted= in the unit); $CREDENTIALS_DIRECTORY has none")
        return _read_key(credential), "credential"
    return _file_key(state_dir / KEY_FILE), "file"


def _credential_path() -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / CREDENTIAL_NAME if directory else None


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the state key: {exc.strerror}") from None
    if len(key) != KEY_BYTES:
        raise StoreError(f"{path}: the state key must be exactly {KEY_BYTES} bytes, found {len(key)}")
    return key


def _file_key(path: Path) -> bytes:
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return _read_key(path)
    # Written whole and renamed into place, so a power cut never leaves a short key
    # file that would stop every later start.
    key = os.urandom(KEY_BYTES)
    atomic_write(path, key)
    return key
