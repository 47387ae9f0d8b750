"""A behaving OAuth 2.0 authorization server in memory, for ``httpx.MockTransport``. TESTS ONLY.

It answers as the RFCs say a server should, with no network, no threads and no
clock of its own (the test's FakeClock is injected), so the engine is tested end
to end against it as gpiozero tests against its MockFactory:

- RFC 8414 and OpenID Connect discovery;
- RFC 8628 device authorization and polling: ``authorization_pending``;
  ``slow_down`` for a poll sooner than the interval after the previous one (or
  after the code was issued), the interval then counting 5 s more (§3.5);
  ``access_denied``; ``expired_token``;
- refresh (RFC 6749 §6) with rotation and reuse detection: a rotated-away
  refresh token presented again revokes its whole family (RFC 9700 §4.14.2, as
  oidc-provider does); narrowing by ``scope`` (a subset, else ``invalid_scope``)
  and by RFC 8707 ``resource`` (one the grant named, else ``invalid_target``);
- an ID token signed HS256 with :attr:`id_token_key` (standard library only, so the
  engine tests also run on Bookworm's packages), with ``acr`` and ``auth_time`` when the device
  authorization asked ``acr_values`` or ``max_age`` (RFC 9470 §4);
- RFC 7009 revocation: 200, also for a token it does not know (§2.2);
- the client credentials grant (RFC 6749 §4.4) for a confidential client only (a public one
  gets ``unauthorized_client``): a token for a subset of :attr:`client_scopes` (else
  ``invalid_scope``) and at most one of :attr:`client_resources` (else ``invalid_target``),
  with no refresh token and no user (``access_token_info`` says ``sub`` None);
- client authentication ``none``, ``client_secret_basic`` (id and secret
  form-encoded before base64, RFC 6749 §2.3.1) or ``client_secret_post``, checked
  strictly: missing, wrong, or two methods at once is ``401 invalid_client``;
- DPoP (RFC 9449) with ``dpop=True``: a token request with a proof gets tokens of type
  ``DPoP`` bound to the proof's key (``jkt``), and the grant's refresh token is bound to
  it too (§5); ``dpop_nonce=True`` wants its nonce in every token request's proof
  (``use_dpop_nonce`` with a ``DPoP-Nonce`` otherwise; every answer carries the nonce;
  :meth:`new_nonce` moves it on). The proof's form is checked (typ, jwk, htm, htu, iat, a
  jti never seen, the nonce); its signature is left to the real servers' tests, so this
  server needs no JOSE library.

The test plays the user with :meth:`approve`, :meth:`deny` and :meth:`expire`,
turns the knobs (``lifetime``, ``rotate``, ``refusal``, ``poll_spacing``, ``code_grace``,
:attr:`device_answer` for a hostile server's fields, :attr:`metadata_headers` and
:attr:`revocation_auth_methods` for discovery), moves an endpoint with :meth:`move`, and
injects faults with :meth:`fail_next`. Every request is kept in :attr:`seen`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote_plus, urlsplit

import httpx

ISSUER = "https://id.example.com"
CLIENT_ID = "devicelink-test"
SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
#: What a client may have for itself, with no user (client credentials).
CLIENT_SCOPES = frozenset({"telemetry.write", "updates.read"})
CLIENT_RESOURCES = frozenset({"https://api.example.com", "https://telemetry.example.com"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: base 20, no vowels
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5
ASKED = object()  # approve(acr=ASKED): the user signed in as the device authorization asked


@dataclass
class Seen:
    """One request the server received, with the status it was answered."""

    kind: str  # discovery, device_authorization, device_token, refresh, revocation (else the path)
    form: dict[str, list[str]]
    headers: httpx.Headers
    at: float  # the injected clock
    status: int = 0
    error: str | None = None  # the OAuth error code it was answered, if any
    proof: dict[str, Any] | None = None  # the DPoP proof's claims (dpop=True), with "jkt" its key's thumbprint

    def value(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


@dataclass
class Grant:
    """What the user approved: one family of refresh tokens."""

    sub: str
    name: str | None
    scope: frozenset[str]
    resources: tuple[str, ...]
    acr: str | None
    auth_time: int | None
    refresh_token: str | None = None  # the live one; the others of the family are rotated away
    revoked: bool = False
    jkt: str | None = None  # RFC 9449 §5: the key its refresh tokens are bound to (dpop=True)


@dataclass
class Authorization:
    """One RFC 8628 device authorization, from its code to its grant."""

    device_code: str
    user_code: str
    scope: frozenset[str]
    resources: tuple[str, ...]
    acr_values: str | None
    max_age: int | None
    expires_at: float
    last_poll: float  # the code's issue, at first: §3.5 asks the client to wait before its first poll
    slow_downs: int = 0
    outcome: Grant | str | None = None  # None (pending), "denied", the Grant, then "used"


@dataclass
class AccessToken:
    grant: Grant | None  # None: the client's own (client credentials)
    scope: frozenset[str]
    audience: tuple[str, ...]
    expires_at: float
    revoked: bool = False
    jkt: str | None = None  # RFC 9449 §6: cnf.jkt of a DPoP-bound token


@dataclass
class Fault:
    left: int
    at: str  # an endpoint (token, device_authorization, revocation, discovery) or a request kind
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """An error answer (RFC 6749 §5.2); ``error`` None is an empty body."""

    def __init__(self, error: str | None, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.headers = error, status, headers or {}

    def response(self) -> httpx.Response:
        if self.error is None:
            return httpx.Response(self.status, headers=self.headers)
        return _json(self.status, {"error": self.error}, self.headers)


class FakeAuthServer:
    """Call it with an ``httpx.Request`` (``httpx.MockTransport(server)``, or :attr:`transport`)."""

    def __init__(self, clock: Callable[[], float], *, wall: Callable[[], float] | None = None,
                 issuer: str = ISSUER, client_id: str = CLIENT_ID, client_auth: str = "none",
                 client_secret: str | None = None, scopes: frozenset[str] = SCOPES,
                 lifetime: int = 3600, rotate: bool = True, refusal: str = "invalid_grant",
                 interval: int = 5, poll_spacing: int | None = None, code_lifetime: int = 600,
                 discovery: tuple[str, ...] = ("oauth", "openid"), dpop: bool = False,
                 dpop_nonce: bool = False) -> None:
        self.clock, self.wall = clock, wall or (lambda: 1_700_000_000 + clock())
        self.issuer, self.client_id = issuer, client_id
        self.client_auth, self.client_secret = client_auth, client_secret
        self.scopes, self.lifetime, self.rotate = scopes, lifetime, rotate
        self.client_scopes, self.client_resources = CLIENT_SCOPES, CLIENT_RESOURCES
        #: How a refused refresh token is answered: "invalid_grant", or "empty" (glewlwyd: a bare 400).
        self.refusal = refusal
        self.interval, self.code_lifetime = interval, code_lifetime
        #: The spacing the server enforces between polls, if more than the interval it announces.
        self.poll_spacing = poll_spacing
        #: Seconds a code is still taken after its expires_in (a server that compares whole
        #: seconds, ``now > expires_at``, or keeps a code a little longer than it announced).
        self.code_grace = 0.0
        #: Fields sent instead of the real ones in a device authorization answer (a hostile server:
        #: ``user_code``, ``verification_uri``, ...). The real user code still works for approve().
        self.device_answer: dict[str, Any] = {}
        self.seen: list[Seen] = []
        self.reuse_detections = 0
        self.dpop, self.dpop_nonce = dpop, dpop_nonce
        self.nonce = "nonce-1"
        self._proof_jtis: set[str] = set()
        self._codes: dict[str, Authorization] = {}
        self._refresh_tokens: dict[str, Grant] = {}  # every refresh token issued -> its family
        self._access_tokens: dict[str, AccessToken] = {}
        self._faults: list[Fault] = []
        self.id_token_key = secrets.token_bytes(32)
        path = urlsplit(issuer).path.rstrip("/")
        self._endpoints = {f"{path}/device": "device_authorization", f"{path}/token": "token",
                           f"{path}/revoke": "revocation"}
        #: Headers of the metadata answer (``Cache-Control``), and what it names beyond the endpoints.
        self.metadata_headers: dict[str, str] = {}
        self.revocation_auth_methods: list[str] | None = [client_auth]
        self._metadata_paths = ({f"/.well-known/oauth-authorization-server{path}"} if "oauth" in discovery else set()) \
            | ({f"{path}/.well-known/openid-configuration"} if "openid" in discovery else set())

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    # -- the test plays the user ------------------------------------------------

    def approve(self, user_code: str, sub: str = "alice", name: str | None = "Alice", *,
                acr: Any = ASKED, scope: str | None = None, signed_in_ago: int = 0) -> None:
        """The user signs in and approves. ``scope``: they consented to less than was asked.
        ``acr``: how they signed in (by default as ``acr_values`` asked; None: no acr claim).
        ``signed_in_ago``: an older session was reused (for ``max_age``)."""
        code = self._by_user_code(user_code)
        step_up = code.acr_values is not None or code.max_age is not None
        if acr is ASKED:
            acr = code.acr_values.split()[0] if code.acr_values else None
        granted = code.scope if scope is None else code.scope & frozenset(scope.split())
        code.outcome = Grant(sub, name, granted, code.resources, acr,
                             int(self.wall()) - signed_in_ago if step_up else None)

    def deny(self, user_code: str) -> None:
        self._by_user_code(user_code).outcome = "denied"

    def expire(self, user_code: str) -> None:
        """The code dies before its ``expires_in`` (Entra does this, RFC-CHECKLIST F)."""
        self._by_user_code(user_code).expires_at = self.clock()

    def revoke(self, token: str) -> None:
        """What an administrator (or the user on their account page) does."""
        if (grant := self._refresh_tokens.get(token)) is not None:
            self._revoke_grant(grant)
        elif (access := self._access_tokens.get(token)) is not None:
            access.revoked = True

    def fail_next(self, n: int = 1, status: int = 503, *, at: str = "token", retry_after: int | None = None,
                  body: dict | bytes = b"") -> None:
        """Answer the next ``n`` requests to ``at`` (an endpoint, or a kind such as ``refresh``)
        with ``status`` before reading them. ``body``: a dict is sent as JSON, bytes as they are
        (``b""`` with 400 is glewlwyd's answer to a reused refresh token)."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {**headers, "content-type": "application/json"}
        self._faults.append(Fault(n, at, status, body, headers))

    # -- what a test reads --------------------------------------------------------

    def requests(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind]

    def pending_user_codes(self) -> list[str]:
        return [c.user_code for c in self._codes.values() if c.outcome is None and self.clock() < c.expires_at]

    def live_refresh_token(self) -> str | None:
        """The refresh token of the newest grant that is still valid."""
        live = [g for g in self._refresh_tokens.values() if not g.revoked]
        return live[-1].refresh_token if live else None

    def issued_refresh_tokens(self) -> list[str]:
        return list(self._refresh_tokens)

    def is_revoked(self, token: str) -> bool:
        grant, access = self._refresh_tokens.get(token), self._access_tokens.get(token)
        return bool(grant and grant.revoked) or bool(access and access.revoked)

    def access_token_info(self, token: str) -> dict[str, Any] | None:
        """RFC 7662-like: what the server knows of an access token it issued."""
        access = self._access_tokens.get(token)
        if access is None:
            return None
        grant = access.grant
        active = not (access.revoked or (grant and grant.revoked)) and self.clock() < access.expires_at
        return {"active": active, "sub": grant and grant.sub, "scope": " ".join(sorted(access.scope)),
                "aud": list(access.audience), "acr": grant and grant.acr, "client_id": self.client_id,
                **({"cnf": {"jkt": access.jkt}} if access.jkt else {})}

    def new_nonce(self) -> str:
        """The server's DPoP nonce moves on (``dpop_nonce=True``): proofs with the old one are refused."""
        self.nonce = f"nonce-{int(self.nonce.rpartition('-')[2]) + 1}"
        return self.nonce

    def metadata(self) -> dict[str, Any]:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.issuer))
        at = {endpoint: f"{origin}{path}" for path, endpoint in self._endpoints.items()}
        document = {"issuer": self.issuer,
                    "device_authorization_endpoint": at["device_authorization"],
                    "token_endpoint": at["token"],
                    "revocation_endpoint": at["revocation"],
                    "grant_types_supported": [DEVICE_CODE_GRANT, "refresh_token", "client_credentials"],
                    "token_endpoint_auth_methods_supported": [self.client_auth],
                    "scopes_supported": sorted(self.scopes)}
        if self.revocation_auth_methods is not None:
            document["revocation_endpoint_auth_methods_supported"] = self.revocation_auth_methods
        return document

    def move(self, endpoint: str, path: str) -> None:
        """The server moves ``endpoint`` (``device_authorization``, ``token``, ``revocation``) to
        ``path``, as an upgrade of its software may: the old path answers 404, the metadata names the new."""
        self._endpoints = {(path if name == endpoint else old): name for old, name in self._endpoints.items()}

    # -- HTTP -----------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        form = parse_qs(request.content.decode(), keep_blank_values=True) if request.method == "POST" else {}
        endpoint = "discovery" if path.startswith("/.well-known/") else self._endpoints.get(path, path)
        kind = endpoint
        if endpoint == "token":
            grant_type = (form.get("grant_type") or [""])[0]
            kind = {DEVICE_CODE_GRANT: "device_token", "refresh_token": "refresh",
                    "client_credentials": "client_credentials"}.get(grant_type, "token")
        seen = Seen(kind, form, request.headers, self.clock())
        self.seen.append(seen)
        try:
            response = self._fault(endpoint, kind) or self._route(request, path, endpoint, seen)
        except Refused as refused:
            response, seen.error = refused.response(), refused.error
        seen.status = response.status_code
        if self.dpop_nonce and endpoint == "token":  # RFC 9449 §8.2: on every answer, success included
            response.headers["dpop-nonce"] = self.nonce
        return response

    def _fault(self, endpoint: str, kind: str) -> httpx.Response | None:
        for fault in self._faults:
            if fault.left > 0 and fault.at in (endpoint, kind):
                fault.left -= 1
                return httpx.Response(fault.status, content=fault.body, headers=fault.headers)
        return None

    def _route(self, request: httpx.Request, path: str, endpoint: str, seen: Seen) -> httpx.Response:
        if path in self._metadata_paths and request.method == "GET":
            return _json(200, self.metadata(), self.metadata_headers)
        handler = {"device_authorization": self._device_authorization, "token": self._token,
                   "revocation": self._revoke}.get(endpoint)
        if handler is None or request.method != "POST":
            return httpx.Response(404 if handler is None else 405)
        if request.content and request.headers.get("content-type") != "application/x-www-form-urlencoded":
            raise Refused("invalid_request")
        if any(len(values) > 1 for name, values in seen.form.items() if name != "resource"):
            raise Refused("invalid_request")  # RFC 6749 §3.1: no parameter more than once
        self._authenticate(seen)
        if endpoint == "token" and self.dpop:
            self._check_proof(request, seen)
        return handler(seen)

    def _check_proof(self, request: httpx.Request, seen: Seen) -> None:
        """RFC 9449 §4.3, but for the signature (see the module's docstring)."""
        proof = request.headers.get("dpop")
        if proof is None:
            return
        try:
            header_b64, payload_b64, signature = proof.split(".")
            header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                              for part in (header_b64, payload_b64))
            jwk = header["jwk"]
            ok = (header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and set(jwk) == {"kty", "crv", "x", "y"}
                  and signature and claims["htm"] == request.method
                  and claims["htu"] == str(request.url).split("?")[0] and abs(claims["iat"] - self.wall()) < 300
                  and isinstance(claims["jti"], str) and claims["jti"] not in self._proof_jtis)
        except (ValueError, KeyError, TypeError, binascii.Error):
            ok = False
        if not ok:
            raise Refused("invalid_dpop_proof")
        self._proof_jtis.add(claims["jti"])
        if self.dpop_nonce and claims.get("nonce") != self.nonce:
            raise Refused("use_dpop_nonce", 400, {"dpop-nonce": self.nonce})
        canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
        seen.proof = {**claims, "jkt": _b64url(hashlib.sha256(canonical.encode()).digest())}

    def _authenticate(self, seen: Seen) -> None:
        header = seen.headers.get("authorization")
        client_id, secret = seen.value("client_id"), seen.value("client_secret")
        if self.client_auth == "client_secret_basic":
            ok = False
            if header and header.startswith("Basic ") and secret is None:
                try:
                    pair = base64.b64decode(header[6:], validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    pair = ""
                name, _, password = pair.partition(":")
                name, password = unquote_plus(name), unquote_plus(password)  # RFC 6749 §2.3.1
                ok = name == self.client_id and password == self.client_secret and client_id in (None, name)
        elif self.client_auth == "client_secret_post":
            ok = header is None and client_id == self.client_id and secret == self.client_secret
        else:  # a public client names itself (RFC 8628 §3.1, §3.4)
            ok = header is None and secret is None and client_id == self.client_id
        if not ok:
            raise Refused("invalid_client", 401, {"www-authenticate": 'Basic realm="fake"'} if header else None)

    def _device_authorization(self, seen: Seen) -> httpx.Response:
        scope = frozenset((seen.value("scope") or "").split())
        if not scope <= self.scopes:
            raise Refused("invalid_scope")
        resources = tuple(seen.form.get("resource", ()))
        if not all(_is_resource(r) for r in resources):
            raise Refused("invalid_target")  # RFC 8707 §2
        max_age = seen.value("max_age")
        now = self.clock()
        code = Authorization(secrets.token_urlsafe(32), self._new_user_code(), scope, resources,
                             seen.value("acr_values"), int(max_age) if max_age else None,
                             now + self.code_lifetime, now)
        self._codes[code.device_code] = code
        uri = f"{self.issuer}/activate"
        return _json(200, {"device_code": code.device_code, "user_code": code.user_code,
                           "verification_uri": uri,
                           "verification_uri_complete": f"{uri}?user_code={quote(code.user_code)}",
                           "expires_in": self.code_lifetime, "interval": self.interval, **self.device_answer})

    def _token(self, seen: Seen) -> httpx.Response:
        if seen.kind == "device_token":
            return self._poll(seen)
        if seen.kind == "refresh":
            return self._refresh(seen)
        if seen.kind == "client_credentials":
            return self._client_credentials(seen)
        raise Refused("unsupported_grant_type")

    def _client_credentials(self, seen: Seen) -> httpx.Response:
        if self.client_auth == "none":
            raise Refused("unauthorized_client")  # RFC 6749 §4.4: confidential clients only
        asked = seen.value("scope")
        scope = self.client_scopes if asked is None else frozenset(asked.split())
        if not scope <= self.client_scopes:
            raise Refused("invalid_scope")
        resources = tuple(seen.form.get("resource", ()))
        if len(resources) > 1 or not set(resources) <= self.client_resources:
            raise Refused("invalid_target")
        access = "cc-" + secrets.token_urlsafe(24)
        jkt = seen.proof and seen.proof["jkt"]
        self._access_tokens[access] = AccessToken(None, scope, resources, self.clock() + self.lifetime, jkt=jkt)
        return _json(200, {"access_token": access, "token_type": "DPoP" if jkt else "Bearer",
                           "expires_in": self.lifetime, "scope": " ".join(sorted(scope))}, {"cache-control": "no-store"})

    def _poll(self, seen: Seen) -> httpx.Response:
        code = self._codes.get(seen.value("device_code") or "")
        if code is None or code.outcome == "used":
            raise Refused("invalid_grant")
        if seen.at >= code.expires_at + self.code_grace:
            raise Refused("expired_token")
        spacing, code.last_poll = seen.at - code.last_poll, seen.at
        if spacing < max(self.poll_spacing or 0, self.interval + SLOW_DOWN_STEP * code.slow_downs):
            code.slow_downs += 1
            raise Refused("slow_down")
        if code.outcome is None:
            raise Refused("authorization_pending")
        if code.outcome == "denied":
            raise Refused("access_denied")
        grant, code.outcome = code.outcome, "used"
        assert isinstance(grant, Grant)
        grant.jkt = seen.proof and seen.proof["jkt"]
        return self._issue(grant, grant.scope, grant.resources, new_refresh_token=True, jkt=grant.jkt)

    def _refresh(self, seen: Seen) -> httpx.Response:
        token = seen.value("refresh_token") or ""
        grant = self._refresh_tokens.get(token)
        if grant is not None and not grant.revoked and token != grant.refresh_token:
            self.reuse_detections += 1  # RFC 9700 §4.14.2: a replay; the whole family goes
            self._revoke_grant(grant)
        if grant is None or grant.revoked:
            raise Refused("invalid_grant" if self.refusal == "invalid_grant" else None)
        if grant.jkt is not None and (seen.proof or {}).get("jkt") != grant.jkt:
            raise Refused("invalid_grant")  # RFC 9449 §5: a bound refresh token wants a proof by its key
        asked = seen.value("scope")
        scope = grant.scope if asked is None else frozenset(asked.split())
        if not scope <= grant.scope:
            raise Refused("invalid_scope")  # RFC 6749 §6: never beyond the grant
        resources = tuple(seen.form.get("resource", ())) or grant.resources
        if not set(resources) <= set(grant.resources):
            raise Refused("invalid_target")  # RFC 8707 §2.2
        return self._issue(grant, scope, resources, new_refresh_token=self.rotate, jkt=seen.proof and seen.proof["jkt"])

    def _issue(self, grant: Grant, scope: frozenset[str], resources: tuple[str, ...], *,
               new_refresh_token: bool, jkt: str | None = None) -> httpx.Response:
        access = "at-" + secrets.token_urlsafe(24)
        self._access_tokens[access] = AccessToken(grant, scope, resources, self.clock() + self.lifetime, jkt=jkt)
        body: dict[str, Any] = {"access_token": access, "token_type": "DPoP" if jkt else "Bearer",
                                "expires_in": self.lifetime, "scope": " ".join(sorted(scope))}
        if new_refresh_token:
            grant.refresh_token = body["refresh_token"] = "rt-" + secrets.token_urlsafe(24)
            self._refresh_tokens[grant.refresh_token] = grant
        if "openid" in scope:
            body["id_token"] = self._id_token(grant)
        return _json(200, body, {"cache-control": "no-store"})

    def _id_token(self, grant: Grant) -> str:
        now = int(self.wall())
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": grant.sub, "iat": now,
                  "exp": now + self.lifetime, "name": grant.name, "acr": grant.acr, "auth_time": grant.auth_time}
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({k: v for k, v in claims.items() if v is not None}).encode())
        signature = hmac.new(self.id_token_key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def _revoke(self, seen: Seen) -> httpx.Response:
        token = seen.value("token")
        if not token:
            raise Refused("invalid_request")
        self.revoke(token)
        return httpx.Response(200)  # RFC 7009 §2.2: also when the token was unknown or already invalid

    def _revoke_grant(self, grant: Grant) -> None:
        grant.revoked = True  # RFC 7009 §2.1: the access tokens of the grant go with it
        for access in self._access_tokens.values():
            if access.grant is grant:
                access.revoked = True

    def _new_user_code(self) -> str:
        letters = "".join(secrets.choice(USER_CODE_LETTERS) for _ in range(8))
        return f"{letters[:4]}-{letters[4:]}"

    def _by_user_code(self, user_code: str) -> Authorization:
        """RFC 8628 §6.1: compared without case or punctuation."""
        wanted = "".join(c for c in user_code.upper() if c.isalnum())
        for code in self._codes.values():
            if code.user_code.replace("-", "") == wanted:
                return code
        raise KeyError(f"no device authorization has user code {user_code!r}")


def _json(status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=data, headers=headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _is_resource(value: str) -> bool:
    """RFC 8707 §2: an absolute URI without a fragment."""
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and "#" not in value
