"""Fault injection for the development authorization server.

Every endpoint that a device talks to has a list of rules, ``srv.faults.token``,
``.device``, ``.revocation`` and ``.discovery``. A request is matched against
the first rule that still has uses left; with that rule's ``probability`` (a
seeded RNG) it gets the fault, otherwise the real answer. So a list of rules is
a schedule, and a rule with ``times=None`` lasts until ``clear()``::

    srv.faults.token.fail(503, times=3)                 # three 503s, then the real answers
    srv.faults.token.reset().timeout().fail(429, retry_after=30)   # one of each, in order
    srv.faults.token.slow_down(times=20)                # a slow_down storm
    srv.faults.device.delay(2.0, times=None)            # every device authorization 2 s late
    srv.faults.discovery.malformed()
    srv.faults.token.add(Fault("reset", probability=0.3, times=None))
    srv.faults.revoke_grants()                          # every grant revoked behind the device's back
    srv.faults.release()                                # held requests (timeout, delay) end now
    srv.faults.clear()                                  # healthy again (and release)

Kinds (:data:`KINDS`): ``ok`` (the real answer, after ``delay``: latency),
``status`` (``status`` with ``{"error": error}``, or a plain page when
``error`` is None, and ``Retry-After`` when ``retry_after`` is set),
``reset`` (the connection aborted with a TCP RST, no answer), ``close``
(closed with a FIN, no answer), ``timeout`` (held for ``hold`` seconds, longer
than a client's deadline, or until ``release()``, then closed without an
answer), ``malformed`` (truncated JSON), ``oversized`` (a token-shaped 200 of
more than 1 MiB), ``revoke`` (every grant is revoked, then the real answer).
``slow_down``, ``rate_limit`` and ``error_body`` are shorthands for ``status``
rules. ``after=True`` runs the real endpoint first and loses its answer (a
refresh token rotated at the server, never delivered).

The same rules arrive over HTTP (``POST /sim/faults``, see :meth:`Faults.configure`)
and from ``devicelink-sim server --fault token:status,status=503,times=3``
(see :func:`parse_spec`). Every request to the five endpoints lands in
:attr:`Faults.log`, and token requests also in ``srv.stats``.

Switches are what the virtual device's page and ``devicelink-sim faults on|off``
toggle live: :meth:`Faults.switch` puts one rule per (endpoint, kind) in place,
lasting until it is switched off (:data:`SWITCH_DEFAULTS` gives each kind's
fields), and switching it off removes that rule alone. Whatever changes the
rules, and every request, tells :attr:`Faults.watchers`.

The rules and the log are here; fault_layer.py applies them to the server's requests.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .settings import DEVICE_CODE_GRANT_TYPE

__all__ = ["ENDPOINTS", "KINDS", "SWITCH_DEFAULTS", "SWITCH_KINDS", "EndpointFaults", "Fault", "Faults", "Hit",
           "outcome_of", "parse_spec", "parse_switch"]

ENDPOINTS = ("token", "device", "revocation", "discovery", "registration")
KINDS = ("ok", "status", "reset", "close", "timeout", "malformed", "oversized", "revoke")
_SHORTHANDS: dict[str, dict[str, Any]] = {
    "slow_down": {"status": 400, "error": "slow_down"},
    "rate_limit": {"status": 429},
    "error_body": {"status": 200, "error": "server_error"},  # GitHub answers errors with 200
}
#: What a switch of each kind puts in place unless told otherwise (the page has no fields to fill):
#: every kind and shorthand, with times=None (until switched off). ``ok`` is latency.
SWITCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "ok": {"delay": 3.0},
    "status": {"status": 503},          # a proxy's HTML page
    "reset": {},
    "close": {},
    "timeout": {"hold": 60.0},          # past the daemon's 30 s deadline; release() ends it sooner
    "malformed": {},
    "oversized": {},
    "revoke": {},
    "slow_down": {},
    "rate_limit": {"retry_after": 5},
    "error_body": {},
}
SWITCH_KINDS = tuple(SWITCH_DEFAULTS)


@dataclass
class Fault:
    """One rule. ``times`` uses (None: until cleared); ``used`` counts them."""

    kind: str
    times: int | None = 1
    probability: float = 1.0
    delay: float = 0.0  # seconds before the fault or the real answer (latency); release() ends it
    status: int | None = None  # "status" (default 503) and "malformed" (default 200)
    error: str | None = None  # "status": the body's OAuth error; None is a plain-text page
    retry_after: int | str | None = None  # "status": a Retry-After header (seconds or an HTTP date)
    hold: float = 60.0  # "timeout": the longest hold; the daemon's deadline is 30 s
    after: bool = False  # run the real endpoint first and lose its answer
    used: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind in _SHORTHANDS:
            for name, value in _SHORTHANDS[self.kind].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
            self.kind = "status"
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS + tuple(_SHORTHANDS))}")
        if self.status is None:
            self.status = 200 if self.kind == "malformed" else 503
        if self.times is not None and self.times < 1:
            raise ValueError("times must be None (until cleared) or at least 1")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if self.delay < 0 or self.hold < 0:
            raise ValueError("delay and hold must not be negative")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")

    @property
    def spent(self) -> bool:
        return self.times is not None and self.used >= self.times

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)} - {"used"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        if "kind" not in data:
            raise ValueError("a fault needs a kind")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Hit:
    """One request to a faultable endpoint, as the server saw it."""

    at: float  # the server's clock on arrival
    endpoint: str  # token, device, revocation, discovery
    request: str  # discovery, device, token (a device-code poll), refresh, revocation, or token:<grant_type>
    fault: str | None  # the fault kind it got, None for the real answer
    outcome: str = "pending"  # ok, an OAuth error code, http_NNN, reset, close, timeout, malformed, oversized


class EndpointFaults:
    """The rules of one endpoint. Every method appends a rule and returns ``self``, so calls chain."""

    def __init__(self, name: str, owner: Faults) -> None:
        self.name, self._owner = name, owner
        self.rules: list[Fault] = []

    def add(self, *faults: Fault) -> EndpointFaults:
        with self._owner.lock:
            self.rules.extend(faults)
        self._owner.changed()
        return self

    def schedule(self, faults: Iterable[Fault | dict[str, Any]]) -> EndpointFaults:
        """Append rules in order: ``schedule([Fault("reset"), Fault("status", status=502), Fault("ok")])``."""
        return self.add(*(f if isinstance(f, Fault) else Fault.from_dict(f) for f in faults))

    def fail(self, status: int = 503, *, error: str | None = None, retry_after: int | str | None = None,
             times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.add(Fault("status", status=status, error=error, retry_after=retry_after, times=times, **kw))

    def rate_limit(self, retry_after: int | str | None = 30, times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.fail(429, retry_after=retry_after, times=times, **kw)

    def error_body(self, error: str = "server_error", times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.fail(200, error=error, times=times, **kw)

    def slow_down(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.fail(400, error="slow_down", times=times, **kw)

    def delay(self, seconds: float, times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.add(Fault("ok", delay=seconds, times=times, **kw))

    def reset(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        """Abort the connection (TCP RST) without an answer."""
        return self.add(Fault("reset", times=times, **kw))

    def close(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        """Close the connection (FIN) without an answer."""
        return self.add(Fault("close", times=times, **kw))

    def timeout(self, times: int | None = 1, hold: float = 60.0, **kw: Any) -> EndpointFaults:
        return self.add(Fault("timeout", times=times, hold=hold, **kw))

    def malformed(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.add(Fault("malformed", times=times, **kw))

    def oversized(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        return self.add(Fault("oversized", times=times, **kw))

    def revoke(self, times: int | None = 1, **kw: Any) -> EndpointFaults:
        """Revoke every grant when the next request arrives (then answer it for real)."""
        return self.add(Fault("revoke", times=times, **kw))

    def clear(self) -> None:
        with self._owner.lock:
            self.rules.clear()
        self._owner.changed()

    def _pick(self, rng: random.Random) -> Fault | None:
        """The rule this request gets, or None for the real answer. Holds the owner's lock."""
        self.rules[:] = [rule for rule in self.rules if not rule.spent]
        if not self.rules:
            return None
        rule = self.rules[0]
        if rule.probability < 1.0 and rng.random() >= rule.probability:
            return None
        rule.used += 1
        return rule


