"""The development server's Flask app: its routes and the verification page.

- discovery (RFC 8414 and OIDC) and the JWKS;
- the OAuth endpoints, answered by grants.py: /device_authorization, /token,
  /revoke, /userinfo; a DPoP proof (RFC 9449) on any of them is checked here
  (dpop.py) before Authlib sees the request, and /userinfo takes a DPoP-bound
  token only with the DPoP scheme and a proof by its key;
- the verification page a person opens on their phone, /device (pages.py, asking.py);
- the simulator's own controls: /sim/approve, /sim/deny, /sim/faults.

Every OAuth request holds `State.lock` from start to end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, g, jsonify, request

from . import pages
from .asking import asking
from .dpop import ProofRefused
from .faults import outcome_of
from .grants import DevAuthorizationServer, userinfo_protector
from .records import TokenEvent
from .settings import (ACR_PWD, ACR_VALUES_SUPPORTED, AUTH_METHODS_SUPPORTED, CLIENT_CREDENTIALS_GRANT_TYPE,
                       DEVICE_CODE_GRANT_TYPE, asked_acr)
from .signing import CLAIMS, SigningKey
from .state import AlreadyDecided, State

if TYPE_CHECKING:
    from .authserver import DevServer

USED = "That code was already approved or denied."


#: Where the server's DPoP nonce goes out on every answer (dpop_nonce=True).
NONCE_ENDPOINTS = frozenset({"device_authorization", "token", "revoke", "userinfo"})


def build_app(server: DevServer, state: State, keys: SigningKey) -> Flask:
    """The app of `server`, whose issuer, settings, approve, deny, around_token and
    faults it uses; it reads `around_token` and `faults` anew for each request."""
    app = Flask(__name__)
    settings = server.settings
    authz = DevAuthorizationServer(app, state, settings, keys, lambda: server.issuer)
    protector = userinfo_protector(state)

    def metadata():
        iss = server.issuer
        step_up = {}
        if settings.honour_step_up:
            step_up["acr_values_supported"] = list(ACR_VALUES_SUPPORTED)
        return jsonify(
            **step_up,
            issuer=iss,
            device_authorization_endpoint=f"{iss}/device_authorization",
            token_endpoint=f"{iss}/token",
            revocation_endpoint=f"{iss}/revoke",
            userinfo_endpoint=f"{iss}/userinfo",
            jwks_uri=f"{iss}/jwks",
            grant_types_supported=[DEVICE_CODE_GRANT_TYPE, "refresh_token", CLIENT_CREDENTIALS_GRANT_TYPE],
            token_endpoint_auth_methods_supported=AUTH_METHODS_SUPPORTED,
            revocation_endpoint_auth_methods_supported=AUTH_METHODS_SUPPORTED,
            # private_key_jwt (RFC 8414 §2): what client assertions may be signed with.
            token_endpoint_auth_signing_alg_values_supported=["ES256"],
            revocation_endpoint_auth_signing_alg_values_supported=["ES256"],
            # No authorization endpoint, so no response types (RFC 8414 §2).
            response_types_supported=[],
            scopes_supported=list(settings.scopes),
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            claims_supported=list(CLAIMS),
            **({"registration_endpoint": f"{iss}/register"} if settings.fleet is not None else {}),
            **({"dpop_signing_alg_values_supported": ["ES256"]} if settings.dpop else {}),  # RFC 9449 §5.1
        )

    app.add_url_rule("/.well-known/oauth-authorization-server", "rfc8414", metadata)
    app.add_url_rule("/.well-known/openid-configuration", "oidc", metadata)

    @app.get("/jwks")
    def jwks():
        return jsonify(keys.jwks)

    def proof_checked(respond, access_token: str | None = None):
        """``respond()`` once the request's DPoP proof, if it has one, passed (its key's thumbprint
        in ``g.dpop_jkt``); a 400 ``invalid_dpop_proof`` / ``use_dpop_nonce`` otherwise."""
        proof = request.headers.get("DPoP")
        if settings.dpop and proof is not None:
            try:
                g.dpop_jkt = server.proofs.check(proof, request.method, request.url, access_token)
            except ProofRefused as refused:
                return refused_proof(refused, 400)
        return respond()

    def refused_proof(refused: ProofRefused, status: int, scheme: bool = False):
        response = jsonify(error=refused.error, error_description=refused.description)
        response.status_code = status
        if refused.nonce is not None:
            response.headers["DPoP-Nonce"] = refused.nonce
        if scheme:  # a resource's challenge, RFC 9449 §7.1
            response.headers["WWW-Authenticate"] = (f'DPoP error="{refused.error}", '
                                                    f'error_description="{refused.description}", algs="ES256"')
        return response

    @app.after_request
    def dpop_nonce(response):
        # RFC 9449 §8.2, §9: the nonce to use next, on every answer (success included)
        if settings.dpop and settings.dpop_nonce and request.endpoint in NONCE_ENDPOINTS:
            response.headers.setdefault("DPoP-Nonce", server.proofs.nonce)
        return response

    @app.post("/device_authorization")
    def device_authorization():
        with state.lock:
            return proof_checked(lambda: authz.create_endpoint_response("device_authorization"))

    def token_response():
        with state.lock:
            return proof_checked(authz.create_token_response)

    @app.post("/token")
    def token():
        arrived = state.clock()
        grant_type = request.form.get("grant_type", "")
        scope = request.values.get("scope") or None  # Authlib's reading: empty is absent
        resource = tuple(request.values.getlist("resource"))
        response = app.make_response(server.around_token(token_response))
        outcome = outcome_of(response.status_code, response.get_json(silent=True))
        state.record_token_request(TokenEvent(arrived, grant_type, outcome, scope, resource))
        return response

    if settings.fleet is not None:
        @app.post("/register")
        def register():
            with state.lock:
                return authz.create_endpoint_response("client_registration")

        @app.route("/register/<client_id>", methods=["GET", "PUT", "DELETE"])
        def client_configuration(client_id):
            with state.lock:
                return authz.create_endpoint_response("client_configuration")

    @app.post("/revoke")
    def revoke():
        with state.lock:
            return proof_checked(lambda: authz.create_endpoint_response("revocation"))

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo():
        # 401 invalid_token for unknown, expired and revoked tokens.
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        with state.lock:
            held = state.access_tokens.get(value.strip())
            if settings.dpop and scheme.lower() == "dpop":  # RFC 9449 §7.1
                if held is None or held.is_expired() or held.is_revoked() or held.jkt is None:
                    return refused_proof(ProofRefused("invalid_token", "not a live DPoP-bound token"), 401, True)
                try:
                    jkt = server.proofs.check(request.headers.get("DPoP", ""), request.method, request.url,
                                              value.strip())
                except ProofRefused as refused:
                    return refused_proof(refused, 401, True)
                if jkt != held.jkt:
                    return refused_proof(ProofRefused("invalid_token", "the proof's key is not the token's"), 401, True)
                return jsonify(sub=held.grant.user.subject, name=held.grant.user.name)
            if held is not None and held.jkt is not None:  # §7.2: never taken as a Bearer token
                return refused_proof(ProofRefused("invalid_token", "a DPoP-bound token needs the DPoP scheme "
                                                  "and a proof"), 401, True)
        with state.lock, protector.acquire() as access_token:
            user = access_token.grant.user
        if user is None:  # a client credentials token: the client's own, nobody to describe
            return jsonify(error="invalid_token", error_description="The token has no user."), 401
        return jsonify(sub=user.subject, name=user.name)

    @app.get("/device")
    def device_page():
        user_code = request.args.get("user_code", "").strip()
        if not user_code:
            return pages.enter_code()
        with state.lock:
            try:
                credential = state.pending(user_code)
            except KeyError:
                credential = None
            client = credential and state.clients.get(credential.client_id)
        if credential is None:
            return pages.enter_code(user_code, "That code is not valid or has expired."), 404
        if credential.decision is not None:
            return pages.enter_code(user_code, USED), 409
        honoured = settings.honour_step_up
        # The acr that approving on this page achieves (approve() with no acr).
        acr = asked_acr(credential.acr_values) if honoured else None
        return pages.confirm(
            credential.user_code, asking(credential.client_id, client), credential.scope,
            resources=credential.resources,
            stronger_sign_in=None if acr in (None, ACR_PWD) else acr,
            max_age=credential.max_age if honoured else None,
            entered=bool(request.args.get("entered")),
        )

    @app.post("/device")
    def device_decision():
        user_code = request.form.get("user_code", "")
        subject, name = pages.chosen_user(request.form)
        action = request.form.get("action")
        if action not in ("approve", "deny"):
            return pages.enter_code(user_code, "Choose Approve or Deny."), 400
        approved = action == "approve"
        try:
            with state.lock:
                credential = state.pending(user_code)
                decided = credential.decision is not None
                who = asking(credential.client_id, state.clients.get(credential.client_id))
            if decided:  # the page decides once; srv.approve/deny and /sim/* may still change their minds
                return pages.enter_code(user_code, USED), 409
            if approved:
                server.approve(user_code, subject, name)
            else:
                server.deny(user_code)
        except KeyError:
            return pages.enter_code(user_code, "That code is not valid or has expired."), 404
        return pages.done(approved, subject, name or f"{subject.capitalize()} Example", who)

    def sim_decision(approve: bool):
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("user_code"), str):
            return jsonify(error="invalid_request"), 400
        try:
            if approve:
                subject = body.get("subject") or "alice"
                server.approve(body["user_code"], subject, body.get("name"), body.get("acr"),
                               session_age=body.get("session_age") or 0)
            else:
                server.deny(body["user_code"])
        except AlreadyDecided:
            return jsonify(error="already_decided"), 409
        except KeyError:
            return jsonify(error="unknown_user_code"), 404
        except (ValueError, TypeError) as exc:
            return jsonify(error="invalid_request", error_description=str(exc)), 400
        return jsonify(ok=True)

    app.post("/sim/approve", endpoint="sim_approve")(lambda: sim_decision(True))
    app.post("/sim/deny", endpoint="sim_deny")(lambda: sim_decision(False))

    @app.route("/sim/faults", methods=["GET", "POST", "DELETE"])
    def sim_faults():
        # faults.py, Faults.configure: {"clear", "seed", "release", "revoke_grants", "token": [...], ...}
        faults = server.faults
        if request.method == "DELETE":
            faults.clear()
        elif request.method == "POST":
            try:
                faults.configure(request.get_json(silent=True))
            except (ValueError, RuntimeError) as exc:
                return jsonify(error="invalid_request", error_description=str(exc)), 400
        return jsonify(faults.snapshot())

    return app
