"""An asyncio event loop on virtual time: whenever nothing can run, the clock jumps to the next timer.

The fleet (fleet.py) runs thousands of real device engines through hours of token
lifetimes in minutes. Everything in the engine that waits (``asyncio.sleep``,
``wait_for``, ``call_later``) waits on ``loop.time()``, so giving each device
``clock=loop.time`` and the loop's own ``asyncio.sleep`` is all it takes: no
engine code knows. Time only moves when the loop would otherwise block: no
callback is ready, and no work handed to a thread (the state file's encrypted,
fsynced writes go through ``asyncio.to_thread``) is still out, so a write takes
no virtual time and nothing is reordered by the jump.

There is no real I/O to wait for in such a run (the authorization server is
in-process, inprocess.py); a loop that has nothing scheduled and nothing out
would wait for ever, and raises instead.
"""

from __future__ import annotations

import asyncio
import selectors
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Deadlock(RuntimeError):
    """Nothing is scheduled and nothing is out: the run can never go on."""


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0, workers: int = 4) -> None:
        self._virtual = float(start)
        super().__init__(_TimeTravel(self))
        self.out = 0  # work handed to threads whose result the loop has not had yet
        self.executor = executor(workers)
        self.set_default_executor(self.executor)

    def time(self) -> float:
        return self._virtual

    def jump(self, seconds: float) -> None:
        self._virtual += seconds

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Counted until its result is on the loop: the count drops in the same turn that
        wakes whoever awaits it (both are the future's callbacks), so time never jumps
        between a write finishing and the engine going on from it."""
        future = super().run_in_executor(executor, func, *args)
        self.out += 1
        future.add_done_callback(self._came_back)
        return future

    def _came_back(self, _: asyncio.Future) -> None:
        self.out -= 1


class _TimeTravel(selectors.DefaultSelector):
    """The loop's selector: where the loop would sleep, the clock jumps instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout == 0:
            return super().select(0)
        if self._loop.out:  # a thread will wake us through the loop's self-pipe
            return super().select(timeout)
        if timeout is None:
            raise Deadlock("nothing is scheduled and nothing is out: the run cannot go on")
        self._loop.jump(timeout)
        return super().select(0)


def executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-io")


def run(main: Any, start: float = 0.0, workers: int = 4) -> Any:
    """``asyncio.run`` on virtual time."""
    loop = VirtualTimeLoop(start, workers)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.executor.shutdown(wait=True)  # not shutdown_default_executor: its thread is not counted
        finally:
            asyncio.set_event_loop(None)
            loop.close()
