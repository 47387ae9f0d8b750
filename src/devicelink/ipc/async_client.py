"""The asyncio client: :class:`AsyncClient`, imported as ``devicelink.client.AsyncClient``.

The same calls, answers and errors as the blocking client (:mod:`devicelink.ipc.client`),
over :class:`~devicelink.ipc.transport.AsyncPool`. asyncio itself is imported by the
first call, not by importing this module.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator

from devicelink.ipc import transport, wire
from devicelink.ipc.client import (
    _EVENTS, _HEALTH, _PAIR, _STATUS, _TRANSPORT_ERRORS, _UNPAIR, DEFAULT_TIMEOUT, PAIRED_STATES, Event, StepUp,
    Token, _Base, _Call, _dpop_proof_call, _error, _is_paired_event, _step_up_call, _token_call,
)


class AsyncClient(_Base):
    """The same calls as :class:`~devicelink.ipc.client.Client`, awaitable; :meth:`events`
    is an async iterator. Connections are not tied to an event loop.

    Use ``contextlib.aclosing(dl.events())`` when leaving the loop early, so the
    stream's connection is closed at once rather than when the generator is collected.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(path, timeout)
        self._pool = transport.AsyncPool(self.path)

    async def token(self, *, scope: str | None = None, resource: str | None = None,
                    min_ttl: int | None = None, identity: str | None = None) -> Token:
        """See :meth:`Client.token`."""
        return await self._do(_token_call(scope, resource, min_ttl, identity))

    async def status(self) -> dict[str, Any]:
        return await self._do(_STATUS)

    async def pair(self) -> dict[str, Any]:
        return await self._do(_PAIR)

    async def unpair(self) -> dict[str, Any]:
        return await self._do(_UNPAIR)

    async def health(self) -> bool:
        return await self._do(_HEALTH)

    async def step_up(self, acr_values: str | list[str] | None = None, max_age: int | None = None, *,
                      min_ttl: int | None = None) -> StepUp:
        """See :meth:`Client.step_up`."""
        return await self._do(_step_up_call(acr_values, max_age, min_ttl))

    async def dpop_proof(self, htm: str, htu: str, access_token: str | None = None,
                         nonce: str | None = None) -> str:
        """See :meth:`Client.dpop_proof`."""
        return await self._do(_dpop_proof_call(htm, htu, access_token, nonce))

    async def events(self) -> AsyncIterator[Event]:
        """See :meth:`Client.events`."""
        conn, reader = await self._subscribe()
        stream = self._read(conn, reader)
        try:
            async for event in stream:
                if event is not None:
                    yield event
        finally:
            await stream.aclose()
            conn.close()

    async def wait_until_paired(self, timeout: float | None = None) -> dict[str, Any]:
        """See :meth:`Client.wait_until_paired`."""
        import asyncio

        try:
            # wait_for runs the wait in a task of its own (see transport.AsyncPool.request).
            return await asyncio.wait_for(self._wait_until_paired(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the device was not paired within {timeout:g} s") from None

    async def _wait_until_paired(self) -> dict[str, Any]:
        conn, reader = await self._subscribe()
        stream = self._read(conn, reader)
        try:
            status = await self.status()
            while status.get("state") not in PAIRED_STATES:
                if _is_paired_event(await anext(stream)):
                    status = await self.status()
            return status
        finally:
            await stream.aclose()
            conn.close()

    async def aclose(self) -> None:
        self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _do(self, call: _Call) -> Any:
        try:
            response = await self._pool.request(call.encode(), self.timeout, retry=call.method == "GET")
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    async def _subscribe(self) -> tuple[transport.AsyncConnection, wire.ResponseReader]:
        """See :meth:`Client._subscribe`."""
        import asyncio

        try:
            conn, reader = await asyncio.wait_for(self._open_stream(), self.timeout)
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc
        reader.max_body = None  # a stream: the event parser bounds each event
        return conn, reader

    async def _open_stream(self) -> tuple[transport.AsyncConnection, wire.ResponseReader]:
        conn = await transport.AsyncConnection.open(self.path)
        try:
            await conn.send(_EVENTS)
            reader = wire.ResponseReader()
            head = await conn.receive(reader)
            if not 200 <= head.status < 300:
                raise _error(transport.Response(head, await conn.read_body(reader)))
        except BaseException:
            conn.close()
            raise
        return conn, reader

    async def _read(self, conn: transport.AsyncConnection, reader: wire.ResponseReader
                    ) -> AsyncIterator[Event | None]:
        from devicelink.ipc.sse import SseParser

        parser = SseParser()
        try:
            while (piece := await conn.receive(reader)) is not wire.END:
                for event in parser.feed(piece) or (None,):
                    yield event
        except _TRANSPORT_ERRORS as exc:
            raise self._stream_broke(exc) from exc
        raise self._stream_broke(None)