class Faults:
    """The fault rules of one development server and its request log; fault_layer.py applies them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, seed: int | None = None,
                 revoke_grants: Callable[[], int] | None = None, log_size: int = 100_000) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self._revoke_grants = revoke_grants
        self._released = threading.Event()
        self.token = EndpointFaults("token", self)
        self.device = EndpointFaults("device", self)
        self.revocation = EndpointFaults("revocation", self)
        self.discovery = EndpointFaults("discovery", self)
        self.registration = EndpointFaults("registration", self)  # RFC 7591 POST /register
        #: Every request to the five endpoints, in arrival order (the oldest dropped past ``log_size``).
        self.log: deque[Hit] = deque(maxlen=log_size)
        #: (endpoint, kind) -> the rule a switch put in place (switch()).
        self._switches: dict[tuple[str, str], Fault] = {}
        #: Called with no arguments after the rules change or a request arrives (the virtual
        #: device's page listens); called outside the lock, and must not block.
        self.watchers: list[Callable[[], None]] = []

    def changed(self) -> None:
        """Tell the watchers (the rules changed, or a request arrived)."""
        for watcher in list(self.watchers):
            try:
                watcher()
            except Exception:  # a broken page must not break the server
                pass

    def endpoint(self, name: str) -> EndpointFaults:
        if name not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {name!r}; one of {', '.join(ENDPOINTS)}")
        return getattr(self, name)

    # -- controls -----------------------------------------------------------------

    def seed(self, seed: int | None) -> None:
        with self.lock:
            self.rng.seed(seed)

    def release(self) -> None:
        """End every hold and delay now (held ``timeout`` requests are closed without an answer)."""
        with self.lock:
            self._released.set()
            self._released = threading.Event()

    def clear(self) -> None:
        """No more faults: drop every rule (switches too) and release what is held."""
        with self.lock:
            for name in ENDPOINTS:
                self.endpoint(name).rules.clear()
            self._switches.clear()
        self.release()
        self.changed()

    def switch(self, endpoint: str, kind: str, on: bool = True, **fields: Any) -> Fault | None:
        """Turn the switch for ``kind`` on ``endpoint`` on (its rule appended, lasting until switched
        off: ``times=None`` and :data:`SWITCH_DEFAULTS` unless ``fields`` say otherwise) or off (that
        rule removed, and what it holds released). Switching on again replaces the rule. A request
        gets the first rule with uses left, so of two switches on one endpoint the first one on wins.
        Returns the rule now in place, or None. ValueError for an unknown endpoint, kind or field."""
        rules = self.endpoint(endpoint).rules
        if kind not in SWITCH_DEFAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(SWITCH_KINDS)}")
        fault = Fault.from_dict({"kind": kind, "times": None, **SWITCH_DEFAULTS[kind], **fields}) if on else None
        with self.lock:
            old = self._switches.pop((endpoint, kind), None)
            if old is not None and any(rule is old for rule in rules):
                rules[:] = [rule for rule in rules if rule is not old]
            if fault is not None:
                rules.append(fault)
                self._switches[(endpoint, kind)] = fault
        if old is not None and fault is None and old.kind in ("timeout", "ok"):
            self.release()  # a held request of the switch just turned off ends now
        self.changed()
        return fault

    def switches(self) -> list[dict[str, Any]]:
        """The switches that are on: ``[{"endpoint", "kind", "fault": {...}}]`` (a switch whose rule
        was given a number of ``times`` is off once they are spent)."""
        with self.lock:
            return [{"endpoint": endpoint, "kind": kind, "fault": rule.to_dict()}
                    for (endpoint, kind), rule in self._switches.items()
                    if not rule.spent and any(r is rule for r in self.endpoint(endpoint).rules)]

    def revoke_grants(self) -> int:
        """Revoke every grant at the server now, as an administrator would; returns how many."""
        if self._revoke_grants is None:
            raise RuntimeError("this Faults is not attached to a server")
        return self._revoke_grants()

    @property
    def active(self) -> bool:
        with self.lock:
            return any(not rule.spent for name in ENDPOINTS for rule in self.endpoint(name).rules)

    def hits(self, request: str | None = None, since: float = float("-inf")) -> list[Hit]:
        with self.lock:
            return [h for h in self.log if (request is None or h.request == request) and h.at >= since]

    def counts(self) -> dict[str, dict[str, int]]:
        """Requests by kind, and by kind and outcome."""
        with self.lock:
            by_kind = Counter(h.request for h in self.log)
            by_outcome = Counter(f"{h.request} {h.outcome}" for h in self.log)
        return {"requests": dict(by_kind), "outcomes": dict(by_outcome)}

    def configure(self, body: Any) -> dict[str, Any]:
        """What ``POST /sim/faults`` does with its JSON::

            {"clear": true, "seed": 7, "release": true, "revoke_grants": true,
             "token": [{"kind": "status", "status": 503, "times": 3}, {"kind": "reset"}],
             "device": [...], "revocation": [...], "discovery": [...],
             "switch": [{"endpoint": "token", "kind": "reset", "on": true}, ...]}

        ``clear`` first, then the rules are appended, then the switches are turned (each
        object's other fields go to the rule), then ``revoke_grants``. ValueError for a bad body."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        unknown = set(body) - {"clear", "seed", "release", "revoke_grants", "switch", *ENDPOINTS}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        rules = {}
        for name in ENDPOINTS:
            given = body.get(name, [])
            if not isinstance(given, list) or not all(isinstance(f, dict) for f in given):
                raise ValueError(f"{name}: expected a list of fault objects")
            try:
                rules[name] = [Fault.from_dict(f) for f in given]
            except TypeError as exc:
                raise ValueError(f"{name}: {exc}") from None
        switches = _switch_list(body.get("switch", []))
        if body.get("clear"):
            self.clear()
        if "seed" in body:
            self.seed(body["seed"])
        for name, faults in rules.items():
            if faults:
                self.endpoint(name).add(*faults)
        for endpoint, kind, on, fields in switches:
            try:
                self.switch(endpoint, kind, on, **fields)
            except TypeError as exc:
                raise ValueError(f"switch: {exc}") from None
        if body.get("release"):
            self.release()
        if body.get("revoke_grants"):
            self.revoke_grants()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            rules = {name: [r.to_dict() for r in self.endpoint(name).rules if not r.spent] for name in ENDPOINTS}
        return {**rules, "switches": self.switches(), **self.counts()}

    # -- requests ------------------------------------------------------------------

    def arrive(self, endpoint: str, grant_type: str, at: float) -> tuple[Fault | None, Hit, threading.Event]:
        """A request to ``endpoint`` (a token request's ``grant_type``) arrived at ``at``: log it and
        pick its rule (None: the real answer). The event is set when ``release()`` is called."""
        with self.lock:
            rule = self.endpoint(endpoint)._pick(self.rng)
            hit = Hit(at, endpoint, _request_name(endpoint, grant_type), rule and rule.kind)
            self.log.append(hit)
            released = self._released
        self.changed()
        return rule, hit, released


def _switch_list(given: Any) -> list[tuple[str, str, bool, dict[str, Any]]]:
    """``POST /sim/faults``'s ``switch``: a list of ``{"endpoint", "kind", "on", ...fields}``, checked
    whole before any is turned."""
    if isinstance(given, dict):
        given = [given]
    if not isinstance(given, list) or not all(isinstance(s, dict) for s in given):
        raise ValueError("switch: expected a list of {endpoint, kind, on} objects")
    out = []
    for item in given:
        fields = dict(item)
        endpoint, kind, on = fields.pop("endpoint", None), fields.pop("kind", None), fields.pop("on", True)
        if endpoint not in ENDPOINTS:
            raise ValueError(f"switch: endpoint must be one of {', '.join(ENDPOINTS)}")
        if kind not in SWITCH_DEFAULTS:
            raise ValueError(f"switch: kind must be one of {', '.join(SWITCH_KINDS)}")
        if not isinstance(on, bool):
            raise ValueError("switch: on must be true or false")
        if on:  # a bad field is refused before anything changes
            try:
                Fault.from_dict({"kind": kind, "times": None, **SWITCH_DEFAULTS[kind], **fields})
            except TypeError as exc:
                raise ValueError(f"switch: {exc}") from None
        out.append((endpoint, kind, on, fields))
    return out


def _request_name(endpoint: str, grant_type: str) -> str:
    if endpoint != "token":
        return endpoint
    if grant_type == DEVICE_CODE_GRANT_TYPE:
        return "token"
    if grant_type == "refresh_token":
        return "refresh"
    return f"token:{grant_type or '-'}"


def outcome_of(status: int, body: Any) -> str:
    """How the logs name an answer: the OAuth error of its JSON ``body``, else ok or http_NNN."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return "ok" if status == 200 else f"http_{status}"




def parse_spec(spec: str) -> tuple[str, Fault]:
    """``ENDPOINT:KIND[,FIELD=VALUE...]`` (the CLI's ``--fault``), e.g. ``token:status,status=503,times=3``,
    ``token:slow_down,times=20``, ``device:reset``, ``token:timeout,probability=0.2,times=none``."""
    endpoint, kind, fields = _split_spec(spec)
    try:
        return endpoint, Fault.from_dict({"kind": kind, **fields})
    except TypeError as exc:
        raise ValueError(f"{spec!r}: {exc}") from None


def parse_switch(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``ENDPOINT:KIND[,FIELD=VALUE...]`` for a switch (``devicelink-sim faults on``): the endpoint, the
    kind as named (shorthands kept: ``slow_down``, ``rate_limit``, ``error_body``) and the fields
    that differ from :data:`SWITCH_DEFAULTS`. ValueError for a bad one."""
    endpoint, kind, fields = _split_spec(spec)
    if kind not in SWITCH_DEFAULTS:
        raise ValueError(f"{spec!r}: KIND must be one of {', '.join(SWITCH_KINDS)}")
    try:
        Fault.from_dict({"kind": kind, "times": None, **SWITCH_DEFAULTS[kind], **fields})
    except TypeError as exc:
        raise ValueError(f"{spec!r}: {exc}") from None
    return endpoint, kind, fields


def _split_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    endpoint, sep, rest = spec.partition(":")
    if not sep or endpoint not in ENDPOINTS:
        raise ValueError(f"{spec!r}: expected ENDPOINT:KIND[,FIELD=VALUE...] with ENDPOINT one of "
                         + ", ".join(ENDPOINTS))
    kind, *pairs = rest.split(",")
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"{spec!r}: {pair!r} is not FIELD=VALUE")
        fields[name.strip()] = _value(value.strip())
    return endpoint, kind.strip(), fields


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("none", "null", "forever"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
