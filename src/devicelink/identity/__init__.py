"""The device's identity: its serial number and an EC P-256 key pair behind a signer.

- ``signer.py``: the :class:`~devicelink.identity.signer.Signer` interface (what a TPM
  or secure element implements too), RFC 7638 thumbprints, and :func:`open_signer`;
- ``filekey.py``: the key in ``state_dir/identity.jwk`` (imports ``cryptography``);
- ``jws.py``: a compact JWS signed by a signer (client assertions, DPoP proofs);
- ``serial.py``: the serial number; ``settings.py``: ``[identity]`` in the config.

This package's ``__init__`` imports nothing: the config imports ``settings.py``, and
``devicelink token`` reads the config.
"""

#: The file signer's key, in the state directory (docs/files.md).
KEY_FILE = "identity.jwk"
#: What ``[identity] key`` may name: where the private key lives.
KEY_SOURCES = ("file",)
