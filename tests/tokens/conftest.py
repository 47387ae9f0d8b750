"""Shared by the key and state-file tests."""

from __future__ import annotations

import os

import pytest

from devicelink.tokens import keys


@pytest.fixture(autouse=True)
def _no_credentials_and_no_leftover_locks(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    before = set(keys._held)
    yield
    for name in set(keys._held) - before:
        os.close(keys._held.pop(name))
