"""``devicelink.client``: the library local apps import (DESIGN.md's name for it).

    from devicelink.client import Client
    with Client() as dl:
        token = dl.token(min_ttl=300).access_token     # or ["access_token"]

    from devicelink.client import AsyncClient
    async with AsyncClient() as dl:
        status = await dl.wait_until_paired()
        async for event in dl.events():
            ...

It lives in :mod:`devicelink.ipc.client` (beside the server it talks to); this
module only re-exports it. See docs/client.md.
"""

from devicelink.ipc.client import *  # noqa: F401,F403
from devicelink.ipc.client import __all__  # noqa: F401
