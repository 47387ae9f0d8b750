"""Ask the devicelink daemon for tokens over its Unix socket.

What ``devicelink token`` and local apps import::

    from devicelink.ipc.client import Client

    with Client() as dl:
        headers = {"Authorization": f"Bearer {dl.token(min_ttl=120)['access_token']}"}

Two errors, so callers can tell "no daemon" from "the daemon said no":

- :class:`DaemonUnreachable`: the socket is missing, refuses us, is not ours
  to open, or nobody answered in time. The message names the socket path.
- :class:`DaemonError`: the daemon answered with an error. ``code`` is the
  socket API's error code (``not_paired``, ``forbidden``, ...), ``status`` the
  HTTP status and ``description`` the daemon's explanation.
"""

from __future__ import annotations

import errno
from typing import Any

import httpx

from devicelink.errors import DeviceLinkError

__all__ = ["DEFAULT_SOCKET_PATH", "Client", "DaemonError", "DaemonUnreachable"]

DEFAULT_SOCKET_PATH = "/run/devicelink/agent.sock"


class DaemonUnreachable(DeviceLinkError, ConnectionError):
    """The daemon could not be asked: no socket, no permission, no answer."""


class DaemonError(DeviceLinkError):
    """The daemon answered with an error (``{"error", "error_description"}``)."""

    def __init__(self, code: str, description: str, status: int) -> None:
        super().__init__(f"{description} ({code})" if description else code)
        self.code = code
        self.description = description
        self.status = status


class Client:
    """A blocking client of the socket API; one keep-alive connection, reused."""

    def __init__(self, path: str = DEFAULT_SOCKET_PATH, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=path),
            base_url="http://devicelink",
            timeout=timeout,
        )

    def token(
        self,
        min_ttl: int | None = None,
        scope: str | None = None,
        resource: str | None = None,
    ) -> dict[str, Any]:
        """``{"access_token", "token_type", "expires_in", "scope"}``, valid for ``min_ttl`` s."""
        params: dict[str, str] = {}
        if min_ttl is not None:
            params["min_ttl"] = str(int(min_ttl))
        if scope is not None:
            params["scope"] = scope
        if resource is not None:
            params["resource"] = resource
        return self._request("GET", "/v1/token", params)

    def status(self) -> dict[str, Any]:
        """The daemon's status object (state, pairing code, account, ...)."""
        return self._request("GET", "/v1/status")

    def pair(self) -> dict[str, Any]:
        """Ask the daemon to show a new pairing code now (admin clients only)."""
        return self._request("POST", "/v1/pair")

    def unpair(self) -> dict[str, Any]:
        """Revoke the grant and forget the tokens (admin clients only)."""
        return self._request("POST", "/v1/unpair")

    def health(self) -> bool:
        """True when the daemon holds a valid token or is pairing."""
        response = self._send("GET", "/v1/health", None)
        if response.status_code in (200, 503):
            return response.status_code == 200
        raise self._error(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, url: str, params: dict[str, str] | None = None) -> Any:
        response = self._send(method, url, params)
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise DaemonError(
                    "invalid_response", "the daemon's answer is not JSON", response.status_code
                ) from None
        raise self._error(response)

    def _send(self, method: str, url: str, params: dict[str, str] | None) -> httpx.Response:
        try:
            return self._http.request(method, url, params=params)
        except httpx.TimeoutException as exc:
            raise DaemonUnreachable(
                f"the devicelink daemon on {self.path} did not answer within {self.timeout:g}s"
            ) from exc
        except httpx.TransportError as exc:
            raise DaemonUnreachable(self._why_unreachable(exc)) from exc

    def _why_unreachable(self, exc: BaseException) -> str:
        err = _os_error(exc)
        code = err.errno if err is not None else None
        if code == errno.ENOENT:
            return f"no devicelink socket at {self.path}: is the daemon running?"
        if code == errno.ECONNREFUSED:
            return f"nothing is listening on {self.path}: is the daemon running?"
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied on {self.path}: "
                "is this user in the socket's group (devicelink)?"
            )
        return f"cannot talk to the devicelink daemon on {self.path}: {err or exc}"

    @staticmethod
    def _error(response: httpx.Response) -> DaemonError:
        try:
            body = response.json()
            code, description = body["error"], body.get("error_description", "")
            if not isinstance(code, str) or not isinstance(description, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return DaemonError(
                "invalid_response",
                f"the daemon answered HTTP {response.status_code} without an error object",
                response.status_code,
            )
        return DaemonError(code, description, response.status_code)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError under httpx's and httpcore's wrappers, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
