"""Which token an app gets: the grant's own, or a narrower one. Pure: no I/O, no state.

An app gets at most its policy's scopes of the grant, and only resources that
``[provider] resource`` named at pairing (plus its own ``resource`` list):
asking for more is refused here, before anything is sent upstream. A server
may spend the refresh token on an ``invalid_target`` answer (oidc-provider
does), and under rotation that would cost the grant (RFC 8707 §2.2).
"""

from __future__ import annotations

from devicelink.engine.answers import TokenQuery
from devicelink.errors import Refused
from devicelink.policy import App

NarrowKey = tuple[str, str | None]  # (sorted scopes, resource)


def narrow_key(query: TokenQuery, app: App, granted: frozenset[str], asked_at_pairing: frozenset[str],
               grant_resources: tuple[str, ...]) -> NarrowKey | None:
    """None for the grant's own token; else the (scope, resource) ``app`` gets.

    ``granted``: the scopes of the grant's access token; ``asked_at_pairing``: the
    scopes the device authorization asked for. Raises :class:`Refused` ``forbidden``."""
    resource = query.resource
    if resource is None and app.resources is not None:
        # An app held to some resources never gets the grant's token (its audience is wider).
        mine = [r for r in grant_resources if r in app.resources]
        if len(mine) != 1:
            raise Refused("forbidden", f"{app.name!r} may have tokens only for "
                          f"{' or '.join(sorted(app.resources))}: say which with resource=")
        resource = mine[0]
    if resource is not None:
        if resource not in grant_resources:
            raise Refused("forbidden", f"resource {resource!r} is not part of the grant; "
                          "list it in [provider] resource and pair again")
        if app.resources is not None and resource not in app.resources:
            raise Refused("forbidden", f"resource {resource!r} is not allowed for {app.name!r} "
                          "by the [[client]] policy")
    # A resource's scopes may be in the grant without being in the default access token
    # (oidc-provider issues api:* only in tokens for that API): what was asked at pairing counts.
    grantable = granted | asked_at_pairing if resource else granted
    if query.scope is not None:
        wanted = frozenset(query.scope.split())
        refused = app.allows_scope(wanted)
        if refused:
            raise Refused("forbidden", f"scope {' '.join(sorted(refused))!r} is not allowed "
                          f"for {app.name!r} by the [[client]] policy")
    elif app.scope is None:
        wanted = grantable
    else:
        wanted = app.scope & grantable
        if not wanted:
            raise Refused("forbidden", f"the [[client]] policy gives {app.name!r} no scope of this grant")
    missing = wanted - grantable
    if missing:
        raise Refused("forbidden", f"scope {' '.join(sorted(missing))!r} is not part of the grant")
    if wanted == granted and resource is None:
        return None
    return " ".join(sorted(wanted)), resource


def step_up_request(app: App, granted: frozenset[str],
                    grant_resources: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The scope (the app's, plus ``openid`` for the ID token that shows the acr) and the
    resources (the app's, of those the grant named) a step-up for ``app`` asks for."""
    scopes = granted if app.scope is None else app.scope & granted
    if not scopes:
        raise Refused("forbidden", f"the [[client]] policy gives {app.name!r} no scope of this grant")
    resources = tuple(r for r in grant_resources if app.resources is None or r in app.resources)
    return " ".join(sorted(scopes | {"openid"})), resources


def wanted_ttl(min_ttl: int, lifetime: float) -> float:
    """A token fresher than half its lifetime always satisfies ``min_ttl``: otherwise a server
    issuing short tokens and an app asking a long min_ttl would refresh on every call."""
    return min(min_ttl, lifetime / 2)
