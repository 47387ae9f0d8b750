"""The device authorization grant (RFC 8628) as a generator. No I/O, no clock reads.

The generator yields :class:`Send` (a request, and the earliest monotonic time
it may go out) and :class:`Show` (a code for the screen); the adapter in
``oauth/http.py`` sends the request and sends back the :class:`Response` or
:class:`Failure`, which carries the time it arrived. So every timing rule is
decided here, and tests step the grant by hand:

- polls are spaced ``interval`` seconds from the *previous answer*, never
  overlap (one request at a time by construction), and stop locally at the
  code's ``expires_in`` whatever the server keeps saying (RFC 8628 §3.5, G6):
  the last one goes out at that deadline itself when an interval allows it,
  never after it;
- ``slow_down`` adds 5 s for this and all later polls and never drops below an
  interval the server sends (§3.5, G9, G10);
- no answer, 5xx and 429 back off exponentially with jitter, capped (§3.5
  "reduce its polling frequency"; G3, G13, G14), honouring ``Retry-After``;
- ``access_denied``, ``expired_token`` and every other error end the flow (§3.5).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generator, Iterable
from urllib.parse import urlsplit

from devicelink.errors import AuthorizationDenied, DeviceCodeExpired, EndpointGone, GrantFailed, ProtocolViolation
from devicelink.lifecycle import PairingCode
from devicelink.oauth import messages as m
from devicelink.oauth import metadata as md
from devicelink.oauth.steps import (MAX_RETRY_AFTER, Backoff, Send, Show, Step, backoff_delay, exchange,
                                    reply_time, transient_delay)
from devicelink.text import sanitize
from devicelink.tokens.model import TokenSet

__all__ = ["Backoff", "Send", "Show", "Step", "VerificationRule", "backoff_delay", "device_flow", "discover",
           "discovery_answer", "exchange", "probe", "reply_time", "resolve_endpoints", "transient_delay"]

SLOW_DOWN_STEP = 5  # RFC 8628 §3.5

#: Errors that mean the user said no. Entra says authorization_declined (RFC-CHECKLIST F).
DENIED = frozenset({"access_denied", "authorization_declined"})
#: Errors that mean the code is dead. Entra/ADAL say code_expired (G22); Auth0 says
#: invalid_grant after its one expired_token.
EXPIRED = frozenset({"expired_token", "code_expired"})
#: Statuses without an OAuth error that say an endpoint is not (or no longer) there.
GONE = frozenset({404, 410})


def discover(issuer: str, backoff: Backoff | None) -> Generator[Step, m.Reply, dict]:
    """RFC 8414 metadata, then OpenID Connect discovery; the issuer must match exactly."""
    return md.parse_metadata((yield from discovery_answer(issuer, backoff)), issuer)


def discovery_answer(issuer: str, backoff: Backoff | None) -> Generator[Step, m.Reply, m.Response]:
    """The first 200 answer to RFC 8414's metadata request, then OpenID Connect discovery's
    (:func:`metadata.parse_metadata` reads it; its headers say how long it may be kept).

    With a ``backoff``, no answer, a 5xx or a 429 is retried until the server answers (the
    daemon). Without one, each document is asked for once (``doctor``): an answer that is
    not 200 moves on to the next, and no answer at all raises :class:`GrantFailed`."""
    answers = []
    for request in md.metadata_requests(issuer):
        resp = yield from exchange(request, backoff)
        if resp.status == 200:
            return resp
        answers.append(f"{request.url} answered {resp.status}")
    raise ProtocolViolation("no discovery document: " + "; ".join(answers)
                            + " (set the endpoints in [provider] for servers without discovery)")


def probe(urls: Iterable[str]) -> Generator[Step, m.Reply, list[tuple[str, m.Response]]]:
    """One GET to each of ``urls``, without client authentication, once: do the endpoints
    set in the config answer at all (``doctor``, for servers without discovery)? Every
    answer is returned, of any status, for the caller to judge; the first URL that gives
    none raises :class:`GrantFailed`, as in :func:`exchange` without a backoff."""
    answers = []
    for url in urls:
        answers.append((url, (yield from exchange(m.probe_request(url), None))))
    return answers


def resolve_endpoints(metadata: dict, configured: dict[str, str]) -> m.Endpoints:
    """Explicit endpoints in the config win over discovered ones (RFC-CHECKLIST C5, G26)."""
    def pick(name: str) -> str | None:
        found = metadata.get(name)
        return configured.get(name) or (found if isinstance(found, str) and found else None)

    token = pick("token_endpoint")
    device = pick("device_authorization_endpoint")
    if not token or not device:
        missing = "token_endpoint" if not token else "device_authorization_endpoint"
        raise ProtocolViolation(f"the server's metadata has no {missing}; set it in [provider]")
    methods = metadata.get(md.AUTH_METHODS)
    return m.Endpoints(token_endpoint=token, device_authorization_endpoint=device,
                       revocation_endpoint=pick("revocation_endpoint"),
                       revocation_auth_methods=tuple(sanitize(x, 80) for x in methods if isinstance(x, str))
                       if isinstance(methods, list) else None)


def insecure_endpoint(endpoints: m.Endpoints, allow_insecure_http: bool) -> str | None:
    """The first discovered endpoint not reached over TLS (http:// only to loopback, when allowed),
    as ``"name url"``; None when all are fine (RFC 8414 §2: endpoints MUST be https)."""
    from devicelink.config import transport_allowed

    for name in m.ENDPOINT_NAMES:
        url = getattr(endpoints, name)
        if url and not transport_allowed(url, allow_insecure_http):
            return f"{name} {url}"
    return None


@dataclass(frozen=True)
class VerificationRule:
    """Where the owner may be sent to approve a code (issue 10 item 6: phishing URIs).

    ``verification_uri`` and ``verification_uri_complete`` must be https (http only to a
    loopback host, and only with ``allow_insecure_http``), on one of ``hosts`` (the issuer's,
    and ``[provider] verification_hosts``: exact names), and ``_complete`` on the plain URI's host.
    """

    hosts: frozenset[str]
    allow_insecure_http: bool = False

    @classmethod
    def of(cls, issuer: str, verification_hosts: Iterable[str] = (),
           allow_insecure_http: bool = False) -> VerificationRule:
        issuer_host = (urlsplit(issuer).hostname or "").lower()
        return cls(frozenset({issuer_host, *(h.lower() for h in verification_hosts)}), allow_insecure_http)

    def check(self, code: m.DeviceAuthorization) -> None:
        """Raise :class:`ProtocolViolation` unless the owner may be sent to ``code``'s URIs."""
        from devicelink.config import transport_allowed

        for name, uri in (("verification_uri", code.verification_uri),
                          ("verification_uri_complete", code.verification_uri_complete)):
            if uri is not None and not transport_allowed(uri, self.allow_insecure_http):
                shown = sanitize(f"{urlsplit(uri).scheme}://{urlsplit(uri).netloc}", 120)
                raise ProtocolViolation(f"the server's {name} {shown!r} is not https "
                                        "(http:// only to a loopback host, with allow_insecure_http)")
        host = self._host(code.verification_uri, "verification_uri")
        if host not in self.hosts:
            raise ProtocolViolation(
                f"the server's verification_uri is on host {sanitize(host, 80)!r}, not the issuer's; "
                "if it is your provider's own, list it in [provider] verification_hosts")
        if code.verification_uri_complete is not None:
            complete = self._host(code.verification_uri_complete, "verification_uri_complete")
            if complete != host:
                raise ProtocolViolation(
                    f"the server's verification_uri_complete is on host {sanitize(complete, 80)!r}, "
                    f"not on verification_uri's host {sanitize(host, 80)!r}")

    @staticmethod
    def _host(uri: str, name: str) -> str:
        parts = urlsplit(uri)
        if parts.username is not None or parts.password is not None:  # https://id.example@evil.test/
            raise ProtocolViolation(f"the server's {name} has a user name in it; refused as a phishing lure")
        return (parts.hostname or "").lower()


def device_flow(endpoints: m.Endpoints, scope: str | None, resource: tuple[str, ...],
                issuer: str, client_id: str, rng: random.Random,
                extra: tuple[tuple[str, str], ...] = (),
                verification: VerificationRule | None = None) -> Generator[Step, m.Reply, TokenSet]:
    """One device authorization and its polling, to tokens or to a :class:`GrantFailed`.

    ``verification``: where the code may send the owner; by default the issuer's host only,
    over https (or http when the issuer itself is a loopback http:// URL, which the config
    allows only with ``allow_insecure_http``). A code that breaks it is never shown."""
    if verification is None:
        verification = VerificationRule.of(issuer, (), urlsplit(issuer).scheme == "http")
    backoff = Backoff(rng)
    resp = yield from exchange(m.device_authorization_request(endpoints, scope, resource, extra), backoff)
    if (error := m.oauth_error(resp)) is not None:
        raise GrantFailed(f"the authorization server refused the device authorization request: "
                          f"{m.error_text(resp)}", error)
    if resp.status in GONE:  # a 404 page: the endpoint moved, or the metadata we reused is stale
        url = sanitize(endpoints.device_authorization_endpoint or "", 120)
        raise EndpointGone(f"the device authorization endpoint {url} answered {resp.status}")
    code = m.parse_device_authorization(resp)
    verification.check(code)
    yield Show(PairingCode(code.user_code, code.verification_uri, code.verification_uri_complete,
                           code.expires_at))

    poll = m.device_token_request(endpoints, code)
    interval = code.interval
    backoff = Backoff(rng, base=interval)
    at = resp.received_at
    next_at = at + interval  # §3.5: wait before the first poll too
    while True:
        # Poll while a poll fits before the deadline; one last poll at the deadline itself when a
        # full interval since the last answer allows it (a backoff or Retry-After past it is cut
        # short), never after it: an approval in the last interval still counts (issue 10 item 11).
        if next_at > code.expires_at and at + interval <= code.expires_at:
            next_at = code.expires_at
        if next_at > code.expires_at:
            raise DeviceCodeExpired("the code expired before it was approved", "expired_token")
        reply = yield Send(poll, next_at)
        at = reply_time(reply)
        error = m.oauth_error(reply) if isinstance(reply, m.Response) else None
        if isinstance(reply, m.Response) and reply.status == 429 and error in (None, "slow_down"):
            error = "slow_down"  # G3: a bare 429 is the server asking us to slow down
        elif m.is_transient(reply):
            next_at = at + max(interval, transient_delay(reply, backoff))
            continue
        backoff.reset()
        assert isinstance(reply, m.Response)
        if error is None and reply.status == 200 and m.body_fields(reply) is not None:
            return m.parse_tokens(reply, issuer, client_id)
        if error == "authorization_pending":
            interval = max(interval, _interval_hint(reply))
        elif error == "slow_down":
            interval = max(interval + SLOW_DOWN_STEP, _interval_hint(reply))
        elif error in DENIED:
            raise AuthorizationDenied(f"the request was declined on the phone: {m.error_text(reply)}", error)
        elif error in EXPIRED:
            raise DeviceCodeExpired(f"the code expired before it was approved: {m.error_text(reply)}", error)
        elif error is None:
            # No OAuth answer at all (an HTML page from a proxy): not an end, but no faster polling.
            next_at = at + max(interval, transient_delay(reply, backoff))
            continue
        else:
            raise GrantFailed(f"the authorization server ended the pairing: {m.error_text(reply)}", error)
        next_at = at + max(interval, min(m.retry_after(reply) or 0.0, MAX_RETRY_AFTER))


def _interval_hint(resp: m.Response) -> int:
    """An ``interval`` the server put in a polling answer (GitHub does, with slow_down)."""
    data = m.body_fields(resp) or {}
    value = data.get("interval")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        return 0
    return int(value)
