"""One exception tree: every error the engine raises has an answer on the socket."""

from __future__ import annotations

import inspect

import pytest

from devicelink import errors
from devicelink.ipc.routes import STATUS_BY_CODE, ApiError


def every_error() -> list[type[errors.DeviceLinkError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.DeviceLinkError)]


def test_every_code_the_engine_may_use_has_a_status():
    assert errors.REFUSAL_CODES <= set(STATUS_BY_CODE)
    for cls in every_error():
        assert cls.code in STATUS_BY_CODE, cls


@pytest.mark.parametrize("err, status, code", [
    (errors.Refused("forbidden", "no"), 403, "forbidden"),
    (errors.RefreshRejected("gone", "invalid_grant"), 503, "reauth_required"),
    (errors.TargetRefused("no such resource", "invalid_target"), 403, "forbidden"),
    (errors.GrantFailed("HTTP 503"), 502, "upstream_unavailable"),
    (errors.ProtocolViolation("bad JSON"), 502, "upstream_unavailable"),
    (errors.StoreError("disk full"), 500, "server_error"),
])
def test_the_socket_answers_each_error_by_its_code(err, status, code):
    answer = ApiError.of(err)
    assert (answer.status, answer.code) == (status, code)
    assert answer.description == (err.description if isinstance(err, errors.Refused) else str(err))


def test_a_refusal_needs_a_known_code():
    with pytest.raises(ValueError):
        errors.Refused("teapot", "short and stout")
