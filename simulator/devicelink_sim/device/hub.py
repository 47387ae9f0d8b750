"""What the virtual device's page shows, kept as the latest value per topic, pushed to every viewer.

Topics are ``frame``, ``led``, ``button``, ``status``, ``daemon``, ``faults`` and
``requests``. A viewer gets every topic once when it subscribes, then each topic
again whenever it changes. A viewer that reads slowly skips the values it missed
and gets the newest one (an LED breathing at 25 steps a second, a countdown): no
queue grows, however slow the browser.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

KEEP_ALIVE = 15.0  # seconds of quiet before a keep-alive (it also finds a viewer that left)


class Hub:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._values: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self._seq = 0
        self._closed = False

    def publish(self, topic: str, value: Any) -> None:
        """Set ``topic`` to ``value``; viewers hear of it unless it is what they have."""
        with self._cond:
            if topic in self._values and self._values[topic] == value:
                return
            self._values[topic] = value
            self._seq += 1
            self._versions[topic] = self._seq
            self._cond.notify_all()

    def get(self, topic: str, default: Any = None) -> Any:
        with self._cond:
            return self._values.get(topic, default)

    def close(self) -> None:
        """End every stream."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate(values)`` holds (checked at every publish) or ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or predicate(dict(self._values)), timeout)

    def stream(self, keep_alive: float = KEEP_ALIVE) -> Iterator[tuple[str, Any] | None]:
        """``(topic, value)`` for every topic, then for each change; None after ``keep_alive``
        seconds of quiet. Ends when the hub closes."""
        seen: dict[str, int] = {}
        while True:
            with self._cond:
                def fresh() -> bool:
                    return self._closed or any(seen.get(t) != v for t, v in self._versions.items())

                if not self._cond.wait_for(fresh, keep_alive):
                    changed = None
                elif self._closed:
                    return
                else:
                    changed = [(t, self._values[t]) for t, v in self._versions.items() if seen.get(t) != v]
                    seen.update({t: self._versions[t] for t, _ in changed})
            if changed is None:
                yield None
            else:
                yield from changed
