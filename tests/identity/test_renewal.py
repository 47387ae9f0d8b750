"""``identity/renewal.py``: the note a factory reset with ``on_factory_reset = "new_key"`` writes
before anything else, and the key's replacement it owes, idempotent across a power cut."""

from __future__ import annotations

import os

import pytest

from devicelink.errors import IdentityError
from devicelink.identity import filekey, renewal
from devicelink.identity.signer import SwappableSigner


def test_a_noted_key_is_replaced_once_and_swapped_in(tmp_path):
    old, _ = filekey.load_or_create(tmp_path / "identity.jwk")
    signer = SwappableSigner(old)
    assert renewal.pending(tmp_path) is None and not renewal.finish(tmp_path, signer)  # nothing owed
    renewal.begin(tmp_path, old.kid)
    renewal.begin(tmp_path, "another")  # a second reset before the first is done: the first key stays noted
    assert renewal.pending(tmp_path) == old.kid
    assert os.stat(renewal.note_path(tmp_path)).st_mode & 0o777 == 0o600
    assert renewal.finish(tmp_path, signer)
    assert signer.kid != old.kid and filekey.read(tmp_path / "identity.jwk").kid == signer.kid
    assert signer.public_jwk() != old.public_jwk() and signer.alg == "ES256"
    assert renewal.pending(tmp_path) is None and not renewal.finish(tmp_path, signer)


def test_a_key_made_before_a_power_cut_is_not_made_again(tmp_path):
    old, _ = filekey.load_or_create(tmp_path / "identity.jwk")
    renewal.begin(tmp_path, old.kid)
    made = filekey.create(tmp_path / "identity.jwk")  # the cut: after the key's write, before the note's removal
    signer = SwappableSigner(old)
    assert renewal.finish(tmp_path, signer) and signer.kid == made.kid


def test_a_note_that_is_not_ours_is_refused(tmp_path):
    os.symlink(tmp_path / "elsewhere", renewal.note_path(tmp_path))
    with pytest.raises(IdentityError, match="not a note this device made"):
        renewal.pending(tmp_path)
    os.unlink(renewal.note_path(tmp_path))
    renewal.note_path(tmp_path).write_text("{}")
    os.chmod(renewal.note_path(tmp_path), 0o600)
    with pytest.raises(IdentityError, match="no old_kid"):
        renewal.pending(tmp_path)
