"""A daemon config for a loopback development server: what tests, benchmarks and the demo write."""

from __future__ import annotations

from pathlib import Path


def write_config(directory: Path, issuer: str, client_id: str, *, extra: str = "", display: str = "none",
                 scope: str = "openid profile offline_access", display_extra: str = "") -> Path:
    """``directory/config.toml`` with the state dir and socket inside ``directory`` (relative
    paths are relative to the config file). ``extra`` is appended to ``[provider]`` and may
    open further tables; ``display_extra`` to ``[display]`` (the last table)."""
    path = directory / "config.toml"
    path.write_text(f"""\
[provider]
issuer = "{issuer}"
client_id = "{client_id}"
scope = "{scope}"
allow_insecure_http = true
{extra}
[refresh]
min_interval = 1  # development servers issue seconds-long tokens: refresh as they ask

[storage]
state_dir = "state"
key = "file"

[socket]
path = "agent.sock"

[display]
driver = "{display}"
{display_extra}""")
    return path
