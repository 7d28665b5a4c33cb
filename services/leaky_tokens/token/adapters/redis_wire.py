"""RedisWire: a minimal asyncio RESP client for one Redis endpoint (a batch per write)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis import exceptions as rx
from redis._parsers.base import BaseParser  # redis-py's error-reply mapping, kept identical


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*parts: str | bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    raw = [p.encode() if isinstance(p, str) else p for p in parts]
    return b"*%d\r\n" % len(raw) + b"".join(bulk(p) for p in raw)


GRACE_S = 0.001  # after the timeout, one more loop turn to read a reply that arrived


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: a TCP host and port or a Unix socket, AUTH, SELECT."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """redis://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path[?db=n]."""
        parts = urlsplit(url)
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        if parts.scheme == "unix":
            return cls(
                path=parts.path, username=user, password=password, db=int(query.get("db", 0))
            )
        if parts.scheme != "redis":
            raise ValueError(f"the fast Redis client takes redis:// or unix:// URLs, not {url!r}")
        db = parts.path.strip("/") or query.get("db", "0")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, None, user, password, int(db))

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends first (AUTH, SELECT), if any."""
        found = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            found.append(command("AUTH", *auth))
        if self.db:
            found.append(command("SELECT", str(self.db)))
        return found

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One socket: replies are matched in order to the batches written on it."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.pending: deque[tuple[int, asyncio.Future[list[Any]], list[Any]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.broken: BaseException | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise rx.InvalidResponse("a reply nobody asked for")
                count, future, replies = pending[0]
                replies.append(reply)
                if len(replies) == count:
                    pending.popleft()
                    if not future.done():  # its caller may have given up
                        future.set_result(replies)
        except (hiredis.ProtocolError, rx.InvalidResponse) as error:
            self.fail(rx.ConnectionError(f"bad reply: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rx.ConnectionError(f"connection lost: {exc or 'closed by the server'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, error: BaseException) -> None:
        """Fail every batch waiting here and drop the socket (the next call reconnects)."""
        if self.broken is None:
            self.broken = error
        while self.pending:
            _, future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class RedisWire:
    """Pipelined commands to one Redis endpoint over one connection, opened on first use.

    `execute` writes a whole batch with one `transport.write` and returns its replies in
    order, an error reply as redis-py's exception for it (NoScriptError, ReadOnlyError, ...).
    A batch without every reply within `timeout_s` raises redis-py's TimeoutError and drops
    the connection (the replies behind a stalled one would be as late); a dead connection
    raises ConnectionError, and the next call connects again, within `connect_timeout_s`.
    """

    def __init__(self, endpoint: Endpoint, *, timeout_s: float, connect_timeout_s: float):
        self._endpoint = endpoint
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._conn: _Connection | None = None
        self._lock: asyncio.Lock | None = None
        self.connects = 0

    async def execute(self, payload: bytes, count: int) -> list[Any]:
        """Send `count` commands packed in `payload`; their replies, in order."""
        conn = self._conn
        if conn is None or conn.broken is not None:
            conn = await self._connect()
        return await self._send(conn, payload, count)

    async def close(self) -> None:
        """Close the connection and wait until its socket is gone."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            await conn.closed

    async def _send(self, conn: _Connection, payload: bytes, count: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        conn.pending.append((count, future, []))
        assert conn.transport is not None
        conn.transport.write(payload)
        timer = loop.call_later(self._timeout, self._expire, conn, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(
        self, conn: _Connection, future: asyncio.Future[list[Any]], polled: bool = False
    ) -> None:
        if future.done():
            return
        if not polled:
            # uvloop runs due timers before it reads sockets: after a stall (a busy box) the
            # reply may be waiting unread. Give the loop one poll (the 1 ms timer fires only
            # in a later turn, after it) before calling the batch timed out.
            asyncio.get_running_loop().call_later(GRACE_S, self._expire, conn, future, True)
            return
        conn.fail(rx.TimeoutError(f"no reply within {self._timeout * 1000:.0f} ms"))

    async def _connect(self) -> _Connection:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # concurrent batches share one new connection
            if self._conn is not None and self._conn.broken is None:
                return self._conn
            if self._conn is not None and self._conn.transport is not None:
                self._conn.transport.abort()
            self._conn = None
            conn = await self._open()
            try:
                hello = self._endpoint.handshake()
                if hello:
                    for reply in await self._send(conn, b"".join(hello), len(hello)):
                        if isinstance(reply, Exception):
                            raise reply
            except BaseException:
                conn.fail(rx.ConnectionError("handshake failed"))
                await conn.closed
                raise
            self._conn = conn
            self.connects += 1
            return conn

    async def _open(self) -> _Connection:
        loop, e = asyncio.get_running_loop(), self._endpoint
        try:
            async with asyncio.timeout(self._connect_timeout):
                if e.path is not None:
                    _, conn = await loop.create_unix_connection(_Connection, e.path)
                else:
                    _, conn = await loop.create_connection(_Connection, e.host, e.port)
        except TimeoutError as error:
            raise rx.TimeoutError(f"connecting to {e} timed out") from error
        except OSError as error:
            raise rx.ConnectionError(f"cannot connect to {e}: {error}") from error
        return conn


class WireScript:
    """A Lua script's EVALSHA and EVAL command heads, packed once."""

    def __init__(self, sha: str, text: str) -> None:
        self.sha = sha
        self._heads = (
            b"$7\r\nEVALSHA\r\n" + bulk(sha.encode()),
            b"$4\r\nEVAL\r\n" + bulk(text.encode()),
        )

    def call(self, keys: Sequence[str], args: Sequence[str], *, cached: bool) -> bytes:
        """EVALSHA (or EVAL, `cached` false) of this script with `keys` and `args`."""
        head = self._heads[0] if cached else self._heads[1]
        values = (*keys, *args)
        # Formatted as text and encoded once: half the cost of encoding value by value. A
        # bulk's length counts bytes, which only ASCII text shares with its length in chars.
        text = "".join([f"${len(v)}\r\n{v}\r\n" for v in values])
        ascii_only = text.isascii()
        body = text.encode() if ascii_only else b"".join([bulk(v.encode()) for v in values])
        return b"*%d\r\n%b%b%b" % (3 + len(values), head, bulk(b"%d" % len(keys)), body)


async def run_scripts(
    wire: RedisWire,
    calls: Sequence[tuple[WireScript, Sequence[str], Sequence[str]]],
    *,
    cached: bool,
) -> list[Any]:
    """One batch of script calls: their replies (or error replies as exceptions), in order."""
    payload = b"".join(s.call(keys, args, cached=cached) for s, keys, args in calls)
    return await wire.execute(payload, len(calls))
