"""Refreshing as generators (RFC 6749 §6): the grant's own refresh and narrowed ones.
No I/O, no clock reads; ``oauth/http.py`` sends what they yield.

One attempt each: *when* to try again (the backoff, the hourly budget, apps
that keep asking) is the engine's schedule, which spans attempts. What an
answer means is decided here, once, through :func:`messages.classify`:

- tokens: a :class:`TokenSet` (a refresh token the server did not rotate is kept);
- ``invalid_grant``: :class:`RefreshRejected`, the grant is gone (revoked, expired,
  or under rotation replayed, RFC 9700 §4.14.2); :func:`definite` says so;
- ``invalid_scope`` / ``invalid_target`` on a narrowed refresh: :class:`TargetRefused`;
- recognised retryable answers (no answer, 5xx, 429, 408, ``temporarily_unavailable``,
  ``server_error``, ``slow_down``, a 200 that is not JSON) and a refused *client*
  (401, or ``invalid_client``: the client id or secret in the config, not the grant; and
  ``invalid_dpop_proof``, RFC 9449 §5: the proof, from a clock far off, say):
  :class:`GrantFailed` (:class:`ClientRejected` for the client) with the server's code (if
  any) and ``Retry-After``. The grant is kept.
- any other 4xx, or an OAuth error in a 200, empty or HTML body included (glewlwyd
  answers a reused refresh token with an empty 400): :class:`RefreshRejected` that is
  not :func:`definite`; the engine confirms it with one more attempt, after its backoff,
  before it ends the grant.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Generator

from devicelink.errors import ClientRejected, GrantFailed, RefreshRejected, ScopeIgnored, TargetRefused
from devicelink.oauth import messages as m
from devicelink.oauth.steps import Send, Step
from devicelink.tokens.model import TokenSet


def refresh(endpoints: m.Endpoints, refresh_token: str, issuer: str, client_id: str, *,
            scope: str | None = None, resource: str | None = None) -> Generator[Step, m.Reply, TokenSet]:
    """One refresh request and its answer, parsed. ``scope`` narrower than the grant's and
    ``resource`` (RFC 8707 §2.2) ask for an access token for less than the whole grant."""
    reply = yield Send(m.refresh_request(endpoints, refresh_token, scope, resource))
    verdict = m.classify(reply)
    if verdict.outcome == "ok":
        assert isinstance(reply, m.Response)
        return m.parse_tokens(reply, issuer, client_id, refreshable=True)
    said = m.error_text(reply) if isinstance(reply, m.Response) else None
    if verdict.error == "invalid_grant":
        raise RefreshRejected(f"the authorization server rejected the refresh token: {said}; pair again",
                              "invalid_grant")
    if verdict.error in ("invalid_scope", "invalid_target") and (scope or resource):
        what = f"scope {scope!r}" if verdict.error == "invalid_scope" else f"resource {resource!r}"
        raise TargetRefused(f"the authorization server refused {what}: {said}", verdict.error)
    if verdict.transient or retryable(reply, verdict):
        raise GrantFailed(f"refresh failed: {verdict.reason}", verdict.error, retry_after=verdict.retry_after,
                          unanswered=reply.reason if isinstance(reply, m.Failure) else None)
    if verdict.error == "invalid_dpop_proof":  # RFC 9449 §5: the proof, not the grant (a clock far off?)
        raise ClientRejected(f"refresh failed: the server refused the device's DPoP proof ({verdict.reason}); "
                             "check the device's clock, which the proof's iat comes from (the grant is kept)",
                             verdict.error, retry_after=verdict.retry_after)
    if client_refused(reply, verdict):
        raise ClientRejected(f"refresh failed: the server refused it ({verdict.reason}): it did not accept this "
                          "client; check client_id and client_secret in the config (the grant is kept)", verdict.error,
                          retry_after=verdict.retry_after)
    if _refuses_grant(reply, verdict):
        # RFC 6749 §5.2 makes 400 the status of a refused grant; a server that says no more
        # (glewlwyd: an empty 400 for a reused or disabled refresh token) will say the same again.
        reason = f"HTTP {reply.status} with no body" if _bare(reply) else verdict.reason
        raise RefreshRejected(f"the authorization server refused the grant ({reason}); pair again",
                              verdict.error, retry_after=verdict.retry_after)
    raise GrantFailed(f"refresh failed: the server refused it ({verdict.reason})", verdict.error,
                      retry_after=verdict.retry_after)


def definite(exc: RefreshRejected) -> bool:
    """The server said ``invalid_grant``: the grant is gone. Any other refusal of the
    grant is confirmed by one more attempt first (a proxy's page may not come twice)."""
    return exc.oauth_error == "invalid_grant"


#: Statuses retried like a network failure: Request Timeout, Too Many Requests.
RETRYABLE_STATUSES = frozenset({408, 429})


def retryable(reply: m.Reply, verdict: m.Verdict) -> bool:
    return verdict.error == "slow_down" or (isinstance(reply, m.Response) and reply.status in RETRYABLE_STATUSES)


def client_refused(reply: m.Reply, verdict: m.Verdict) -> bool:
    """RFC 6749 §5.2: a client that failed to authenticate gets ``invalid_client``, with 401
    when it used the Authorization header. It is the config (a wrong or rotated client
    secret, a deleted client), not the grant: pairing again would meet the same answer, and
    the refresh token still works once the config is fixed."""
    return verdict.error == "invalid_client" or (isinstance(reply, m.Response) and reply.status == 401)


def _refuses_grant(reply: m.Reply, verdict: m.Verdict) -> bool:
    """A 4xx (or an OAuth error in a 200, RFC-CHECKLIST G1) that is none of the above."""
    if not isinstance(reply, m.Response) or verdict.outcome != "refused":
        return False
    return 400 <= reply.status < 500 or (reply.status == 200 and verdict.error is not None)


def _bare(reply: m.Reply) -> bool:
    return isinstance(reply, m.Response) and not reply.body.strip()


def narrowed(endpoints: m.Endpoints, refresh_token: str, issuer: str, client_id: str, *,
             scope: str, resource: str | None) -> Generator[Step, m.Reply, TokenSet]:
    """A refresh for ``scope`` and ``resource`` only. The answer is never broader than asked
    (RFC 6749 §5.1: no scope in it means the one asked for); its ``scope`` is what it covers."""
    tokens = yield from refresh(endpoints, refresh_token, issuer, client_id, scope=scope or None, resource=resource)
    return no_broader(tokens, scope, "ignored the narrower scope")


def no_broader(tokens: TokenSet, scope: str, what: str) -> TokenSet:
    """``tokens`` with the scope they cover: ``scope`` when the answer named none (RFC 6749
    §5.1: then it is the one asked for). One broader than asked is never served
    (:class:`ScopeIgnored`, saying the server ``what``)."""
    asked = frozenset(scope.split())
    got = frozenset((tokens.scope or scope).split())
    if asked and not got <= asked:
        raise ScopeIgnored(f"the authorization server {what} (asked {scope!r}, got {tokens.scope!r}); not served")
    return replace(tokens, scope=" ".join(sorted(got)) or None)


def revoke(endpoints: m.Endpoints, token: str, hint: str) -> Generator[Step, m.Reply, str | None]:
    """RFC 7009 §2.1, one attempt. Returns None when the server took it (§2.2: 200, even
    for a token it no longer knew), or why it refused: a definite refusal
    (``unsupported_token_type``, a 400 page) will not change on a retry either.
    Raises :class:`GrantFailed` when it is worth retrying later."""
    reply = yield Send(m.revocation_request(endpoints, token, hint))
    if isinstance(reply, m.Response) and reply.status == 200:
        return None  # §2.2: the body, usually empty, means nothing
    verdict = m.classify(reply)
    if verdict.transient:
        raise GrantFailed(f"revocation failed: {verdict.reason}", verdict.error, retry_after=verdict.retry_after)
    return f"the server refused the revocation ({verdict.reason})"
