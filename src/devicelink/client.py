"""``devicelink.client``: the library local apps import (DESIGN.md's name for it).

    from devicelink.client import Client
    with Client() as c:
        token = c.token(min_ttl=300)["access_token"]

It lives in :mod:`devicelink.ipc.client`; this module only re-exports it.
"""

from devicelink.ipc.client import *  # noqa: F401,F403
from devicelink.ipc.client import __all__  # noqa: F401
