"""The check of the authorization server: the daemon's own discovery (or a probe of the
endpoints set in the config) through ``oauth.http.run_sync``, each request tried once;
what went wrong on the network explained from the exception's causes; and the server's
``Date`` against our clock."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from typing import Any, Iterator
from urllib.parse import urlsplit

from devicelink.config import Config
from devicelink.doctor.findings import FAIL, OK, WARN, Finding
from devicelink.errors import GrantFailed, ProtocolViolation
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth.http import ClientAuth, run_sync

SERVER_TIMEOUT = 10.0
CLOCK_SKEW = 60  # seconds between our clock and the server's Date header worth a warning
#: The endpoints [provider] may set; a config with the first two needs no discovery.
ENDPOINTS = m.ENDPOINT_NAMES


def check_server(cfg: Config) -> list[Finding]:
    """Discovery (RFC 8414, then OpenID Connect) as the daemon does it, or the configured
    endpoints when both are set; TLS verified, http:// only as the config allows it.
    The daemon's own flows and HTTP adapter, each request tried once."""
    p = cfg.provider
    configured = {k: v for k in ENDPOINTS if (v := getattr(p, k))}
    seen: list[tuple[m.Request, m.Reply]] = []

    def drive(flow: Any) -> Any:  # discovery and probes take no client authentication
        with _quiet("asyncio", "devicelink.oauth.http"):  # what goes wrong is a finding, not a log line
            return run_sync(flow, ClientAuth(p.client_id), deadline=SERVER_TIMEOUT,
                            observe=lambda request, reply: seen.append((request, reply)))

    try:
        if m.Endpoints.complete(configured):
            answers = drive(grant.probe(configured[name] for name in ENDPOINTS[:2]))
            return [_answers(name, url, resp) for name, (url, resp) in zip(ENDPOINTS, answers)] \
                + _skew(answers[-1][1])
        metadata = drive(grant.discover(p.issuer, None))
        endpoints = grant.resolve_endpoints(metadata, configured)
    except GrantFailed:
        request, failure = seen[-1]
        return [Finding(FAIL, "server", *_unanswered(failure, request.url))]
    except ProtocolViolation as exc:
        if not any(isinstance(reply, m.Response) and reply.status == 200 for _, reply in seen):
            return [Finding(FAIL, "server", str(exc), "check [provider] issuer")]
        return [Finding(FAIL, "server", str(exc), "check [provider] issuer against the server's issuer "
                        "(exactly, trailing slash included), or set the endpoints in [provider]")]
    if (insecure := grant.insecure_endpoint(endpoints, p.allow_insecure_http)) is not None:
        return [Finding(FAIL, "server", f"the discovery document's {insecure} is not https",
                        "the server must publish https:// endpoints")]
    request, resp = seen[-1]
    return [Finding(OK, "server", f"{request.url}: issuer matches, device authorization at "
                    f"{endpoints.device_authorization_endpoint}")] + _skew(resp)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _answers(name: str, url: str, resp: m.Response) -> Finding:
    fine = resp.status < 500
    return Finding(OK if fine else WARN, "server", f"{name} {url} answers (HTTP {resp.status} to a GET)",
                   "" if fine else "the server has trouble; try again later")


def _unanswered(failure: m.Failure, url: str) -> tuple[str, str]:
    if failure.exc is not None:
        return describe_network_failure(failure.exc, url)
    return f"no usable answer from {_where(url)}: {failure.reason}", "check the network, a firewall or a proxy"


def _where(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def describe_network_failure(exc: BaseException, url: str) -> tuple[str, str]:
    """What went wrong reaching ``url``, and what to do, from the exception's causes."""
    from devicelink import clock

    host, where = urlsplit(url).hostname or url, _where(url)
    chain = _causes(exc)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = getattr(cert, "verify_message", None) or str(cert or exc)
        what = clock.explain_failure(f"the TLS certificate of {host} was refused: {reason}", clock.clock_synced())
        return what, ("set the clock (NTP) if it is wrong; else this device does not trust the server's "
                      "certificate chain (ca-certificates)")
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return f"TLS with {where} failed: {exc}", "is it an https server on that port? a proxy in between?"
    if any(isinstance(e, socket.gaierror) for e in chain) or "name resolution" in str(exc).lower() \
            or "name or service not known" in str(exc).lower():
        return f"cannot resolve {host} (DNS)", "check the network and DNS (resolvectl status, /etc/resolv.conf)"
    if any(isinstance(e, TimeoutError) for e in chain):  # httpx's timeouts are raised from one
        return f"no answer from {where} within {SERVER_TIMEOUT:g} s", "check the network, a firewall or a proxy"
    err = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
    if err is not None and err.errno == errno.ECONNREFUSED:
        return f"{where} refused the connection", "is the server up, and the port in [provider] issuer right?"
    if err is not None and err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where} is not reachable: {err.strerror}", "check the network connection"
    return f"cannot reach {where}: {type(exc).__name__}: {str(exc)[:160]}", "check the network"


def _causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its causes, and the members of any exception group among them
    (a connection to a name with several addresses can fail on each)."""
    chain: list[BaseException] = []
    todo = [exc] if exc is not None else []
    while todo and len(chain) < 20:
        exc = todo.pop(0)
        chain.append(exc)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        if (cause := exc.__cause__ or exc.__context__) is not None:
            todo.append(cause)
    return chain


def _skew(resp: m.Response) -> list[Finding]:
    """The server's Date header against our wall clock: a board without an RTC that has
    not synchronised yet shows here before it breaks TLS."""
    import email.utils
    import time

    try:
        server = email.utils.parsedate_to_datetime(resp.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return []
    skew = time.time() - server
    if abs(skew) <= CLOCK_SKEW:
        return []
    return [Finding(WARN, "clock", f"the wall clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                    "the server's", "synchronise it (NTP): TLS and token lifetimes depend on it")]
