"""The composition root: builds the adapters the config asks for and runs the loop.

Only this module knows every other one. Hardware and display modules are
imported here, inside the branch that needs them, so a headless device never
loads them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from devicelink.config import Config
from devicelink.errors import ConfigError, StoreError

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


async def serve(cfg: Config, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until ``stop`` is set (or SIGTERM/SIGINT arrive)."""
    import httpx

    from devicelink import systemd
    from devicelink.display.factory import open_display
    from devicelink.device import Device
    from devicelink.ipc.server import SocketServer
    from devicelink.oauth.http import ClientAuth, OAuthHttp
    from devicelink.tokens.keys import load_key
    from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

    secret = read_client_secret(cfg)
    if cfg.gpio is not None or cfg.display.driver in ("ssd1306", "sh1106"):
        # lgpio (gpiozero's pin factory, and luma's SPI D/C and reset pins) needs a writable CWD.
        from devicelink.gpio import ensure_lgpio_workdir

        ensure_lgpio_workdir()
    ensure_private_dir(cfg.storage.state_dir)
    key, key_source = load_key(cfg.storage.key, cfg.storage.state_dir)
    store = EncryptedFileStore(cfg.storage.state_dir, key)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    async with AsyncExitStack() as stack:
        display = open_display(cfg)  # configured but missing hardware: a start-up error naming the fix
        stack.callback(display.close)
        client = await stack.enter_async_context(httpx.AsyncClient(follow_redirects=False))
        auth = ClientAuth(cfg.provider.client_id, cfg.provider.client_auth, secret)
        device = Device(cfg, store, OAuthHttp(client, auth), display=display, key_source=key_source)
        await device.start()
        stack.push_async_callback(device.stop)
        if cfg.gpio is not None:
            from devicelink.gpio import attach

            gpio = await attach(device, cfg.gpio)
            stack.push_async_callback(gpio.close)  # closed before device.stop
        server = SocketServer(device, str(cfg.socket.path))
        await server.start()
        stack.push_async_callback(server.stop)
        logger.info("devicelink ready on %s (state %s, key from %s)", cfg.socket.path, device.state, key_source)
        systemd.notify("READY=1")
        await stop.wait()
        logger.info("stopping")
        systemd.notify("STOPPING=1")


def run(cfg: Config) -> int:
    try:
        asyncio.run(serve(cfg))
    except StoreError as exc:
        logger.error("%s", exc)
        return 1
    return 0
