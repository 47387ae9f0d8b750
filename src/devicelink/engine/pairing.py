"""Pairing: discovery, a code on the screen, polling, until the device holds a grant.

The timing rules live in the pure flow (``oauth/grant.py``); this room runs it,
shows each code, and decides what an ending means: an expired code is replaced
``[pairing] restart_on_expiry`` times in a row, then the device waits for the
user (RFC 8628 §3.5); a denial or a refusal waits for the user too.

Discovery is asked only when no fresh document is kept (``engine/discovery.py``); a
kept one whose device authorization endpoint answers 404 is asked for again, once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.clock import explain_failure
from devicelink.engine.answers import CodeShown, Trouble
from devicelink.engine.discovery import Discovery
from devicelink.errors import AuthorizationDenied, DeviceCodeExpired, EndpointGone, GrantFailed, ProtocolViolation
from devicelink.lifecycle import Event
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth.metadata import Discovered

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

ANSWER_WAIT = 30.0  # how long POST /v1/pair waits for the code it will print


#: What to check when the server refuses the client itself (``invalid_client``), by ``client_auth``.
CLIENT_HINT = {
    "none": "check [provider] client_id, and that the client may use the device flow at the server",
    "client_secret_basic": "check [provider] client_id and the secret in client_secret_file",
    "client_secret_post": "check [provider] client_id and the secret in client_secret_file",
    "private_key_jwt": "check [provider] client_id, that this device's public key is registered for it "
                       "(devicelink provision prints it; with [registration], provision --check asks the server) "
                       "and that the clock is right",
}


class Pairing:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.task: asyncio.Task[None] | None = None
        self.settled = asyncio.Event()  # a code is shown, or pairing has ended
        self.discovery = Discovery(device.store.dir, device.provider.issuer, device.wall_clock)

    def start(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.settled.clear()
        self.device.message = None
        self.device.move(Event.PAIR_REQUESTED)
        self.task = asyncio.create_task(self._run())

    async def wait_for_code(self) -> None:
        try:
            await asyncio.wait_for(self.settled.wait(), ANSWER_WAIT)
        except TimeoutError:
            pass  # still connecting: the status says so

    async def _run(self) -> None:
        ticker = asyncio.create_task(self.device.tick())
        try:
            await self._until_done()
        finally:
            ticker.cancel()

    async def _until_done(self) -> None:
        device = self.device
        expired_in_a_row = 0
        rediscovered = False
        while True:
            try:
                endpoints = await self.resolve_endpoints()
                provider = device.provider
                flow = grant.device_flow(endpoints, provider.scope, provider.resource, provider.issuer,
                                         provider.client_id, device.rng, verification=self.verification())
                tokens = await device.http.run(flow, show=self._show, sleep=device.sleep, observe=self.observe)
            except asyncio.CancelledError:
                raise
            except DeviceCodeExpired:
                expired_in_a_row += 1
                device.metrics.inc("devicelink_codes_expired_total")
                if expired_in_a_row <= device.cfg.pairing.restart_on_expiry:
                    logger.info("the code expired; showing a new one (%d of %d)",
                                expired_in_a_row, device.cfg.pairing.restart_on_expiry)
                    device.message = "The last code expired. Here is a new one."
                    device.move(Event.CODE_REPLACED)
                    continue
                # RFC 8628 §3.5: after expired_token, wait for the user before starting again.
                device.message = "The code expired. Press the button or run `devicelink pair` for a new one."
                logger.info("the code expired; waiting for the user to ask for a new one")
                self.settled.set()
                device.move(Event.CODE_EXPIRED)
                return
            except AuthorizationDenied as exc:
                self._failed(Event.DENIED, str(exc))
                return
            except EndpointGone as exc:
                if self.discovery.reused and not rediscovered:  # endpoints move: ask once more, not in a loop
                    logger.warning("%s; the discovery document kept may be out of date: asking again", exc)
                    rediscovered = True
                    self.discovery.forget()
                    continue
                self._failed(Event.PAIRING_FAILED, str(exc))
                return
            except GrantFailed as exc:
                if exc.oauth_error == "invalid_client":  # RFC 6749 §5.2: the config, not the user
                    self._failed(Event.PAIRING_FAILED, f"{exc}; {CLIENT_HINT[provider.client_auth]}", Trouble.CLIENT)
                else:
                    self._failed(Event.PAIRING_FAILED, str(exc))
                return
            except ProtocolViolation as exc:
                self._failed(Event.PAIRING_FAILED, str(exc))
                return
            except Exception as exc:  # never leave a dead task behind a code on screen
                logger.exception("pairing failed unexpectedly")
                self._failed(Event.PAIRING_FAILED, f"unexpected {type(exc).__name__}")
                return
            await device.paired(tokens)
            return

    def verification(self) -> grant.VerificationRule:
        """Where a verification URI may point (issue 10: no phishing page on the screen)."""
        p = self.device.provider
        return grant.VerificationRule.of(p.issuer, p.verification_hosts, p.allow_insecure_http)

    def _failed(self, event: Event, reason: str, kind: Trouble = Trouble.PAIRING) -> None:
        device = self.device
        logger.error("pairing failed: %s", reason)
        self.settled.set()
        device.report(kind, reason)
        device.message = "Pairing failed. Press the button or run `devicelink pair` to try again."
        device.move(event)

    async def resolve_endpoints(self) -> m.Endpoints:
        """The configured endpoints, or RFC 8414 / OIDC discovery (configured ones win)."""
        device = self.device
        if m.Endpoints.complete(device.configured):  # no discovery needed (GitHub has none)
            return m.Endpoints(**device.configured)
        document = kept = await self.discovery.kept()
        if document is None:
            flow = grant.discovery_answer(device.provider.issuer, grant.Backoff(device.rng))
            resp = await device.http.run(flow, sleep=device.sleep, observe=self.observe)
            document = Discovered.of(resp, device.provider.issuer, device.wall_clock())
        endpoints = grant.resolve_endpoints(document.metadata, device.configured)
        if (insecure := grant.insecure_endpoint(endpoints, device.provider.allow_insecure_http)) is not None:
            raise ProtocolViolation(f"the discovery document's {insecure} is not https")
        if kept is None:  # only a document that could be used is kept
            await self.discovery.keep(document)
        device.endpoints = endpoints
        return endpoints

    def _show(self, step: grant.Show) -> None:
        device, code = self.device, step.code
        device.pairing = code
        device.clear_error()
        logger.info("pairing: enter code %s at %s", code.user_code, code.verification_uri)
        self.settled.set()
        device.redraw()
        device.metrics.inc("devicelink_codes_issued_total")
        device.events.publish("pairing", CodeShown(code, code.expires_in(device.clock())))

    def observe(self, request: m.Request, reply: m.Reply) -> None:
        """Every pairing request and its reply: metrics, and ``last_error`` for the owner."""
        device, verdict = self.device, m.classify(reply)
        if request.kind == "device_token":
            device.metrics.inc("devicelink_polls_total")
            if isinstance(reply, m.Response) and (verdict.error == "slow_down" or reply.status == 429):
                device.metrics.inc("devicelink_slow_downs_total")
        if isinstance(reply, m.Failure):
            reason = explain_failure(reply.reason, device.clock_synced())
            device.report(Trouble.UPSTREAM, f"cannot reach the authorization server: {reason}")
        elif verdict.transient:
            device.report(Trouble.UPSTREAM, f"the authorization server answered {verdict.reason}")
