"""Who may ask the socket for what: the ``[[client]]`` policy, matched on peer credentials.

The kernel tells us who connected (``SO_PEERCRED``: uid and primary gid;
``SO_PEERGROUPS``: supplementary groups). Nothing the caller sends takes part.
The policy is the config file's ``[[client]]`` entries followed by
``clients.d/*.toml`` beside it, in file-name order, so an app's installer adds
one file and runs ``systemctl reload devicelink``.

Rules (docs/socket-api.md, "Who may ask"):

- Default deny: a process no entry matches gets 403 ``forbidden``, except
  ``/v1/health``.
- uid 0 and the daemon's own uid match the built-in entry ``root``: the whole
  grant and admin. They can read the key and the state file anyway.
- An entry naming a ``user`` or ``uid`` is more specific than one naming a
  ``group``: it wins. Among group entries the first in file order whose group
  the process is in wins. Entries are never merged, so what an app may have
  is always one entry you can point at.
- A broken drop-in, or an entry that names an unknown user or group or a uid
  already matched by another entry, is reported (``Policy.problems``, logged
  at start and on reload, shown by ``devicelink doctor``) and skipped; the
  rest keeps working. Errors in the main config file stop the daemon instead.
- The config file, ``clients.d`` and every drop-in must be owned by root or
  the daemon's user and not be writable by group or others: whoever can change
  them can make itself an admin app. One that is not fails the whole load
  (:class:`~devicelink.config.UntrustedFile`): the daemon does not start, and
  a reload keeps the previous policy and says so.

Users and groups are resolved when the policy is loaded (at start and on
SIGHUP), not per request: a name service lookup per connection would be slow
and could block the event loop.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from devicelink.config import (DROP_IN_DIR, ClientPolicy, Config, UntrustedFile, check_trusted, load_drop_in,
                               trusted_owners)
from devicelink.errors import ConfigError

__all__ = ["App", "Peer", "Policy", "load"]


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection, from the kernel: ``SO_PEERCRED``
    (pid, uid, primary gid) and ``SO_PEERGROUPS`` (supplementary groups), read
    once when the connection is accepted."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class App:
    """What one matched local app may do.

    ``scope`` None means the whole grant (the built-in ``root`` entry);
    otherwise the most this app may get, possibly empty (status and events
    only). ``resources`` None means any resource ``[provider] resource``
    lists; otherwise exactly these. ``device_scope`` is the most it may get of
    device-level tokens (``[device_token]``): None all of them, empty none.
    """

    name: str
    scope: frozenset[str] | None
    resources: frozenset[str] | None
    admin: bool = False
    device_scope: frozenset[str] | None = frozenset()
    #: May have DPoP proofs that go with no token of its own (docs/dpop.md).
    dpop_proofs_without_token: bool = False

    def allows_scope(self, wanted: frozenset[str]) -> frozenset[str]:
        """The requested scopes this app may not have (empty when all are allowed)."""
        return frozenset() if self.scope is None else wanted - self.scope


ROOT = App("root", scope=None, resources=None, admin=True, device_scope=None, dpop_proofs_without_token=True)


@dataclass
class Policy:
    """The resolved policy: uid -> app, then (gid, app) in order."""

    by_uid: dict[int, App] = field(default_factory=dict)
    by_group: list[tuple[int, App]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    trusted_uids: frozenset[int] = frozenset({0})

    def identify(self, peer: Peer) -> App | None:
        if peer.uid in self.trusted_uids:
            return ROOT
        app = self.by_uid.get(peer.uid)
        if app is not None or not self.by_group:
            return app
        groups = {peer.gid, *peer.groups}
        for gid, app in self.by_group:
            if gid in groups:
                return app
        return None

    def __len__(self) -> int:
        return len(self.by_uid) + len(self.by_group)


def load(cfg: Config, own_uid: int | None = None) -> Policy:
    """Build the policy from ``cfg.clients`` and the drop-ins beside ``cfg.path``."""
    owners = trusted_owners(own_uid)
    policy = Policy(trusted_uids=owners)
    names: dict[str, Path | None] = {}
    _add_entries(policy, cfg.clients, names)
    for path in drop_in_files(cfg, owners):
        try:
            entries = load_drop_in(path, owners)
        except UntrustedFile:
            raise  # not skipped: the whole load fails (a reload keeps the previous policy)
        except ConfigError as exc:
            policy.problems.append(f"{exc}; skipped")
            continue
        _add_entries(policy, entries, names)
    return policy


def drop_in_dir(cfg: Config) -> Path | None:
    """``clients.d`` beside the config file (None without a config file)."""
    return None if cfg.path is None else cfg.path.parent / DROP_IN_DIR


def drop_in_files(cfg: Config, owners: frozenset[int] | None = None) -> list[Path]:
    """``clients.d/*.toml`` beside the config file, by name (hidden files and others ignored).
    The directory must be owned by root or ``owners`` and not writable by group or others
    (:class:`~devicelink.config.UntrustedFile`): else anyone could add a drop-in."""
    folder = drop_in_dir(cfg)
    if folder is None:
        return []
    try:
        check_trusted(folder, os.stat(folder), trusted_owners() if owners is None else owners)
        return sorted(p for p in folder.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list the per-app policy drop-ins: {exc.strerror}") from None


def _add_entries(policy: Policy, entries: tuple[ClientPolicy, ...], names: dict[str, Path | None]) -> None:
    for entry in entries:
        where = f"{entry.origin}: [[client]] {entry.name!r}" if entry.origin else f"[[client]] {entry.name!r}"
        problem = _add(policy, entry, names)
        if problem:
            policy.problems.append(f"{where}: {problem}; skipped")


def _add(policy: Policy, entry: ClientPolicy, names: dict[str, Path | None]) -> str | None:
    if entry.name in names or entry.name == ROOT.name:
        return f"the name is already used{f' in {names[entry.name]}' if names.get(entry.name) else ''}"
    app = App(entry.name,
              scope=frozenset(entry.scope.split()) if entry.scope else frozenset(),
              resources=frozenset(entry.resource) if entry.resource is not None else None,
              admin=entry.admin, device_scope=frozenset((entry.device_scope or "").split()),
              dpop_proofs_without_token=entry.dpop_proofs_without_token)
    if entry.group is not None:
        try:
            gid = grp.getgrnam(entry.group).gr_gid
        except KeyError:
            return f"no group named {entry.group!r} on this system"
        if any(g == gid for g, _ in policy.by_group):
            return f"group {entry.group!r} is already matched by another entry"
        policy.by_group.append((gid, app))
    else:
        uid = entry.uid
        if entry.user is not None:
            try:
                uid = pwd.getpwnam(entry.user).pw_uid
            except KeyError:
                return f"no user named {entry.user!r} on this system"
        assert uid is not None
        if uid in policy.trusted_uids:
            return f"uid {uid} is root or the daemon's own user, which always have the whole grant"
        if uid in policy.by_uid:
            return f"uid {uid} is already matched by {policy.by_uid[uid].name!r}"
        policy.by_uid[uid] = app
    names[entry.name] = entry.origin
    return None
