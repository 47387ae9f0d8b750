"""Which token an app gets: the grant's own, or a narrower one; or a device-level one
(client credentials, ``[device_token]``). Pure: no I/O, no state.

An app gets at most its policy's scopes of the grant, and only resources that
``[provider] resource`` named at pairing (plus its own ``resource`` list):
asking for more is refused here, before anything is sent upstream. A server
may spend the refresh token on an ``invalid_target`` answer (oidc-provider
does), and under rotation that would cost the grant (RFC 8707 §2.2).
"""

from __future__ import annotations

from devicelink.device_token import DeviceTokenConfig
from devicelink.engine.answers import TokenQuery
from devicelink.errors import Refused
from devicelink.policy import App

NarrowKey = tuple[str, str | None]  # (sorted scopes, resource)


def narrow_key(query: TokenQuery, app: App, granted: frozenset[str], asked_at_pairing: frozenset[str],
               grant_resources: tuple[str, ...]) -> NarrowKey | None:
    """None for the grant's own token; else the (scope, resource) ``app`` gets.

    ``granted``: the scopes of the grant's access token; ``asked_at_pairing``: the
    scopes the device authorization asked for. Raises :class:`Refused` ``forbidden``."""
    resource = _resource(query.resource, app, grant_resources,
                         "is not part of the grant; list it in [provider] resource and pair again")
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


def device_key(query: TokenQuery, app: App, settings: DeviceTokenConfig | None) -> NarrowKey:
    """The (scope, resource) of the client credentials request that serves ``app`` a device-level
    token: at most its ``device_scope`` of ``[device_token] scope`` (all of it for ``root``), and
    a resource only one ``[device_token] resource`` lists and, when the app's entry has a
    ``resource`` list, one of those (an app held to some resources never gets a token for the
    server's default audience, as for user tokens). Raises :class:`Refused` ``forbidden``."""
    if settings is None:
        raise Refused("forbidden", "device-level tokens are not set up on this device ([device_token] in the config)")
    if app.device_scope is not None and not app.device_scope:
        raise Refused("forbidden", f"{app.name!r} may not have device-level tokens: its [[client]] entry has no "
                      "device_scope")
    resource = _resource(query.resource, app, settings.resource, "is not one [device_token] resource lists")
    if query.scope is not None:
        wanted = frozenset(query.scope.split())
        refused = wanted - app.device_scope if app.device_scope is not None else frozenset()
        if refused:
            raise Refused("forbidden", f"scope {' '.join(sorted(refused))!r} is not allowed for {app.name!r}'s "
                          "device-level tokens by the [[client]] policy (device_scope)")
        missing = wanted - settings.scopes
        if missing:
            raise Refused("forbidden", f"scope {' '.join(sorted(missing))!r} is not in [device_token] scope")
    else:
        wanted = settings.scopes if app.device_scope is None else app.device_scope & settings.scopes
        if not wanted:
            raise Refused("forbidden", f"the device_scope of {app.name!r} names nothing [device_token] scope has")
    return " ".join(sorted(wanted)), resource


def _resource(asked: str | None, app: App, allowed: tuple[str, ...], outside: str) -> str | None:
    """The resource ``app`` gets a token for: the one it ``asked`` for, which must be one of
    ``allowed`` (else it ``outside``) and of the app's own list, if it has one; or, asking none,
    its one of ``allowed`` when its entry lists resources. Raises :class:`Refused` ``forbidden``."""
    resource = asked
    if resource is None and app.resources is not None:
        # An app held to some resources never gets a token for more (its audience would be wider).
        mine = [r for r in allowed if r in app.resources]
        if len(mine) != 1:
            raise Refused("forbidden", f"{app.name!r} may have tokens only for "
                          f"{' or '.join(sorted(app.resources))}: say which with resource=")
        resource = mine[0]
    if resource is not None:
        if resource not in allowed:
            raise Refused("forbidden", f"resource {resource!r} {outside}")
        if app.resources is not None and resource not in app.resources:
            raise Refused("forbidden", f"resource {resource!r} is not allowed for {app.name!r} "
                          "by the [[client]] policy")
    return resource


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
