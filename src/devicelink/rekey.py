"""``devicelink rekey``: re-encrypt the state under a new key without losing the grant.

API::

    rekey(cfg, new_source=None, *, new_key=None, credential=CREDSTORE_PATH,
          new_credential=None, seal_with="auto") -> str      # the message to print

:class:`ConfigError` (exit 78): the sources or arguments, a credential, systemd-creds.
:class:`StoreError` (exit 1): the daemon is running, the state does not open, I/O.

**Which keys.** The new key is for the source the config selects (``[storage] key``;
with ``auto``, the source the old key came from). ``new_source`` only states it, and
must agree: moving between sources means setting ``[storage] key`` to the new source
first, so that the daemon's next start certainly loads the new key. The old key is
the first key available here that opens the state: the credential (from
``$CREDENTIALS_DIRECTORY`` when this process was given one, else ``systemd-creds
decrypt`` of ``credential``, which needs root) and ``state_dir/state.key``, the
configured source first. The new key:

- ``file``: 32 random bytes (or ``new_key``), written to ``state_dir/state.key``;
- ``credential``: the key inside ``new_credential`` (sealed by the operator, at another
  path than ``credential``), or 32 random bytes (or ``new_key``) sealed here with
  ``systemd-creds encrypt --with-key=seal_with`` and checked to decrypt; installed at
  ``credential``, the path the unit loads.

Run as root, files in the state directory are written as its owner (seteuid), so
the daemon can read them; ``systemd-creds`` and the credential store run as root.

**Steps**, each durable (file fsync, rename, directory fsync) before the next:

1. lock ``state_dir/state.lock`` without waiting; held means the daemon runs: refuse.
2. ``R`` = the record under the old key ``K0``.
3. journal: ``state_dir/rekey/state.bin`` = ``R`` under ``K0``.
4. ``state_dir/state.bin`` = ``R`` under the new key ``K1``.
5. ``state_dir/rekey/switching`` (empty), then the switch: rename the new
   ``state.key`` or the new credential into place. From that rename on, a start
   loads ``K1``; before it, ``K0``.
6. finish: save ``R`` once more under ``K1`` (the store keeps a previous generation,
   which must not stay under ``K0``), delete the journal.

The registration access token in ``registration.json`` (sealed with the state key,
``tokens/sealed.py``) gets a second seal under ``K1`` before step 3; whoever next loads
a key keeps only the seals it opens (``registration.settle_seals``: ``rekey`` itself
for ``file``, else the daemon's next start), so it opens on either side of the switch. Done here for ``file``;
   for ``credential`` by the daemon's next start, the only one that knows for
   certain which credential the unit loads.

**Crash analysis.** Every start settles a journal before it opens the store
(``keys.finish_rekey``, from ``load_key``), with the key it loaded. A key that opens
the journal is ``K0``: the switch did not happen, so the journal's ``R`` is saved over
the state and the journal removed (rolled back). A key that does not open the journal
but opens the state is ``K1``: step 6 is (re)done (committed). By the instant of the cut:

- before 3 is durable: state ``R``/``K0``, key ``K0``; a journal without its file
  is dropped.
- from 3 to the rename in 5: the start loads ``K0``, which opens the journal:
  rolled back to ``R``/``K0``.
- after the rename: ``K1`` opens the state (written in 4) and not the journal: committed.
- during 6: ``K1`` again; committed again (every step is idempotent).

So at no instant does the key the next start loads open no copy of ``R``; the daemon
never runs in between (the lock, and the journal settled before the store opens),
so ``R`` is still the grant when it is restored.

An error before step 5's rename rolls back at once (what any start would do). An
error in or after it leaves the journal: a rename may have happened even if its
directory fsync failed, and only a start knows which key it loads. ``rekey`` run
again settles a leftover journal first: without ``switching`` by rolling back (the
new key was never installed), with it as a start of the configured source would
(refusing for ``auto``, where only the unit knows).

Until the journal is settled ``K0`` still opens its copy; afterwards ``K0`` opens
nothing (both store generations are under ``K1``) and, after a move to the
credential, ``state.key`` is deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

from devicelink.config import Config
from devicelink.errors import ConfigError, StoreError, StoreUnreadable
from devicelink.files import as_owner as _as_owner
from devicelink.tokens import keys
from devicelink.tokens.store import EncryptedFileStore, atomic_write, fsync_dir

logger = logging.getLogger(__name__)

SOURCES = ("file", "credential")
SEAL_WITH = ("auto", "host", "tpm2", "host+tpm2")
SYSTEMD_CREDS_TIMEOUT = 120.0  # a TPM can take seconds


def rekey(cfg: Config, new_source: str | None = None, *, new_key: bytes | None = None,
          credential: Path = keys.CREDSTORE_PATH, new_credential: Path | None = None,
          seal_with: str = "auto") -> str:
    """Re-encrypt the state under a new key (see the module docstring). Returns what was
    done and, for a credential, what the daemon's next start completes."""
    state_dir = Path(cfg.storage.state_dir)
    credential = Path(credential)
    _check_arguments(new_source, new_key, credential, new_credential, seal_with)
    if not state_dir.is_dir():
        raise StoreError(f"{state_dir}: no state directory (storage.state_dir); nothing to re-key")
    with _as_owner(state_dir):
        lock = keys.try_lock_state_dir(state_dir)
    try:
        _settle_journal(cfg, state_dir, credential)
        record, old_key, old_source = _open_state(cfg, state_dir, credential)
        target = _target(cfg, new_source, old_source)
        key, sealed = _new_key(target, new_key, new_credential, seal_with)
        if key == old_key:
            raise ConfigError("rekey: the new key is the key in use; nothing to re-key")
        if old_key is not None:  # the registration access token opens with either key until a start settles it
            from devicelink.identity.registration import reseal

            with _as_owner(state_dir):
                reseal(state_dir, old_key, key)
        if record is not None:
            assert old_key is not None and old_source is not None
            try:
                with _as_owner(state_dir):
                    _write_journal(state_dir, old_key, record)
                    EncryptedFileStore(state_dir, key).save(record)
                    _mark_switching(state_dir)
            except Exception:
                # Nothing switched yet: the old key is what every start loads. Undo now.
                # (Not on BaseException: an interrupt is left, like a crash, for the next run.)
                _roll_back(state_dir, old_key, old_source)
                raise
        try:
            _switch(state_dir, target, key, sealed, credential, new_credential)
            if target == "file":
                with _as_owner(state_dir):
                    keys.finish_rekey(state_dir, key, "file")
                    from devicelink.identity.registration import settle_seals

                    settle_seals(state_dir, key)
        except StoreError as exc:
            if record is None:
                raise
            # The rename may have happened although this failed: only a start knows which key it loads.
            raise StoreError(f"{exc}; the daemon's next start finishes or undoes the re-key (the grant opens "
                             "with the key it loads)") from None
        return _done(cfg, state_dir, target, old_source, record is not None, credential)
    finally:
        os.close(lock)


