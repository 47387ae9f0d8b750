"""The TOML configuration file -> frozen dataclasses. Validation only, no side effects.

Every problem is a :class:`~devicelink.errors.ConfigError` whose message names
the file, the key and what is expected, e.g.::

    /etc/devicelink/config.toml: [provider] issuer: expected an https:// URL, got 'http://id.example.com'

The daemon exits with status 78 (EX_CONFIG) on it. Unknown keys are errors too:
a typo must not silently fall back to a default.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from devicelink import paths
from devicelink.device_token import DeviceTokenConfig, device_token_section
from devicelink.errors import ConfigError
from devicelink.identity import settings as identity
from devicelink.identity.settings import IdentityConfig
from devicelink.identity import registration_settings as registration
from devicelink.identity.registration_settings import RegistrationConfig

DEFAULT_PATH = paths.CONFIG_PATH
DROP_IN_DIR = "clients.d"  # beside the config file: one [[client]] file per app

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: A DNS host name or an IPv4 address, exactly (no scheme, port, path or wildcard).
_HOST_RE = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\Z")
#: RFC 6749 §3.3: scope = scope-token *( SP scope-token ); the socket's queries use it too.
SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")

CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
KEY_SOURCES = ("auto", "file", "credential")
DISPLAY_DRIVERS = ("none", "terminal", "png", "ssd1306", "sh1106", "framebuffer")


@dataclass(frozen=True)
class ProviderConfig:
    issuer: str
    client_id: str = ""  # "" only with [registration]: the device gets its own there
    scope: str | None = None
    device_authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    revocation_endpoint: str | None = None
    client_auth: str = "none"
    client_secret_file: Path | None = None
    resource: tuple[str, ...] = ()
    dpop: bool = False
    allow_insecure_http: bool = False
    #: Hosts, besides the issuer's, that a code's verification URI may name (Google's, Microsoft's).
    verification_hosts: tuple[str, ...] = ()
    #: What a private_key_jwt assertion's aud names (identity.settings.AUDIENCES); None: the issuer.
    assertion_audience: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PairingConfig:
    restart_on_expiry: int = 2


@dataclass(frozen=True)
class StorageConfig:
    state_dir: Path = Path("/var/lib/devicelink")
    key: str = "auto"


@dataclass(frozen=True)
class RefreshConfig:
    min_interval: float = 30.0  # s: the floor on the refresh interval (issue 10, item 8)


@dataclass(frozen=True)
class SocketConfig:
    path: Path = Path(paths.SOCKET_PATH)
    max_connections: int = 512
    max_connections_per_uid: int = 64


@dataclass(frozen=True)
class DisplayConfig:
    driver: str = "none"
    width: int | None = None
    height: int | None = None
    rotate: int = 0
    i2c_port: int | None = None
    i2c_address: int | None = None
    spi_port: int | None = None
    spi_device: int | None = None
    framebuffer: Path | None = None
    png_dir: Path | None = None


@dataclass(frozen=True)
class GpioConfig:
    led: int | None = None
    button: int | None = None
    hold_seconds: float = 10.0


@dataclass(frozen=True)
class ClientPolicy:
    """One ``[[client]]`` entry: which local processes it matches and what they may have."""

    name: str
    user: str | None = None
    uid: int | None = None
    group: str | None = None
    scope: str | None = None  # the most this app may get; none: no tokens (status and events only)
    resource: tuple[str, ...] | None = None  # RFC 8707 resources it may ask for; none: [provider] resource
    admin: bool = False
    device_scope: str | None = None  # the most it may get of device-level tokens ([device_token]); none: none
    #: DPoP proofs without an access token (docs/dpop.md): the app may bind tokens of its own to the device key.
    dpop_proofs_without_token: bool = False
    origin: Path | None = None  # the file it came from, for messages


@dataclass(frozen=True)
class Config:
    provider: ProviderConfig
    path: Path | None = None
    pairing: PairingConfig = field(default_factory=PairingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    gpio: GpioConfig | None = None
    clients: tuple[ClientPolicy, ...] = ()
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    device_token: DeviceTokenConfig | None = None  # [device_token]: client credentials, no user
    registration: RegistrationConfig | None = None  # [registration]: RFC 7591 at first boot


def default_path() -> Path:
    return Path(os.environ.get(paths.CONFIG_ENV) or DEFAULT_PATH)


def load(path: str | os.PathLike[str], owners: frozenset[int] | None = None) -> Config:
    """Read and validate the config file at ``path``. It must be owned by root or
    ``owners`` (default: this process's user) and not writable by group or others
    (:class:`UntrustedFile` otherwise)."""
    path = Path(path)
    return parse(read_toml(path, trusted_owners() if owners is None else owners), path)


class UntrustedFile(ConfigError):
    """A config file, drop-in or drop-in directory that someone other than root or the
    daemon's user could change: refused, whatever it holds."""


def trusted_owners(own_uid: int | None = None) -> frozenset[int]:
    """Who may own the config and the per-app policy: root and the daemon's user."""
    return frozenset({0, os.geteuid() if own_uid is None else own_uid})


def check_trusted(path: Path, st: os.stat_result, owners: frozenset[int]) -> None:
    """Raise :class:`UntrustedFile` unless ``st`` (of ``path``, a file or a directory) is
    owned by one of ``owners`` and not writable by its group or by others: anyone who can
    change the policy can make itself an admin app."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        who = " or ".join(["root", *(f"{_user_name(uid)}, the daemon's user" for uid in sorted(owners - {0}))])
        raise UntrustedFile(f"{path}: refused: owned by {_user_name(st.st_uid)}, not by {who}, who could "
                            f"change it; fix: chown root:root {path} && chmod go-w {path}")
    if mode & 0o022:
        whom = "its group and others" if mode & 0o022 == 0o022 else "its group" if mode & 0o020 else "others"
        raise UntrustedFile(f"{path}: refused: writable by {whom} (mode {mode:04o}), who could change it; "
                            f"fix: chmod go-w {path}")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def read_toml(path: Path, owners: frozenset[int] | None = None) -> dict[str, Any]:
    """Read a TOML file; every failure is a one-line ConfigError naming the file. With
    ``owners``, the file opened must pass :func:`check_trusted` (checked on the open file,
    so it cannot be swapped between the check and the read)."""
    try:
        with path.open("rb") as f:
            if owners is not None:
                check_trusted(path, os.fstat(f.fileno()), owners)
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (pass --config PATH or set DEVICELINK_CONFIG)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_drop_in(path: Path, owners: frozenset[int] | None = None) -> tuple[ClientPolicy, ...]:
    """One ``clients.d/*.toml`` file: ``[[client]]`` entries and nothing else, owned by root
    or ``owners`` (default: this process's user) and not writable by group or others."""
    raw = read_toml(path, trusted_owners() if owners is None else owners)
    v = _Validator(path)
    v.only(raw, "", {"client"})
    clients = v.clients(raw)
    if not clients:
        v.fail("[[client]]", "missing; a clients.d file holds one or more [[client]] entries")
    return clients


def parse(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document; ``path`` names it in errors and anchors relative paths."""
    v = _Validator(path)
    v.only(raw, "", {"provider", "pairing", "storage", "refresh", "socket", "display", "gpio", "client", "identity",
                     "device_token", "registration"})
    if "provider" not in raw:
        v.fail("[provider]", "missing section; it needs at least issuer and client_id")

    provider = v.section(raw, "provider", ProviderConfig, {
        "issuer": v.url, "client_id": v.text, "scope": v.text,
        "device_authorization_endpoint": v.url, "token_endpoint": v.url, "revocation_endpoint": v.url,
        "client_auth": v.choice(CLIENT_AUTH_METHODS), "client_secret_file": v.path,
        "resource": v.resources, "dpop": v.boolean, "allow_insecure_http": v.boolean,
        "verification_hosts": v.hosts, "assertion_audience": identity.audience(v),
    }, required=("issuer",))
    v.check_transport(provider)
    v.check_client_auth(provider)
    registered = registration.registration_section(v, raw)
    registration.check_registration(v, registered, provider)

    pairing = v.section(raw, "pairing", PairingConfig, {"restart_on_expiry": v.integer(0, 100)})
    storage = v.section(raw, "storage", StorageConfig, {"state_dir": v.path, "key": v.choice(KEY_SOURCES)})
    sock = v.section(raw, "socket", SocketConfig, {
        "path": v.socket_path, "max_connections": v.integer(1, 65536), "max_connections_per_uid": v.integer(1, 65536),
    })
    display = v.section(raw, "display", DisplayConfig, {
        "driver": v.choice(DISPLAY_DRIVERS), "width": v.integer(8, 8192), "height": v.integer(8, 8192),
        "rotate": v.choice((0, 1, 2, 3)), "i2c_port": v.integer(0, 255), "i2c_address": v.integer(0x03, 0x77),
        "spi_port": v.integer(0, 255), "spi_device": v.integer(0, 255), "framebuffer": v.path, "png_dir": v.path,
    })
    gpio = None
    if "gpio" in raw:
        gpio = v.section(raw, "gpio", GpioConfig, {
            "led": v.integer(0, 63), "button": v.integer(0, 63), "hold_seconds": v.number(1, 600),
        })
    clients = v.clients(raw)
    refresh = v.section(raw, "refresh", RefreshConfig, {"min_interval": v.number(1, 3600)})
    device_token = device_token_section(v, raw, provider.client_auth)
    if registered is not None and device_token is not None and "grant_types" not in raw["registration"]:
        # device-level tokens need the client credentials grant at the server (RFC 7591 §2)
        registered = replace(registered, grant_types=(*registered.grant_types, "client_credentials"))
    ident = identity.identity_section(v, raw)
    identity.check_factory_reset(v, ident, provider.client_auth, provider.dpop, registered)
    return Config(provider=provider, path=path, pairing=pairing, storage=storage, socket=sock,
                  display=display, gpio=gpio, clients=clients, refresh=refresh,
                  identity=ident, device_token=device_token, registration=registered)


class _Validator:
    """Checks one file; each check returns the converted value or raises ConfigError."""

    def __init__(self, path: Path) -> None:
        self.file = path
        self.base = path.parent

    def fail(self, key: str, expected: str) -> None:
        raise ConfigError(f"{self.file}: {key}: {expected}")

    def only(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f"{where} {key}".strip(), "unknown key; expected one of " + ", ".join(sorted(allowed)))

    def section(self, raw: dict[str, Any], name: str, cls: type, checks: dict[str, Callable[[str, Any], Any]],
                required: tuple[str, ...] = ()) -> Any:
        table = raw.get(name, {})
        where = f"[{name}]"
        if not isinstance(table, dict):
            self.fail(where, "expected a table")
        self.only(table, where, set(checks))
        for key in required:
            if key not in table:
                self.fail(f"{where} {key}", "missing; this value is required")
        return cls(**{key: checks[key](f"{where} {key}", value) for key, value in table.items()})

    def clients(self, raw: dict[str, Any]) -> tuple[ClientPolicy, ...]:
        entries = raw.get("client", [])
        if not isinstance(entries, list):
            self.fail("[[client]]", "expected an array of tables ([[client]])")
        return tuple(self.client(entry, i) for i, entry in enumerate(entries))

    def client(self, entry: Any, index: int) -> ClientPolicy:
        where = f"[[client]] #{index + 1}"
        if not isinstance(entry, dict):
            self.fail(where, "expected a table")
        checks = {"name": self.name, "user": self.text, "uid": self.integer(0, 2**32 - 2),
                  "group": self.text, "scope": self.scope, "resource": self.resources, "admin": self.boolean,
                  "device_scope": self.scope, "dpop_proofs_without_token": self.boolean}
        self.only(entry, where, set(checks))
        if "name" not in entry:
            self.fail(f"{where} name", "missing; every client needs a name")
        matchers = [k for k in ("user", "uid", "group") if k in entry]
        if len(matchers) != 1:
            self.fail(where, "needs exactly one of user, uid or group to say which processes it matches"
                      + (f", got {' and '.join(matchers)}" if matchers else ""))
        return ClientPolicy(**{k: checks[k](f"{where} {k}", val) for k, val in entry.items()}, origin=self.file)

    # -- value checks -------------------------------------------------------

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {_show(value)}")
        return value

    def name(self, key: str, value: Any) -> str:
        # It labels metrics and logs: keep it to a safe alphabet.
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            self.fail(key, f"expected 1-64 letters, digits, '.', '_' or '-', got {_show(value)}")
        return value

    def scope(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not SCOPE_RE.fullmatch(re.sub(" +", " ", value.strip())):
            self.fail(key, f"expected space-separated scope tokens (RFC 6749 §3.3), got {_show(value)}")
        return " ".join(value.split())

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def integer(self, low: int, high: int) -> Callable[[str, Any], int]:
        def check(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                self.fail(key, f"expected an integer from {low} to {high}, got {_show(value)}")
            return value
        return check

    def number(self, low: float, high: float) -> Callable[[str, Any], float]:
        def check(key: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                self.fail(key, f"expected a number from {low:g} to {high:g}, got {_show(value)}")
            return float(value)
        return check

    def choice(self, options: tuple[Any, ...]) -> Callable[[str, Any], Any]:
        def check(key: str, value: Any) -> Any:
            if isinstance(value, bool) or value not in options:
                self.fail(key, "expected one of " + ", ".join(repr(o) for o in options) + f", got {_show(value)}")
            return value
        return check

    def path(self, key: str, value: Any) -> Path:
        text = self.text(key, value)
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def socket_path(self, key: str, value: Any) -> Path:
        p = self.path(key, value)
        if len(os.fsencode(p)) > 107:  # sun_path is 108 bytes with the NUL
            self.fail(key, f"expected a path of at most 107 bytes (AF_UNIX limit), got {len(os.fsencode(p))}")
        return p

    def url(self, key: str, value: Any) -> str:
        text = self.text(key, value)
        try:
            parts = urlsplit(text)
            host = parts.hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket
            host = None
        if not host or parts.scheme not in ("https", "http") or not text.isprintable():
            self.fail(key, f"expected an https:// URL, got {_show(text)}")
        if parts.fragment or (key.endswith("issuer") and parts.query):
            self.fail(key, f"expected a URL without query or fragment, got {_show(text)}")
        return text

    def resources(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(key, f"expected a list of absolute URIs, got {_show(value)}")
        out = []
        for item in value:  # RFC 8707 §2: absolute URI, no fragment
            try:
                parts = urlsplit(item) if isinstance(item, str) and item.isprintable() else None
            except ValueError:
                parts = None
            if parts is None or not parts.scheme or parts.fragment:
                self.fail(key, f"expected absolute URIs without a fragment, got {_show(item)}")
            out.append(item)
        return tuple(out)

    def hosts(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(key, f"expected a list of host names such as 'www.google.com', got {_show(value)}")
        out = []
        for item in value:
            host = item.strip().lower().rstrip(".") if isinstance(item, str) else None
            if host is None or not _HOST_RE.match(host):
                self.fail(key, "expected exact host names such as 'www.google.com' (no scheme, port, path "
                          f"or wildcard), got {_show(item)}")
            out.append(host)
        return tuple(out)

    # -- rules across keys --------------------------------------------------

    def check_transport(self, p: ProviderConfig) -> None:
        """TLS always; plain http:// only to loopback, and only when asked for (RFC 8628 §3.1, RFC 8414 §6)."""
        for name in ("issuer", "device_authorization_endpoint", "token_endpoint", "revocation_endpoint"):
            url = getattr(p, name)
            if url is None or transport_allowed(url, p.allow_insecure_http):
                continue
            if not is_loopback(url):
                self.fail(f"[provider] {name}", f"expected an https:// URL, got {_show(url)} "
                          "(http:// is allowed only for loopback hosts)")
            if not p.allow_insecure_http:
                self.fail(f"[provider] {name}", f"http:// URL {_show(url)} needs allow_insecure_http = true "
                          "(loopback development servers only)")

    def check_client_auth(self, p: ProviderConfig) -> None:
        if p.client_auth in ("client_secret_basic", "client_secret_post") and p.client_secret_file is None:
            self.fail("[provider] client_secret_file", f"missing; client_auth = {p.client_auth!r} needs it")
        identity.check_private_key_jwt(self, p.client_auth, p.assertion_audience)


def transport_allowed(url: str, allow_insecure_http: bool) -> bool:
    """TLS always; plain http:// only to a loopback host, and only when the config allows it."""
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and allow_insecure_http and is_loopback(url))


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    import ipaddress  # only for http:// URLs, which only development configs have

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
