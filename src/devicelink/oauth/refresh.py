"""Refreshing as generators (RFC 6749 §6): the grant's own refresh and narrowed ones.
No I/O, no clock reads; ``oauth/http.py`` sends what they yield.

One attempt each: *when* to try again (the backoff, the hourly budget, apps
that keep asking) is the engine's schedule, which spans attempts. What an
answer means is decided here, once, through :func:`messages.classify`:

- tokens: a :class:`TokenSet` (a refresh token the server did not rotate is kept);
- ``invalid_grant``, or a 400 with an empty body: :class:`RefreshRejected`, the grant
  is gone (revoked, expired, or under rotation replayed, RFC 9700 §4.14.2);
- ``invalid_scope`` / ``invalid_target`` on a narrowed refresh: :class:`TargetRefused`;
- anything else: :class:`GrantFailed` with the server's code (if any) and ``Retry-After``.
  The grant is kept; a refusal is told apart from a network fault in its message.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Generator

from devicelink.errors import GrantFailed, RefreshRejected, ScopeIgnored, TargetRefused
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
    if verdict.error == "invalid_grant":
        raise RefreshRejected("the authorization server rejected the refresh token (invalid_grant); pair again",
                              "invalid_grant")
    if verdict.outcome == "refused" and _bare_400(reply):
        # RFC 6749 §5.2 makes 400 the status of a refused grant; a server that says nothing
        # more (glewlwyd, for a reused or disabled refresh token) will say the same on every retry.
        raise RefreshRejected("the authorization server refused the refresh token (HTTP 400 with no body); "
                              "pair again", "invalid_grant")
    if verdict.error in ("invalid_scope", "invalid_target") and (scope or resource):
        what = f"scope {scope!r}" if verdict.error == "invalid_scope" else f"resource {resource!r}"
        raise TargetRefused(f"the authorization server refused {what} ({verdict.error})", verdict.error)
    if verdict.transient:
        raise GrantFailed(f"refresh failed: {verdict.reason}", verdict.error, retry_after=verdict.retry_after,
                          unanswered=reply.reason if isinstance(reply, m.Failure) else None)
    raise GrantFailed(f"refresh failed: the server refused it ({verdict.reason})", verdict.error,
                      retry_after=verdict.retry_after)


def _bare_400(reply: m.Reply) -> bool:
    return isinstance(reply, m.Response) and reply.status == 400 and not reply.body.strip()


def narrowed(endpoints: m.Endpoints, refresh_token: str, issuer: str, client_id: str, *,
             scope: str, resource: str | None) -> Generator[Step, m.Reply, TokenSet]:
    """A refresh for ``scope`` and ``resource`` only. The answer is never broader than asked
    (RFC 6749 §5.1: no scope in it means the one asked for); its ``scope`` is what it covers."""
    tokens = yield from refresh(endpoints, refresh_token, issuer, client_id, scope=scope or None, resource=resource)
    asked = frozenset(scope.split())
    got = frozenset((tokens.scope or scope).split())
    if asked and not got <= asked:
        raise ScopeIgnored(f"the authorization server ignored the narrower scope (asked {scope!r}, "
                           f"got {tokens.scope!r}); not served")
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