def _check_arguments(new_source: str | None, new_key: bytes | None, credential: Path,
                     new_credential: Path | None, seal_with: str) -> None:
    if new_source not in (None, *SOURCES):
        raise ConfigError(f"rekey: the new source must be file or credential, got {new_source!r}")
    if new_key is not None and len(new_key) != keys.KEY_BYTES:
        raise ConfigError(f"rekey: a new key must be {keys.KEY_BYTES} bytes, got {len(new_key)}")
    if seal_with not in SEAL_WITH:
        raise ConfigError(f"rekey: --seal must be one of {', '.join(SEAL_WITH)}, got {seal_with!r}")
    if new_credential is not None:
        if new_source == "file":
            raise ConfigError("rekey: --new-credential is for a credential key source")
        if new_key is not None:
            raise ConfigError("rekey: give a new credential or a new key, not both")
        if os.path.realpath(new_credential) == os.path.realpath(credential):
            raise ConfigError(f"rekey: the new credential must not be at {credential}, the path the unit loads "
                              "(that switches the key before the state is re-encrypted); seal it to another "
                              "path, and rekey moves it into place")


def _target(cfg: Config, new_source: str | None, old_source: str | None) -> str:
    """The source of the new key: the one the daemon's next start will certainly use."""
    configured = cfg.storage.key
    if configured == "auto":
        target = new_source or old_source or "file"
        if old_source is not None and target != old_source:
            raise ConfigError(f"rekey: to move the key from the {old_source} to the {target}, first set [storage] "
                              f"key = \"{target}\" in {cfg.path} (with \"auto\" only the unit decides which key the "
                              "next start loads)")
        return target
    if new_source is not None and new_source != configured:
        raise ConfigError(f"rekey: to move the key to the {new_source}, first set [storage] key = \"{new_source}\" "
                          f"in {cfg.path} (it says \"{configured}\"), so the next start loads the new key")
    return configured


