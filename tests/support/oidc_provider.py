"""Run the test-only oidc-provider server and script its "phone" side.

The server is ``tests/oidc_provider/server.mjs`` (the npm package
``oidc-provider``, pinned in ``tests/oidc_provider/package.json``). It needs
``npm ci --prefix tests/oidc_provider`` once; :meth:`OidcProvider.start` says so
if it has not been run.

:meth:`OidcProvider.approve` and :meth:`OidcProvider.deny` play the user's phone
with httpx: they open the verification page, type the user code, confirm (or
abort), log in through oidc-provider's development login page (any login and
password are accepted) and submit its consent page, keeping the browser's
cookies in one ``httpx.Client``. Each call is a fresh browser, so every approval
logs in again.

Errors name the step and the HTTP status, never a token or a cookie.

:meth:`OidcProvider.access_token_info` says what the server issued an access
token for: a JWT access token (issued for one of :data:`RESOURCE_SERVERS`,
RFC 8707) is verified against the server's keys and its claims returned; an
opaque one is introspected (RFC 7662).
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import httpx
import jwt

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO_ROOT / "tests" / "oidc_provider"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"

CLIENT_ID = "devicelink-test"
#: The private_key_jwt client server.mjs registers when given public keys (``client_jwks``).
KEY_CLIENT_ID = "devicelink-test-key"
#: The confidential clients server.mjs registers when given a ``client_secret``, by auth method.
SECRET_CLIENT_IDS = {"client_secret_basic": "devicelink-test-basic", "client_secret_post": "devicelink-test-post"}
#: The resource servers (RFC 8707) server.mjs issues JWT access tokens for, with their scopes.
RESOURCE_SERVERS = {
    "https://api.example.com": "api:read api:write",
    "https://media.example.com": "media:read",
}
ACR_PWD = "urn:devicelink:acr:pwd"
ACR_MFA = "urn:devicelink:acr:mfa"
#: server.mjs's acrValues (RFC 9470 step-up), weakest first.
ACR_VALUES = (ACR_PWD, ACR_MFA)
START_TIMEOUT = 30.0  # seconds; starting takes well under a second normally
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
_MAX_REDIRECTS = 10
_STDERR_TAIL = 40  # lines of the server's stderr kept for error messages


class OidcProviderError(RuntimeError):
    """The server could not be started, or a scripted browser step failed."""


class OidcProviderStalled(OidcProviderError):
    """The server printed no issuer line in time."""


# --------------------------------------------------------------------------
# HTML forms


@dataclass
class _Form:
    id: str | None
    action: str | None
    method: str
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, type)
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value) of named submit buttons

    def value(self, name: str) -> str | None:
        for n, v, _ in self.fields:
            if n == name:
                return v
        return None


class _FormParser(HTMLParser):
    """Collects forms, their inputs, and named submit buttons.

    A button outside a form but naming it with ``form="id"`` (oidc-provider's
    device pages do this) is attached to that form.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._open: _Form | None = None
        self._stray_buttons: list[tuple[str, str, str]] = []  # (form id, name, value)
        self._capture: str | None = None  # "title", "red" or "pre"
        self._text: list[str] = []
        self.title = ""
        self.messages: list[str] = []  # <p class="red"> texts (user-code page errors)
        self.pre: list[str] = []  # <pre> texts (oidc-provider's error page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._open = _Form(id=a.get("id"), action=a.get("action"), method=a.get("method", "get").lower())
            self.forms.append(self._open)
        elif tag == "input":
            name = a.get("name")
            if not name:
                return
            typ = a.get("type", "text").lower()
            target = self._form_for(a)
            if target is not None and typ not in ("submit", "button", "image", "reset"):
                target.fields.append((name, a.get("value", ""), typ))
        elif tag == "button":
            typ = a.get("type", "submit").lower()
            name = a.get("name")
            if typ != "submit" or not name:
                return
            if "form" in a:
                self._stray_buttons.append((a["form"], name, a.get("value", "")))
            elif self._open is not None:
                self._open.buttons.append((name, a.get("value", "")))
        elif tag == "title":
            self._start_capture("title")
        elif tag == "p" and "red" in a.get("class", "").split():
            self._start_capture("red")
        elif tag == "pre":
            self._start_capture("pre")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None
        elif (tag, self._capture) in (("title", "title"), ("p", "red"), ("pre", "pre")):
            text = " ".join("".join(self._text).split())
            if self._capture == "title":
                self.title = text
            elif self._capture == "red":
                self.messages.append(text)
            else:
                self.pre.append(text)
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        by_id = {f.id: f for f in self.forms if f.id}
        for form_id, name, value in self._stray_buttons:
            if form_id in by_id:
                by_id[form_id].buttons.append((name, value))

    def _start_capture(self, what: str) -> None:
        self._capture = what
        self._text = []

    def _form_for(self, attrs: dict[str, str]) -> _Form | None:
        if "form" in attrs:
            return next((f for f in self.forms if f.id == attrs["form"]), None)
        return self._open


