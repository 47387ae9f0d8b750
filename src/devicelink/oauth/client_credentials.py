"""The client credentials grant (RFC 6749 §4.4) as a generator: a device-level token, no user.
No I/O, no clock reads; ``oauth/http.py`` sends what it yields, through the same
client-authentication hook as every other request (§4.4.2: the client MUST authenticate,
so only a confidential client may use it: ``client_secret_basic``, ``client_secret_post``
or ``private_key_jwt``; the config refuses ``none``).

One attempt: when to try again (the backoff per key, the hourly budget) is the engine's
(``engine/devicetokens.py``). What an answer means is decided here, once, through
:func:`messages.classify`:

- tokens: a :class:`TokenSet` holding no refresh token (§4.4.3: one SHOULD NOT be
  included, and none is needed: the grant is asked again) and no account; its ``scope``
  is what it covers, never more than asked (:class:`ScopeIgnored` otherwise);
- ``invalid_scope`` / ``invalid_target`` (RFC 8707 §2): :class:`TargetRefused`;
- ``invalid_client`` or a 401 (the client's credentials), ``unauthorized_client`` or
  ``unsupported_grant_type`` (the server does not let this client use the grant):
  :class:`ClientRejected`, to be fixed in the config or at the server;
- no answer, 5xx, 429, 408, ``temporarily_unavailable``, ``slow_down``, a 200 that is
  not JSON: :class:`GrantFailed` with ``Retry-After``; any other refusal: :class:`GrantFailed`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Generator

from devicelink.errors import ClientRejected, GrantFailed, TargetRefused
from devicelink.oauth import messages as m
from devicelink.oauth.refresh import client_refused, no_broader, retryable
from devicelink.oauth.steps import Send, Step
from devicelink.tokens.model import TokenSet

GRANT_TYPE = "client_credentials"
#: Answers that say the server will not let this client use the grant at all (RFC 6749 §5.2).
GRANT_NOT_ALLOWED = frozenset({"unauthorized_client", "unsupported_grant_type"})


def request(token_endpoint: str, scope: str | None, resource: str | None) -> m.Request:
    """RFC 6749 §4.4.2, with RFC 8707 §2's ``resource``; client authentication is the hook's."""
    form = [("grant_type", GRANT_TYPE)]
    if scope:
        form.append(("scope", scope))
    if resource:
        form.append(("resource", resource))
    return m.Request("client_credentials", token_endpoint, tuple(form))


def client_credentials(token_endpoint: str, issuer: str, client_id: str, *, scope: str,
                       resource: str | None) -> Generator[Step, m.Reply, TokenSet]:
    """One token request for ``scope`` (and ``resource``) and its answer."""
    reply = yield Send(request(token_endpoint, scope or None, resource))
    verdict = m.classify(reply)
    if verdict.outcome == "ok":
        assert isinstance(reply, m.Response)
        # refreshable=True: without expires_in the token is given a short life (asked again soon).
        tokens = m.parse_tokens(reply, issuer, client_id, refreshable=True)
        return replace(no_broader(tokens, scope, "issued more than the scope asked"), refresh_token=None,
                       account=None)
    said = (m.error_text(reply) if isinstance(reply, m.Response) else None) or verdict.reason
    if verdict.error in ("invalid_scope", "invalid_target"):
        what = f"scope {scope!r}" if verdict.error == "invalid_scope" else f"resource {resource!r}"
        raise TargetRefused(f"the authorization server refused {what} for this client: {said}", verdict.error)
    if isinstance(reply, m.Failure):
        raise GrantFailed(f"no answer from the authorization server: {reply.reason}", unanswered=reply.reason)
    if verdict.transient or retryable(reply, verdict):
        raise GrantFailed(f"the authorization server answered {verdict.reason}", verdict.error,
                          retry_after=verdict.retry_after)
    if client_refused(reply, verdict):
        raise ClientRejected(f"the authorization server refused this client ({verdict.reason})", verdict.error,
                             retry_after=verdict.retry_after)
    if verdict.error in GRANT_NOT_ALLOWED:
        raise ClientRejected(f"the authorization server does not let this client use the client credentials "
                             f"grant ({verdict.reason})", verdict.error, retry_after=verdict.retry_after)
    raise GrantFailed(f"the authorization server refused it ({verdict.reason})", verdict.error,
                      retry_after=verdict.retry_after)