# -- the old key --------------------------------------------------------------------------

def _candidates(cfg: Config, state_dir: Path, credential: Path) -> Iterator[tuple[bytes, str]]:
    """The keys available here, the configured source first; each looked up only when needed."""
    order = ("file", "credential") if cfg.storage.key == "file" else ("credential", "file")
    for source in order:
        if source == "credential":
            key = _available_credential(credential)
            if key is not None:
                yield key, "credential"
        elif os.path.lexists(state_dir / keys.KEY_FILE):
            with _as_owner(state_dir):  # the key must be the owner's own (keys.read_key_file)
                key = keys.read_key_file(state_dir / keys.KEY_FILE)
            yield key, "file"


def _available_credential(credential: Path) -> bytes | None:
    """The credential this process was given, else the sealed one at ``credential``, else None."""
    given = keys.credential_path()
    if given is not None and os.path.lexists(given):
        return keys.read_credential()
    if os.path.lexists(credential):
        return _decrypt(credential)
    return None


def _open_state(cfg: Config, state_dir: Path,
                credential: Path) -> tuple[dict[str, Any] | None, bytes | None, str | None]:
    """(record, old key, its source): the first available key that opens the state. With no
    state at all, (None, the first key available or None, its source or None)."""
    tried: list[str] = []
    reason = ""
    first: tuple[bytes, str] | None = None
    for key, source in _candidates(cfg, state_dir, credential):
        first = first or (key, source)
        try:
            with _as_owner(state_dir):
                record = EncryptedFileStore(state_dir, key).load()
        except StoreUnreadable as exc:
            tried.append(f"the key from the {source}")
            reason = str(exc)
            continue
        return record, key, source
    if tried:
        raise StoreError(f"the state does not open with {' nor '.join(tried)} ({reason}); nothing changed")
    if _state_files(state_dir):
        raise StoreError(f"{state_dir}: a state exists, but no key is here to open it ([storage] key = "
                         f"\"{cfg.storage.key}\": no {keys.KEY_FILE}, no credential at {credential}); nothing changed")
    return None, *(first or (None, None))


# -- a journal left by an earlier re-key ---------------------------------------------------

def _settle_journal(cfg: Config, state_dir: Path, credential: Path) -> None:
    """Settle a journal an earlier re-key left, as safely as a start would (see the module docstring)."""
    journal = state_dir / keys.JOURNAL_DIR
    if not journal.is_dir():
        return
    if (journal / keys.SWITCHING).exists():
        if cfg.storage.key == "auto":
            raise StoreError(f"{journal}: an earlier re-key waits for the daemon's next start to finish it (with "
                             "\"auto\" only the unit knows which key that start loads): start the daemon once, then "
                             "re-key again")
        for key, source in _candidates(cfg, state_dir, credential):
            if source == cfg.storage.key:  # the key the next start loads settles it, as that start would
                with _as_owner(state_dir):
                    if keys.finish_rekey(state_dir, key, source) != "unresolved":
                        return
                raise StoreError(f"{journal}: an earlier re-key is unfinished, and neither it nor the state opens "
                                 f"with the key from the {source}; restore the old or the new key (docs/keys.md)")
        # No key of the configured source here: the switch, which installs one, did not complete.
    # The switch never completed, so the old key is the one every start loads, and any key
    # here that opens the journal is it (the new key was never installed).
    for key, source in _candidates(cfg, state_dir, credential):
        with _as_owner(state_dir):
            if keys.finish_rekey(state_dir, key, source) != "unresolved":
                return
    raise StoreError(f"{journal}: an earlier re-key stopped before its switch, and no key here opens it; restore "
                     "the old key, then re-key again (docs/keys.md)")


# -- the new key --------------------------------------------------------------------------

