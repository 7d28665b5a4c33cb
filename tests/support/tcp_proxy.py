"""A TCP proxy a test puts in front of a shared server to take it away from one client
without touching the server: `cut()` resets every proxied connection and stops listening
(new connections are refused, as from a server that is down), `freeze()` keeps accepting
and holding connections but forwards nothing either way (a server that hangs), `restore()`
undoes either (listening again on the same port). It runs on its own thread and event loop,
so a test blocked in a synchronous wait does not stall the traffic it forwards."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from tests.support.net import quiet_port

HOST = "127.0.0.1"
T = TypeVar("T")


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` until cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = quiet_port()
        self.accepted = 0  # connections accepted so far (cut or not)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Future[None]] = set()
        self._flowing = asyncio.Event()

    def start(self) -> None:
        self._thread.start()
        self.restore()

    def restore(self) -> None:
        """Listen (again) on `port` and forward (again)."""
        self._run(self._listen())

    def freeze(self) -> None:
        """Forward nothing more, in either direction, until `restore()`; keep accepting."""
        self._run(self._freeze())

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._run(self._cut())

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _freeze(self) -> None:
        self._flowing.clear()

    async def _listen(self) -> None:
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, HOST, self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stops listening; the open connections are ended below
        pumps = list(self._pumps)
        for pump in pumps:
            pump.cancel()  # (not the handler's task: asyncio's streams mishandle that)
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(HOST, self.target_port)
            if self._server is None:  # cut while this connection was being opened
                return
            both = {
                asyncio.ensure_future(self._pump(reader, upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            }
            self._pumps |= both
            try:
                # One side closing (or a cut) ends the connection (CQL does not half-close).
                await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._pumps -= both
                for pump in both:
                    pump.cancel()
                await asyncio.gather(*both, return_exceptions=True)
        except OSError:
            pass  # the target refused: the client sees the connection close
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.transport.abort()  # a reset, as from a server that went away

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._flowing.wait()  # frozen: held (and TCP backpressure) until restored
                sink.write(data)
                await sink.drain()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A started proxy to `target_port`, closed on exit."""
    proxy = TcpProxy(target_port)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.close()
