"""Where devicelink's files are unless told otherwise, and the variables that move them.

One place for the defaults that the config module, the command line and the
client library all need, so that ``devicelink token`` can know them without
loading the TOML config (docs/cli.md, docs/files.md).
"""

CONFIG_PATH = "/etc/devicelink/config.toml"
CONFIG_ENV = "DEVICELINK_CONFIG"
SOCKET_PATH = "/run/devicelink/agent.sock"
SOCKET_ENV = "DEVICELINK_SOCKET"
