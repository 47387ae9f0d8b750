"""Counters for ``GET /metrics``, in the Prometheus text exposition format (0.0.4).

Pure: counting is a dict increment; :func:`render` takes the gauges as
arguments. One :class:`Metrics` per device, so a simulator with thousands of
devices keeps them apart. Label values are escaped; app names are further
restricted by the config (letters, digits, ``._-``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["COUNTERS", "Metrics"]

#: name -> help text. Every counter is exported from the start (at 0 when it has
#: no labels), so a dashboard sees the series before the first event.
COUNTERS: Mapping[str, str] = {
    "devicelink_pairings_total": "Pairings completed (the user approved a code).",
    "devicelink_codes_issued_total": "Pairing codes obtained from the authorization server.",
    "devicelink_codes_expired_total": "Pairing codes that expired before anyone approved them.",
    "devicelink_polls_total": "Device access token requests (RFC 8628 §3.4 polls).",
    "devicelink_slow_downs_total": "slow_down answers to polls (RFC 8628 §3.5).",
    "devicelink_refreshes_total": "Refresh requests by kind (grant, narrowed) and outcome.",
    "devicelink_token_requests_total": "GET /v1/token requests by app and HTTP status.",
    "devicelink_client_credentials_requests_total": "Device-level token requests (client credentials) by outcome.",
}


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, **labels: str) -> None:
        self._counts[name, tuple(sorted(labels.items()))] += 1

    def value(self, name: str, **labels: str) -> int:
        return self._counts[name, tuple(sorted(labels.items()))]

    def render(self, gauges: Iterable[tuple[str, str, Mapping[str, str], float]]) -> str:
        """The exposition text; ``gauges`` are ``(name, help, labels, value)``."""
        lines: list[str] = []
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            samples = sorted((labels, n) for (metric, labels), n in self._counts.items() if metric == name)
            if not samples and not name.endswith(("refreshes_total", "requests_total")):
                samples = [((), 0)]
            lines += [f"{name}{_labels(labels)} {n}" for labels, n in samples]
        seen: set[str] = set()
        for name, help_text, labels, value in gauges:
            if name not in seen:
                seen.add(name)
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{_labels(tuple(labels.items()))} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
