"""The composition root: builds the adapters the config asks for and runs the loop.

Only this module knows every other one. Hardware and display modules are
imported here, inside the branch that needs them, so a headless device never
loads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Callable

from devicelink.config import Config
from devicelink.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from devicelink.engine import Device
    from devicelink.policy import Policy

logger = logging.getLogger(__name__)


def read_client_secret(cfg: Config) -> str | None:
    path = cfg.provider.client_secret_file
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{cfg.path}: [provider] client_secret_file: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{cfg.path}: [provider] client_secret_file: {path} is empty")
    return secret


def load_policy(cfg: Config) -> Policy:
    from devicelink import policy

    loaded = policy.load(cfg)
    for problem in loaded.problems:
        logger.warning("%s", problem)
    logger.info("per-app policy: %d [[client]] entr%s", len(loaded), "y" if len(loaded) == 1 else "ies")
    return loaded


def reload_policy(cfg: Config, current: Policy) -> Policy:
    """SIGHUP: read the [[client]] entries and drop-ins again. A config file that no longer
    loads keeps the current policy (and says why); other sections need a restart."""
    from dataclasses import replace

    from devicelink import config

    if cfg.path is None:
        return current
    try:
        fresh = config.load(cfg.path)
        if replace(fresh, clients=()) != replace(cfg, clients=()):
            logger.warning("%s: only [[client]] entries take effect on reload; restart devicelink "
                           "for the other changes", cfg.path)
        return load_policy(replace(cfg, clients=fresh.clients))
    except ConfigError as exc:
        logger.error("reload failed, keeping the previous per-app policy (%d [[client]] entr%s): %s",
                     len(current), "y" if len(current) == 1 else "ies", exc)
        return current


def signing_params(cfg: Config, endpoints: Callable[[], Any],
                   wall_clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """What signs with the device's key: ``private_key_jwt`` (the key, loaded or made now; the
    issuer; the audience; the token endpoint as ``endpoints()`` knows it when a request goes)
    and DPoP proofs (``dpop``, RFC 9449), the same key, both dated by ``wall_clock``. Nothing
    for a daemon that does neither: then no key code (``cryptography``'s EC) is imported."""
    p = cfg.provider
    if p.client_auth != "private_key_jwt" and not p.dpop:
        return {}
    from devicelink.identity.signer import open_signer

    signer = open_signer(cfg)
    params: dict[str, Any] = {}
    if p.client_auth == "private_key_jwt":
        params.update(signer=signer, issuer=p.issuer, audience=p.assertion_audience or ("issuer",),
                      token_endpoint=lambda: (found := endpoints()) and found.token_endpoint, wall_clock=wall_clock)
    if p.dpop:
        from devicelink.oauth.auth.dpop import DPoP

        params["dpop"] = DPoP(signer, wall_clock=wall_clock)
    return params


async def serve(cfg: Config, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until ``stop`` is set (or SIGTERM/SIGINT arrive)."""
    from devicelink import systemd
    from devicelink.display.factory import open_display
    from devicelink.ipc.api import SocketApi
    from devicelink.ipc.server import SocketServer
    from devicelink.tokens.keys import load_key
    from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

    secret = read_client_secret(cfg)
    if cfg.gpio is not None or cfg.display.driver in ("ssd1306", "sh1106"):
        # lgpio (gpiozero's pin factory, and luma's SPI D/C and reset pins) needs a writable CWD.
        from devicelink.gpio import ensure_lgpio_workdir

        ensure_lgpio_workdir()
    policy = load_policy(cfg)
    ensure_private_dir(cfg.storage.state_dir)
    key, key_source = load_key(cfg.storage.key, cfg.storage.state_dir)
    store = EncryptedFileStore(cfg.storage.state_dir, key, set_aside=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    try:  # a reload during start-up must not kill the daemon (SIGHUP's default); the policy is read below
        loop.add_signal_handler(signal.SIGHUP, lambda: logger.warning("SIGHUP while starting: ignored; reload again once ready"))
    except (NotImplementedError, RuntimeError):
        pass

    async with AsyncExitStack() as stack:
        display = open_display(cfg)  # configured but missing hardware: a start-up error naming the fix
        stack.callback(display.close)
        device = assemble(cfg, store, key, key_source=key_source, secret=secret, display=display)
        await device.start()
        stack.push_async_callback(device.stop)
        if cfg.gpio is not None:
            from devicelink.gpio import attach

            gpio = await attach(device, cfg.gpio)
            stack.push_async_callback(gpio.close)  # closed before device.stop
        activated = systemd.activated_socket(str(cfg.socket.path))  # devicelink.socket's, else None: we bind
        api = SocketApi(device, policy)
        try:  # systemctl reload devicelink: the per-app policy, without dropping a connection
            loop.add_signal_handler(signal.SIGHUP, lambda: api.reload(reload_policy(cfg, api.policy)))
        except (NotImplementedError, RuntimeError):
            pass
        server = SocketServer(api, str(cfg.socket.path) if activated is None else None, sock=activated,
                              max_connections=cfg.socket.max_connections,
                              max_connections_per_uid=cfg.socket.max_connections_per_uid)
        await server.start()
        stack.push_async_callback(server.stop)
        logger.info("devicelink ready on %s (state %s, key from %s)", server.path, device.state, key_source)
        systemd.notify(f"READY=1\nSTATUS={device.state}")
        device.listeners.append(lambda state: systemd.notify(f"STATUS={state}"))  # for `systemctl status`
        if (interval := systemd.watchdog_interval()) is not None:
            stack.callback(asyncio.create_task(systemd.watchdog(interval)).cancel)
        await stop.wait()
        logger.info("stopping")
        systemd.notify("STOPPING=1")


def assemble(cfg: Config, store: Any, key: bytes, *, key_source: str | None, secret: str | None = None,
             client: Any = None, clock: Callable[[], float] = time.monotonic, **engine: Any) -> Device:
    """The engine as the daemon runs it, on the state ``store`` opened with ``key``: the
    registered ``client_id`` in place of the configured one, the client authentication
    (``secret``, or the device key's ``private_key_jwt`` and DPoP proofs), and the rooms that
    register the device and replace its key. Under the state lock, as it may make the key.

    ``client``: an ``httpx.AsyncClient`` to share (the fleet's); None: one is made when a
    request is due and closed when idle. ``clock`` and ``engine`` (``display``,
    ``wall_clock``, ``rng``, ``clock_synced``, ...) go to :class:`~devicelink.engine.Device`."""
    from devicelink.engine import Device
    from devicelink.oauth.http import ClientAuth, OAuthHttp

    registered = None
    if cfg.registration is not None:  # the registered client_id, everywhere (engine/registering.py)
        cfg, registered = registration_at_start(cfg, key)
    # `device` is made below; the lambda reads it when a request is sent.
    signing = signing_params(cfg, lambda: device.endpoints, engine.get("wall_clock", time.time))

    def make_auth(client_id: str) -> ClientAuth:
        return ClientAuth(client_id, cfg.provider.client_auth, secret, **signing)

    device = Device(cfg, store, OAuthHttp(client, make_auth(cfg.provider.client_id), clock=clock),
                    key_source=key_source, clock=clock, **engine)
    if cfg.identity.new_key_on_reset:
        device.renewing = renewing(cfg, device, (signing.get("signer") or signing["dpop"].signer))
    if cfg.registration is not None:
        device.registering = registering(cfg, device, key, signing["signer"], make_auth, registered)
    return device


def registration_at_start(cfg: Config, key: bytes) -> tuple[Config, Any]:
    """The registration kept (``state_dir/registration.json``), its access token's seals
    settled with the key this start loaded (after a re-key), and the config with the
    registered ``client_id`` in place of ``[provider] client_id``. A registration at another
    issuer stops the start (:class:`~devicelink.errors.IdentityError`): it is never replaced
    on its own."""
    from dataclasses import replace

    from devicelink.identity import registration as r

    r.settle_seals(cfg.storage.state_dir, key)
    reg = r.RegistrationFile(cfg.storage.state_dir).load()
    if reg is None:
        logger.info("not registered yet: registering before pairing ([registration])")
        return cfg, reg
    r.usable(reg, cfg, None)
    if not reg.deleting and cfg.identity.new_key_on_reset:
        from devicelink.identity import renewal

        if renewal.pending(cfg.storage.state_dir) is not None:  # cut between the note and the mark
            reg = replace(reg, deleting=True)
            r.RegistrationFile(cfg.storage.state_dir).save(reg)
    if reg.deleting:  # a factory reset cut off: revocations still owed go as this client, then it is deleted
        logger.info("a factory reset is unfinished: the client %s is deleted once no revocation is owed, "
                    "then the device registers afresh", reg.client_id)
    else:
        logger.info("registered as client_id %s at %s", reg.client_id, reg.issuer)
    if reg.earlier_attempts:
        logger.warning("%s", r.duplicate_warning(reg))
    return replace(cfg, provider=replace(cfg.provider, client_id=reg.client_id)), reg


def registering(cfg: Config, device: Any, key: bytes, signer: Any, make_auth: Callable[[str], Any],
                registered: Any) -> Any:
    from devicelink.engine.registering import Registering
    from devicelink.identity import registration as r
    from devicelink.identity.serial import device_serial
    from devicelink.oauth.steps import Backoff

    enrolment = r.Enrolment(cfg, signer, key, device_serial(cfg.identity.serial),
                            r.RegistrationFile(cfg.storage.state_dir), device.wall_clock, Backoff(device.rng))
    return Registering(device, enrolment, make_auth, registered)


def renewing(cfg: Config, device: Any, signer: Any) -> Any:
    """``[identity] on_factory_reset = "new_key"``: what replaces the key at a factory reset."""
    from devicelink.engine.renewing import Renewing

    return Renewing(device, cfg.storage.state_dir, signer)


PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def forbid_core_dumps() -> bool:
    """No core file may hold the state key or a token: ``prctl(PR_SET_DUMPABLE, 0)`` and
    ``RLIMIT_CORE`` 0. Not dumpable also gives the files in ``/proc/<pid>/`` to root and
    refuses ptrace by the daemon's own user. Linux only (ctypes on libc: about 0.4 MiB of
    RSS); a failure is logged, never fatal."""
    import resource
    import sys

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        logger.warning("cannot set the core file size limit to 0: %s", exc)
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            return True
        error = os.strerror(ctypes.get_errno())
    except (ImportError, OSError, AttributeError) as exc:  # no ctypes, no libc, or no prctl in it
        error = str(exc)
    logger.warning("cannot turn core dumps off (prctl PR_SET_DUMPABLE: %s): a crash could write the key "
                   "and tokens to a core file; set LimitCORE=0 (the shipped unit does)", error)
    return False


def run(cfg: Config) -> int:
    forbid_core_dumps()  # before the key or a token is in memory
    try:
        asyncio.run(serve(cfg))
    except StoreError as exc:
        logger.error("%s", exc)
        return 1
    return 0