def _new_key(target: str, new_key: bytes | None, new_credential: Path | None,
             seal_with: str) -> tuple[bytes, bytes | None]:
    """(key, sealed credential or None). Nothing is written here."""
    if target == "file":
        if new_credential is not None:
            raise ConfigError("rekey: --new-credential is for a credential key source")
        return new_key or os.urandom(keys.KEY_BYTES), None
    if new_credential is not None:
        try:
            sealed = Path(new_credential).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{new_credential}: cannot read the new credential: {exc.strerror}") from None
        return _decrypt(Path(new_credential)), sealed
    key = new_key or os.urandom(keys.KEY_BYTES)
    sealed = systemd_creds(["encrypt", f"--name={keys.CREDENTIAL_NAME}", f"--with-key={seal_with}", "-", "-"],
                           key, what=f"--with-key={seal_with}")
    # Prove it opens before anything depends on it.
    if systemd_creds(["decrypt", f"--name={keys.CREDENTIAL_NAME}", "--newline=no", "-", "-"], sealed,
                     what="(the credential just sealed)") != key:
        raise StoreError("systemd-creds: the credential just sealed does not decrypt to its key")
    return key, sealed


def _decrypt(path: Path) -> bytes:
    data = systemd_creds(["decrypt", f"--name={keys.CREDENTIAL_NAME}", "--newline=no", str(path), "-"],
                         what=str(path))
    return keys.check_credential(data, f"the credential {path}")


def systemd_creds(args: list[str], stdin: bytes | None = None, what: str = "") -> bytes:
    """Run ``systemd-creds ARGS``; its stdout. :class:`ConfigError` with its own words when it fails."""
    exe = shutil.which("systemd-creds")
    if exe is None:
        raise ConfigError("systemd-creds is not installed: credentials need systemd 250 or later")
    try:
        done = subprocess.run([exe, *args], input=stdin or b"", capture_output=True,
                              timeout=SYSTEMD_CREDS_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"systemd-creds {args[0]} {what}: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines()
                 if line.strip() and "not located on encrypted media" not in line]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        hint = " (run as root)" if "not permitted" in why or "denied" in why.lower() else ""
        raise ConfigError(f"systemd-creds {args[0]} {what} failed: {why}{hint}")
    return done.stdout


# -- the steps ----------------------------------------------------------------------------

def _write_journal(state_dir: Path, old_key: bytes, record: dict[str, Any]) -> None:
    journal = state_dir / keys.JOURNAL_DIR
    try:
        os.mkdir(journal, 0o700)
        fsync_dir(state_dir)  # the directory entry is durable before anything relies on it
    except OSError as exc:
        raise StoreError(f"{journal}: cannot create: {exc.strerror}") from None
    EncryptedFileStore(journal, old_key).save(record)


def _mark_switching(state_dir: Path) -> None:
    journal = state_dir / keys.JOURNAL_DIR
    try:
        os.close(os.open(journal / keys.SWITCHING, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        fsync_dir(journal)
    except OSError as exc:
        raise StoreError(f"{journal / keys.SWITCHING}: cannot create: {exc.strerror}") from None


def _roll_back(state_dir: Path, old_key: bytes, old_source: str) -> None:
    try:
        with _as_owner(state_dir):
            keys.finish_rekey(state_dir, old_key, old_source)
    except Exception as exc:  # the next start does the same; keep the first error
        logger.warning("the re-key failed and could not be undone now (%s); the daemon's next start undoes it", exc)


def _switch(state_dir: Path, target: str, key: bytes, sealed: bytes | None, credential: Path,
            new_credential: Path | None) -> None:
    """Step 5: the one rename after which a start loads the new key."""
    if target == "file":
        with _as_owner(state_dir):
            atomic_write(state_dir / keys.KEY_FILE, key)
        keys.forget_exposed(state_dir)
        return
    assert sealed is not None
    try:
        credential.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{credential.parent}: cannot create: {exc.strerror}") from None
    atomic_write(credential, sealed)
    keys.forget_exposed(state_dir)
    if new_credential is not None:
        try:
            os.unlink(new_credential)
            fsync_dir(Path(new_credential).parent)
        except OSError:
            pass


def _done(cfg: Config, state_dir: Path, target: str, old_source: str | None, had_record: bool,
          credential: Path) -> str:
    what = "the state is encrypted under it" if had_record else "there was no grant to keep"
    if target == "file":
        tail = f"; {credential} is no longer needed" if old_source == "credential" else ""
        return f"re-keyed: {state_dir / keys.KEY_FILE} is a new key, and {what}{tail}"
    finish = ("; the daemon's next start completes the re-key (until then the old key still opens a copy)"
              if had_record else "")
    return (f"re-keyed: the new credential is at {credential}, and {what}{finish}. The unit must load it: "
            f"LoadCredentialEncrypted={keys.CREDENTIAL_NAME}:{credential}")


def _state_files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("state*.bin"))