@dataclass
class _Page:
    step: str
    response: httpx.Response
    forms: list[_Form]
    title: str
    messages: list[str]
    pre: list[str]

    @classmethod
    def parse(cls, step: str, response: httpx.Response) -> _Page:
        parser = _FormParser()
        parser.feed(response.text)
        parser.close()
        return cls(step, response, parser.forms, parser.title, parser.messages, parser.pre)

    def describe(self) -> str:
        # Only the page title, the user-code page's error line and the error
        # page's error/error_description lines: none of these carry a token.
        bits = [f"page {self.title!r}"] if self.title else []
        bits += self.messages
        bits += [p for p in self.pre if p.startswith(("error:", "error_description:"))]
        return "; ".join(bits)[:300]


# --------------------------------------------------------------------------
# The server


class OidcProvider:
    """A loopback oidc-provider for one test run (or one test).

    ``access_token_ttl`` becomes the server's ``OP_ACCESS_TOKEN_TTL``.
    ``device_poll_interval``, if given, makes the server add an ``interval``
    member to the device authorization response (oidc-provider itself sends
    none and enforces none; see server.mjs). ``client_jwks``, a JWKS of public keys, registers
    :data:`KEY_CLIENT_ID`, a ``private_key_jwt`` client whose assertions those keys sign.
    ``client_secret`` registers :data:`SECRET_CLIENT_IDS`, confidential clients with that
    secret; ``client_credentials`` lets the confidential clients use the client credentials
    grant (RFC 6749 §4.4).
    ``dpop_nonce`` makes every DPoP proof need the server's nonce (``OP_DPOP_NONCE``);
    ``rotation`` ``"default"`` is the library's refresh-token rotation, which leaves a
    DPoP-bound public client's refresh token as it is (``OP_ROTATE_REFRESH_TOKEN``).
    """

    client_id: str = CLIENT_ID
    key_client_id: str = KEY_CLIENT_ID
    secret_client_ids: dict[str, str] = SECRET_CLIENT_IDS

    def __init__(self, access_token_ttl: int = 60, *, device_poll_interval: int | None = None,
                 client_jwks: dict | None = None, client_secret: str | None = None,
                 client_credentials: bool = False, registration: bool = False, fleet_jwks: dict | None = None,
                 statement_issuer: str | None = None, dpop_nonce: bool = False, rotation: str = "always",
                 record_to: Path | None = None) -> None:
        """``registration``: RFC 7591/7592 at ``/reg``; ``fleet_jwks``: software statements must be
        signed by one of these keys (from ``statement_issuer``, when given). ``record_to``: the
        server's ``OP_RECORD_ISSUED_TO`` (else whatever this process's environment says), for
        callers that start servers from several threads and cannot patch the environment."""
        if access_token_ttl < 1:
            raise ValueError("access_token_ttl must be at least 1 second")
        if device_poll_interval is not None and device_poll_interval < 0:
            raise ValueError("device_poll_interval must not be negative")
        self.access_token_ttl = access_token_ttl
        self.device_poll_interval = device_poll_interval
        self.client_jwks = client_jwks
        self.client_secret = client_secret
        self.client_credentials = client_credentials
        self.registration = registration or fleet_jwks is not None
        self.fleet_jwks, self.statement_issuer = fleet_jwks, statement_issuer
        if rotation not in ("always", "default"):
            raise ValueError("rotation must be 'always' or 'default'")
        self.dpop_nonce, self.rotation = dpop_nonce, rotation
        self.record_to = record_to
        self._issuer: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise OidcProviderError("the oidc-provider server is not running; call start() first")
        return self._issuer

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server; a start that stalls is tried once more (it happened once in a CI
        run, after oidc-provider's import, cause unknown; a second stall still fails)."""
        try:
            self._start()
        except OidcProviderStalled as exc:
            sys.stderr.write(f"oidc_provider harness: {exc}; trying once more\n")
            self._start()

    def _start(self) -> None:
        if self._proc is not None:
            raise OidcProviderError("the oidc-provider server is already started")
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not on PATH; the oidc-provider tests need Node.js")
        if not (SERVER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
            raise OidcProviderError(
                f"{SERVER_DIR / 'node_modules'} is missing oidc-provider: "
                "run npm ci --prefix tests/oidc_provider"
            )

        env = dict(os.environ)
        env["OP_ACCESS_TOKEN_TTL"] = str(self.access_token_ttl)
        env.pop("OP_DEVICE_POLL_INTERVAL", None)
        if self.device_poll_interval is not None:
            env["OP_DEVICE_POLL_INTERVAL"] = str(self.device_poll_interval)
        env.pop("OP_CLIENT_JWKS", None)
        if self.client_jwks is not None:
            import json

            env["OP_CLIENT_JWKS"] = json.dumps(self.client_jwks)
        for name in ("OP_CLIENT_SECRET", "OP_CLIENT_CREDENTIALS"):
            env.pop(name, None)
        if self.client_secret is not None:
            env["OP_CLIENT_SECRET"] = self.client_secret
        if self.client_credentials:
            env["OP_CLIENT_CREDENTIALS"] = "1"
        for name in ("OP_REGISTRATION", "OP_FLEET_JWKS", "OP_STATEMENT_ISSUER", "OP_INITIAL_ACCESS_TOKEN"):
            env.pop(name, None)
        if self.registration:
            import json

            env["OP_REGISTRATION"] = "1"
            if self.fleet_jwks is not None:
                env["OP_FLEET_JWKS"] = json.dumps(self.fleet_jwks)
            if self.statement_issuer is not None:
                env["OP_STATEMENT_ISSUER"] = self.statement_issuer
        env.pop("OP_DPOP_NONCE", None)
        if self.dpop_nonce:
            env["OP_DPOP_NONCE"] = "1"
        env["OP_ROTATE_REFRESH_TOKEN"] = self.rotation
        if self.record_to is not None:
            env["OP_RECORD_ISSUED_TO"] = str(self.record_to)
        # The server exits when this pipe closes, i.e. also when pytest dies.
        env["OP_EXIT_ON_STDIN_CLOSE"] = "1"

        self._stderr_tail.clear()
        self._proc = subprocess.Popen(
            [node, str(SERVER_SCRIPT), "0"],
            cwd=SERVER_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        lines: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout, lines), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OidcProviderStalled(
                        f"oidc-provider server printed no issuer line within {START_TIMEOUT:.0f} s"
                        + self._stderr_excerpt()
                    )
                try:
                    line = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    code = self._proc.wait(timeout=STOP_TIMEOUT)
                    for t in self._threads:
                        t.join(timeout=STOP_TIMEOUT)
                    raise OidcProviderError(
                        f"oidc-provider server exited with status {code} before it was listening"
                        + self._stderr_excerpt()
                    )
                word, _, issuer = line.strip().partition(" ")
                if word == "issuer" and issuer.startswith("http://127.0.0.1:"):
                    self._issuer = issuer
                    return
                raise OidcProviderError(f"unexpected first line from the oidc-provider server: {line.strip()[:200]!r}")
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self._issuer = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: server.mjs closes and exits 0
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipes(proc)

    def __enter__(self) -> OidcProvider:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def access_token_info(self, access_token: str) -> dict:
        """What the server says ``access_token`` is for, plus ``active``.

        A JWT (a token for one of :data:`RESOURCE_SERVERS`): its claims (``aud``, ``scope``,
        ``sub``, ``client_id``, ``iat``, ``exp``, ...) once its RS256 signature and ``iss``
        check out against the server's JWKS; ``active`` is whether ``exp`` is still ahead
        (oidc-provider cannot introspect structured tokens, so a revoked one still looks
        active). Opaque: the RFC 7662 introspection response (``{"active": False}`` for an
        unknown, expired or revoked token), which carries no ``aud``. Neither has ``acr``.
        With a ``client_secret`` the confidential ``client_secret_basic`` client introspects,
        which may ask about any client's token (a client credentials token has ``client_id``
        and no ``sub``); else the public client, which may ask only about its own.
        """
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            meta = client.get(f"{self.issuer}/.well-known/openid-configuration").json()
            if access_token.count(".") == 2:
                keys = jwt.PyJWKSet.from_dict(client.get(meta["jwks_uri"]).json())
                kid = jwt.get_unverified_header(access_token).get("kid")
                key = next(k for k in keys.keys if k.key_id == kid)
                claims = jwt.decode(
                    access_token, key.key, algorithms=["RS256"], issuer=self.issuer,
                    options={"verify_aud": False, "verify_exp": False, "require": ["exp", "aud"]},
                )
                return {**claims, "active": claims["exp"] > time.time()}
            if self.client_secret is not None:
                response = client.post(meta["introspection_endpoint"], data={"token": access_token}, auth=(
                    SECRET_CLIENT_IDS["client_secret_basic"], self.client_secret))
            else:
                response = client.post(
                    meta["introspection_endpoint"], data={"client_id": self.client_id, "token": access_token}
                )
        if response.status_code != 200:
            raise OidcProviderError(f"introspection got HTTP {response.status_code}")
        return response.json()

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr (warnings, server errors)."""
        return "\n".join(self._stderr_tail)

    # -- the phone ---------------------------------------------------------

    def approve(self, user_code: str, login: str = "alice", acr: str | None = None) -> None:
        """Approve the device whose ``user_code`` is given, logged in as ``login``.

        ``acr`` is the kind of sign-in the user did (one of :data:`ACR_VALUES`); by
        default the server records the first of the request's ``acr_values`` it
        supports (the user did the stronger sign-in asked for), else
        :data:`ACR_PWD`. The ID token carries it when ``acr_values`` were requested.
        """
        if acr is not None and acr not in ACR_VALUES:
            raise ValueError(f"acr must be one of {ACR_VALUES}, got {acr!r}")
        with self._browser() as browser:
            confirm = self._open_confirm_page(browser, user_code, "approve")
            form = self._form(confirm, form_id="op.deviceConfirmForm")
            page = self._submit(browser, "approve: confirm device", confirm, form, {})

            login_form = self._form(page, prompt="login", what="login form")
            page = self._submit(
                browser,
                "approve: log in",
                page,
                login_form,
                {"login": login, "password": "any password (devInteractions checks none)"},
                # Not a field of devInteractions' form: server.mjs reads it (loginAcr).
                extra={"acr": acr} if acr is not None else None,
            )

            consent_form = self._form(page, prompt="consent", what="consent form")
            page = self._submit(browser, "approve: consent", page, consent_form, {})

            if page.title != "Sign-in Success":
                raise OidcProviderError(
                    f"step 'approve: success page' got HTTP {page.response.status_code} "
                    f"but not the success page ({page.describe()})"
                )

    def deny(self, user_code: str) -> None:
        """Abort on the confirm page: the device's next poll gets ``access_denied``."""
        with self._browser() as browser:
            confirm = self._open_confirm_page(browser, user_code, "deny")
            form = self._form(confirm, form_id="op.deviceConfirmForm")
            if ("abort", "yes") not in form.buttons:
                raise OidcProviderError("step 'deny: abort' found no Abort button on the confirm page")
            page = self._submit(browser, "deny: abort", confirm, form, {}, button=("abort", "yes"))
            if not any("interrupted" in m for m in page.messages):
                raise OidcProviderError(
                    f"step 'deny: abort' got HTTP {page.response.status_code} "
                    f"but not the 'interrupted' page ({page.describe()})"
                )

    # -- helpers -----------------------------------------------------------

    def _browser(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False, timeout=HTTP_TIMEOUT)

    def _open_confirm_page(self, browser: httpx.Client, user_code: str, verb: str) -> _Page:
        """Open the verification page, type the user code, return the confirm page."""
        url = f"{self.issuer}/device"
        page = self._request(browser, f"{verb}: open verification page", "GET", url)
        form = self._form(page, form_id="op.deviceInputForm")
        page = self._submit(browser, f"{verb}: submit user code", page, form, {"user_code": user_code})
        if not any(f.id == "op.deviceConfirmForm" for f in page.forms):
            raise OidcProviderError(
                f"step '{verb}: submit user code' got HTTP {page.response.status_code} "
                f"but no confirm form ({page.describe()})"
            )
        return page

    def _request(self, browser: httpx.Client, step: str, method: str, url: str, data=None) -> _Page:
        """One browser navigation: the request, then its redirects (as GET), bounded."""
        if urlsplit(url).netloc != urlsplit(self.issuer).netloc:
            raise OidcProviderError(f"step '{step}' would leave the provider (to {urlsplit(url).netloc})")
        try:
            response = browser.request(method, url, data=data)
            for _ in range(_MAX_REDIRECTS):
                if not response.is_redirect:
                    break
                target = urljoin(str(response.url), response.headers["location"])
                if urlsplit(target).netloc != urlsplit(self.issuer).netloc:
                    raise OidcProviderError(f"step '{step}' was redirected away from the provider")
                response = browser.get(target)
            else:
                raise OidcProviderError(f"step '{step}' was redirected more than {_MAX_REDIRECTS} times")
        except httpx.HTTPError as exc:
            raise OidcProviderError(f"step '{step}' failed: {type(exc).__name__}") from None
        page = _Page.parse(step, response)
        if response.status_code != 200:
            raise OidcProviderError(f"step '{step}' got HTTP {response.status_code} ({page.describe()})")
        return page

    def _submit(
        self,
        browser: httpx.Client,
        step: str,
        page: _Page,
        form: _Form,
        values: dict[str, str],
        button: tuple[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> _Page:
        data: dict[str, str] = {name: value for name, value, _ in form.fields}
        unknown = set(values) - set(data)
        if unknown:
            raise OidcProviderError(f"step '{step}': the form has no field {sorted(unknown)}")
        data.update(values)
        data.update(extra or {})
        if button is not None:
            data[button[0]] = button[1]
        action = urljoin(str(page.response.url), form.action or "")
        return self._request(browser, step, form.method.upper(), action, data=data)

    @staticmethod
    def _form(page: _Page, *, form_id: str | None = None, prompt: str | None = None, what: str = "") -> _Form:
        for form in page.forms:
            if form_id is not None and form.id == form_id:
                return form
            if prompt is not None and form.value("prompt") == prompt:
                return form
        wanted = what or f"form {form_id!r}"
        raise OidcProviderError(
            f"step '{page.step}' got HTTP {page.response.status_code} but no {wanted} ({page.describe()})"
        )

    def _read_stdout(self, stream, lines: queue.Queue[str | None]) -> None:
        # The first line is the issuer; the server prints nothing else to
        # stdout, but keep draining so it can never block on a full pipe.
        try:
            for line in stream:
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)

    def _read_stderr(self, stream) -> None:
        try:
            for line in stream:
                self._stderr_tail.append(line.rstrip("\n"))
        except (OSError, ValueError):
            pass

    def _stderr_excerpt(self) -> str:
        tail = self.stderr_tail()
        return f"; its stderr ends with:\n{tail}" if tail else ""

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._issuer = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipes(proc)

    def _close_pipes(self, proc: subprocess.Popen[str]) -> None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=STOP_TIMEOUT)
        self._threads = []
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
