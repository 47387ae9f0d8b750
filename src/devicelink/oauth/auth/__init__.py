"""Client authentication: one hook every request to the authorization server passes through.

``oauth/http.py`` builds each request as an :class:`Outgoing` and hands it to the
device's :class:`ClientAuth` just before it goes on the wire, every time it
goes, retries included; so a method that must be fresh on each send (a
``private_key_jwt`` assertion's ``jti`` and ``exp``, a DPoP proof) is.

A method is one module here that registers a factory::

    @register("client_secret_basic")
    def basic(params: AuthParams) -> Method: ...

and ``[provider] client_auth`` names it. A DPoP proof (``dpop.py``, RFC 9449) is not a
method: with ``[provider] dpop = true`` it is added after whichever method, by the same
hook. The flows in ``oauth/`` never see any of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from devicelink.identity.signer import Signer
    from devicelink.oauth.auth.dpop import DPoP


@dataclass
class Outgoing:
    """A request about to be sent: ``form`` and ``headers`` are the hook's to add to.
    ``authenticate`` is False for requests that take no client authentication (discovery)."""

    kind: str
    method: str
    url: str
    form: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    authenticate: bool = True
    body: bytes | None = None  # a JSON body (registration), sent instead of the form

    def __repr__(self) -> str:  # forms and headers carry secrets
        return f"Outgoing({self.kind} {self.method} {self.url})"


def _unknown() -> str | None:
    return None


@dataclass(frozen=True)
class AuthParams:
    """What a method may need, from the config (the secret read from its file).

    The methods that sign (``private_key_jwt``) also get the device's ``signer``, the
    ``issuer``, what ``audience`` names (``[provider] assertion_audience``), the
    ``token_endpoint`` as known when a request is sent (discovery may find it), and a
    ``wall_clock``: ``prepare``'s ``now`` is monotonic, and a JWT's ``iat`` and ``exp`` are not."""

    client_id: str
    secret: str | None = field(default=None, repr=False)
    signer: Signer | None = None
    issuer: str | None = None
    audience: tuple[str, ...] = ("issuer",)
    token_endpoint: Callable[[], str | None] = field(default=_unknown, repr=False)
    wall_clock: Callable[[], float] = field(default=time.time, repr=False)


class Method(Protocol):
    def prepare(self, out: Outgoing, now: float) -> None:
        """Add this method's parameters or headers to ``out`` (RFC 6749 §2.3)."""


METHODS: dict[str, Callable[[AuthParams], Method]] = {}


def register(name: str) -> Callable[[Callable[[AuthParams], Method]], Callable[[AuthParams], Method]]:
    def add(factory: Callable[[AuthParams], Method]) -> Callable[[AuthParams], Method]:
        METHODS[name] = factory
        return factory
    return add


class ClientAuth:
    """The device's client authentication: the method ``[provider] client_auth`` names,
    applied to every request that takes it, and a DPoP proof after it when ``dpop`` is given."""

    def __init__(self, client_id: str, method: str = "none", secret: str | None = None, *,
                 dpop: DPoP | None = None, **params: Any) -> None:
        """``params``: the rest of :class:`AuthParams`, for the methods that need them."""
        try:
            factory = METHODS[method]
        except KeyError:
            raise ValueError(f"unknown client authentication method {method!r}") from None
        self.client_id, self.method, self.dpop = client_id, method, dpop
        self._method = factory(AuthParams(client_id, secret, **params))

    def __repr__(self) -> str:
        return f"ClientAuth({self.client_id!r}, {self.method!r}{', dpop' if self.dpop else ''})"

    @property
    def signs(self) -> bool:
        """Whether requests carry the wall clock under the device's signature (``iat``/``exp``
        of a client assertion, ``iat`` of a DPoP proof), so a wrong clock gets them refused."""
        return self.method == "private_key_jwt" or self.dpop is not None

    def prepare(self, out: Outgoing, now: float = 0.0) -> None:
        if out.authenticate:
            self._method.prepare(out, now)
            if self.dpop is not None:
                self.dpop.prepare(out, now)

    def apply(self, form: list[tuple[str, str]], headers: dict[str, str]) -> None:
        """``prepare`` for a bare form and headers."""
        out = Outgoing("request", "POST", "", form, headers)
        self.prepare(out)


from devicelink.oauth.auth import private_key_jwt as _private_key_jwt  # noqa: E402,F401  (registers its methods)
from devicelink.oauth.auth import secret as _secret  # noqa: E402,F401
