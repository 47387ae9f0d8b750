"""``none``, ``client_secret_basic`` and ``client_secret_post`` (RFC 6749 §2.3.1).

``none`` is a public client that sends its ``client_id`` (RFC 8628 §3.1);
``client_secret_basic`` form-encodes id and secret before base64 (§2.3.1, a
step many clients skip); ``client_secret_post`` puts both in the body.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import quote

from devicelink.oauth.auth import AuthParams, Outgoing, register


@dataclass(frozen=True)
class PublicClient:
    client_id: str

    def prepare(self, out: Outgoing, now: float) -> None:
        out.form.append(("client_id", self.client_id))


@dataclass(frozen=True)
class SecretBasic:
    client_id: str
    secret: str = field(repr=False)

    def prepare(self, out: Outgoing, now: float) -> None:
        pair = f"{quote(self.client_id, safe='')}:{quote(self.secret, safe='')}"
        out.headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()


@dataclass(frozen=True)
class SecretPost:
    client_id: str
    secret: str = field(repr=False)

    def prepare(self, out: Outgoing, now: float) -> None:
        out.form += [("client_id", self.client_id), ("client_secret", self.secret)]


@register("none")
def public(params: AuthParams) -> PublicClient:
    return PublicClient(params.client_id)


@register("client_secret_basic")
def basic(params: AuthParams) -> SecretBasic:
    return SecretBasic(params.client_id, params.secret or "")


@register("client_secret_post")
def post(params: AuthParams) -> SecretPost:
    return SecretPost(params.client_id, params.secret or "")
