"""The engine's answers as the socket's JSON: each shaped here, once (docs/socket-api.md).

A token answer carries only ``access_token``, ``token_type``, ``expires_in`` and
``scope`` (RFC 6749 §5.1), so a refresh token can never reach an app by accident.
"""

from __future__ import annotations

from typing import Any

from devicelink.engine.answers import (CodeShown, Issued, StateChanged, Status, StepUpChanged, StepUpDone,
                                       StepUpPending, TokenRotated, Unpaired)
from devicelink.ipc import routes
from devicelink.ipc.routes import Response, json_response
from devicelink.lifecycle import PairingCode


def token(issued: Issued) -> dict[str, Any]:
    return {"access_token": issued.access_token, "token_type": issued.token_type,
            "expires_in": issued.expires_in, "scope": issued.scope}


def token_response(issued: Issued) -> Response:
    return routes.token_response(token(issued))


def dpop_proof(proof: str) -> dict[str, Any]:
    """``POST /v1/dpop-proof``: the proof, for the request's ``DPoP`` header (RFC 9449 §4.1)."""
    return {"proof": proof}


def pairing(code: PairingCode, expires_in: int | None) -> dict[str, Any]:
    return {"user_code": code.user_code, "verification_uri": code.verification_uri,
            "verification_uri_complete": code.verification_uri_complete, "expires_in": expires_in}


def status(s: Status) -> dict[str, Any]:
    """The status object: never a token."""
    return {
        "state": s.state,
        "pairing": pairing(s.pairing, s.pairing_expires_in) if s.pairing else None,
        "account": {"sub": s.account.sub, "name": s.account.name} if s.account else None,
        "access_token_expires_in": s.access_token_expires_in,
        "last_refresh": s.last_refresh,
        "last_error": s.last_error,
        "last_error_kind": s.last_error_kind,
        "warnings": list(s.warnings),
        "message": s.message,
        "clock_synced": s.clock_synced,
        "key_source": s.key_source,
        "pending_revocations": s.pending_revocations,
        "version": s.version,
        "device_token": {"held": s.device_token.held, "last_error": s.device_token.last_error}
        if s.device_token else None,
    }


def step_up_response(answer: StepUpPending | StepUpDone) -> Response:
    """200 with the stronger token once confirmed; 202 with the code to confirm before."""
    if isinstance(answer, StepUpDone):
        return json_response(200, {**token(answer.token), "acr": answer.acr, "auth_time": answer.auth_time})
    code = answer.code
    return json_response(202, {"status": "pending", "user_code": code and code.user_code,
                               "verification_uri": code and code.verification_uri,
                               "verification_uri_complete": code and code.verification_uri_complete,
                               "expires_in": answer.expires_in})


def event(data: Any) -> Any:
    """An event's ``data`` line (no token values: the engine's events hold none)."""
    if isinstance(data, StateChanged):
        account = data.account
        return {"state": data.state, "account": {"sub": account.sub, "name": account.name} if account else None,
                "message": data.message}
    if isinstance(data, CodeShown):
        return pairing(data.code, data.expires_in)
    if isinstance(data, TokenRotated):
        return {"expires_in": data.expires_in, "scope": data.scope}
    if isinstance(data, StepUpChanged):
        return {"app": data.app, "status": data.status}
    return data


def unpaired(u: Unpaired) -> dict[str, Any]:
    return {"state": u.state, "revoked": u.revoked, "revocation": u.revocation, "revocation_error": u.revocation_error}
