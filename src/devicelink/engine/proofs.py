"""DPoP proofs for apps (RFC 9449 §7): ``POST /v1/dpop-proof``, and for which tokens.

With ``[provider] dpop = true`` the tokens the daemon hands out are bound to the
device's key, which never leaves the daemon: an app that uses one at a resource
server sends ``Authorization: DPoP <token>`` and a proof the daemon signs for it.

Who gets what (docs/dpop.md):

- A proof *for a token* (``access_token`` given; the proof's ``ath`` is its hash) only
  for a token this daemon handed that very app (``GET /v1/token``, a step-up), so a
  token that reached another app (a leak, a log) is no use there, and the per-app
  policy holds for DPoP tokens as for the rest. :meth:`AppProofs.handed_out` keeps the
  last :data:`LEDGER_SIZE` tokens handed out, with the apps each went to; a token
  rotated out of it is refused and the app asks ``GET /v1/token`` again.
- A proof *without a token* (no ``ath``: what a token endpoint takes) only for an app
  whose ``[[client]]`` entry says ``dpop_proofs_without_token = true``: it lets that app
  bind tokens of its own, from any server, to the device's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devicelink.errors import Refused

if TYPE_CHECKING:
    from devicelink.engine.answers import Issued
    from devicelink.engine.device import Device
    from devicelink.oauth.auth.dpop import DPoP
    from devicelink.policy import App

#: Tokens remembered, with the apps each was handed to: every app's live tokens, many times over.
LEDGER_SIZE = 1024


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """``POST /v1/dpop-proof``: the request the proof is for (``htm``, ``htu``), checked by ``ipc/``."""

    htm: str
    htu: str
    access_token: str | None = field(default=None, repr=False)
    nonce: str | None = None


class AppProofs:
    """The proofs one device signs for its apps, and the tokens it handed to which app."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._handed: dict[str, frozenset[str]] = {}  # access token -> the apps it was handed to

    @property
    def dpop(self) -> DPoP | None:
        return self.device.http.auth.dpop

    def handed_out(self, app: App, issued: Issued) -> None:
        """``app`` got ``issued``: it may have proofs for it. Nothing to remember without DPoP."""
        if self.dpop is None:
            return
        apps = self._handed.get(issued.access_token, frozenset())
        if app.name in apps:
            return
        if len(self._handed) >= LEDGER_SIZE and not apps:
            del self._handed[next(iter(self._handed))]  # the oldest: long rotated away
        self._handed[issued.access_token] = apps | {app.name}

    def forget(self) -> None:
        """The grant is gone (unpaired, ended): so are the tokens it gave."""
        self._handed.clear()

    def sign(self, app: App, asked: ProofRequest) -> str:
        dpop = self.dpop
        if dpop is None:
            raise Refused("invalid_request", "this daemon does not use DPoP ([provider] dpop = false): its tokens "
                          "are Bearer tokens, sent as 'Authorization: Bearer <token>' without a proof")
        if asked.access_token is not None:
            if app.name not in self._handed.get(asked.access_token, ()):
                raise Refused("forbidden", f"that access_token is not one devicelink handed to {app.name!r} (or it "
                              "is long replaced): proofs are signed only for an app's own tokens; ask GET "
                              "/v1/token for a token, then for its proof")
        elif not app.dpop_proofs_without_token:
            raise Refused("forbidden", f"{app.name!r} may have proofs for its own tokens only: send the access_token "
                          "the proof goes with (its ath), or set dpop_proofs_without_token = true in its [[client]] "
                          "entry")
        return dpop.proof(asked.htm, asked.htu, nonce=asked.nonce, access_token=asked.access_token)
