"""Registration in the daemon: a device with ``[registration]`` registers before it pairs.

``devicelink provision`` registers at the factory or at first boot; the daemon does
the same when it starts unregistered (provisioning had no network, or a factory reset
deleted the registration), with its backoff, and only then asks for a pairing code:
a device never pairs as a client it does not have. Once registered, the device is
that client everywhere: ``device.provider.client_id`` (the state record's check,
pairing, refresh, step-up, revocation, ID tokens' ``aud``) and the
client-authentication hook (the assertions' ``iss`` and ``sub``) use the
registered ``client_id``, not the config's.

A factory reset (the button held, ``devicelink unpair --factory``) unpairs, then
here: waits for the revocation to go through (it is authenticated as the client
about to go), deletes the client at the server (RFC 7592; marked first, so a power
cut resumes it), forgets it, and registers afresh for the next owner. The identity
key is kept (docs/identity.md says why), unless ``[identity] on_factory_reset =
"new_key"``: then a new key is made between the deletion and the new registration
(:meth:`Registering._renew`, ``identity/renewal.py``).

The steps are ``identity/registration.py``'s generators; their few file writes run
on the event loop (a registration happens once in a device's life).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from devicelink.engine.answers import Trouble
from devicelink.errors import ConfigError, DeviceLinkError, RegistrationFailed
from devicelink.identity import registration as r
from devicelink.oauth import messages as m

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

REGISTERING = "Registering this device with the authorization server..."
FAILED = "Registration failed. Press the button or run `devicelink pair` to try again."
RESETTING = "Factory reset: finishing with the authorization server..."


class Registering:
    def __init__(self, device: Device, enrolment: r.Enrolment, make_auth: Callable[[str], Any],
                 registered: r.Registration | None) -> None:
        self.device, self.enrolment, self.make_auth = device, enrolment, make_auth
        self.registration = registered if registered is not None and not registered.deleting else None
        #: A factory reset cut off by a power cut: it resumes, after the revocations still owed.
        self.resuming_reset = (registered is not None and registered.deleting) or (
            device.renewing is not None and device.renewing.pending)
        self.task: asyncio.Task[None] | None = None
        if self.registration is not None:
            self._check_key(self.registration)

    @property
    def needed(self) -> bool:
        """No usable registration yet: pairing waits for one."""
        return self.registration is None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, *, after_revocations: bool = False) -> None:
        """Register (finishing an interrupted deletion first), then pair."""
        if self.busy:
            return
        after_revocations = after_revocations or self.resuming_reset
        self.device.message = RESETTING if after_revocations else REGISTERING
        self.device.redraw()
        self.task = asyncio.create_task(self._run(after_revocations))

    async def reset(self) -> None:
        """The registration part of a factory reset, after the unpair: marked for deletion now
        (durably), deleted and replaced in the background; or, with ``[registration]
        on_factory_reset = "keep"``, kept (the next owner pairs as the same client)."""
        reg_cfg = self.enrolment.cfg.registration
        if reg_cfg is not None and reg_cfg.on_factory_reset == "keep" and self.registration is not None:
            logger.info("factory reset: the registration %s is kept ([registration] on_factory_reset = 'keep')",
                        self.registration.client_id)
            self.device.pairer.start()
            return
        files = self.enrolment.files
        reg = files.load()
        if reg is not None and not reg.deleting:
            files.save(replace(reg, deleting=True))
        self.registration = None
        self.start(after_revocations=True)

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])
        self.task = None

    async def _run(self, after_revocations: bool) -> None:
        device = self.device
        try:
            if after_revocations and device.revocations.owed:
                logger.info("factory reset: waiting for the revocation before deleting the registration")
                await device.revocations_settled()
            if device.renewing is not None and device.renewing.pending:
                await self._renew()
            reg, _ = await device.http.run(r.enrol(self.enrolment), sleep=device.sleep, observe=self.observe)
        except asyncio.CancelledError:
            raise
        except (DeviceLinkError, ConfigError) as exc:
            reason = f"registration failed: {exc}"
            logger.error("%s", reason)
            device.report(Trouble.CLIENT if isinstance(exc, RegistrationFailed) else Trouble.PAIRING, reason)
            device.message = FAILED
            device.redraw()
            return
        except Exception as exc:  # never leave a dead task behind the screen's message
            logger.exception("registration failed unexpectedly")
            device.report(Trouble.PAIRING, f"registration failed: unexpected {type(exc).__name__}")
            device.message = FAILED
            device.redraw()
            return
        self.resuming_reset = False
        self.adopt(reg)
        device.clear_error()
        device.pairer.start()

    async def _renew(self) -> None:
        """``on_factory_reset = "new_key"``: the old client deleted (RFC 7592, as before), then the
        new key made and swapped in, so the registration that follows carries it
        (identity/renewal.py has the order and why a power cut anywhere resumes)."""
        device = self.device
        old = self.enrolment.files.load()
        if old is not None:
            if not old.deleting:
                old = replace(old, deleting=True)
                self.enrolment.files.save(old)
            await device.http.run(r.deregister(self.enrolment, old), sleep=device.sleep, observe=self.observe)
        assert device.renewing is not None
        device.renewing.finish()

    def adopt(self, reg: r.Registration) -> None:
        """From now on the device is ``reg.client_id``, in every request and record."""
        device = self.device
        self.registration = reg
        self._check_key(reg)
        if device.provider.client_id != reg.client_id:
            device.provider = replace(device.provider, client_id=reg.client_id)
            device.cfg = replace(device.cfg, provider=device.provider)
            device.http.auth = self.make_auth(reg.client_id)
        logger.info("registered as client_id %s", reg.client_id)

    def _check_key(self, reg: r.Registration) -> None:
        if reg.kid != self.enrolment.signer.kid:
            logger.error("the registration %s is for the key %s, not this device's %s: the server will refuse "
                         "its assertions; give it the new key with devicelink provision --update (docs/identity.md)",
                         reg.client_id, reg.kid, self.enrolment.signer.kid)

    def observe(self, request: m.Request, reply: m.Reply) -> None:
        """``last_error`` while the server cannot be reached (the backoff retries)."""
        if m.classify(reply).transient:
            reason = reply.reason if isinstance(reply, m.Failure) else m.classify(reply).reason
            self.device.report(Trouble.UPSTREAM, f"registering: cannot reach the authorization server: {reason}")
