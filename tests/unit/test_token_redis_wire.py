"""RedisWire's pieces without a server: URLs, RESP packing, replies matched to batches."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as rx

from leaky_tokens.token.adapters.redis_wire import Endpoint, WireScript, _Connection, command


def test_a_url_gives_host_port_password_and_database() -> None:
    assert Endpoint.from_url("redis://:p%40ss@10.0.0.2:6380/4") == Endpoint(
        "10.0.0.2", 6380, None, None, "p@ss", 4
    )
    assert Endpoint.from_url("redis://user:pw@host") == Endpoint("host", 6379, None, "user", "pw")
    assert Endpoint.from_url("unix:///run/redis.sock?db=2") == Endpoint(
        path="/run/redis.sock", db=2
    )


def test_a_url_it_cannot_serve_is_refused() -> None:
    with pytest.raises(ValueError, match="rediss://"):
        Endpoint.from_url("rediss://host:6379/0")


def test_the_handshake_authenticates_then_selects() -> None:
    assert Endpoint().handshake() == []
    assert Endpoint(username="u", password="p", db=3).handshake() == [
        command("AUTH", "u", "p"),
        command("SELECT", "3"),
    ]
    assert Endpoint(password="p").handshake() == [b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n"]


def test_a_script_call_is_packed_as_resp() -> None:
    script = WireScript("ab" * 20, "return 1")
    assert script.call(["k"], ["1", "é"], cached=True) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"ab" * 20 + b"\r\n$1\r\n1\r\n"
        b"$1\r\nk\r\n$1\r\n1\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert script.call([], [], cached=False) == command("EVAL", "return 1", "0")
    assert script.call(["a", "b"], ["c"], cached=True) == command(
        "EVALSHA", "ab" * 20, "2", "a", "b", "c"
    )


async def test_replies_go_to_their_batches_in_order_and_errors_become_redis_py_errors() -> None:
    conn = _Connection()
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    conn.pending.extend([(2, first, []), (1, second, [])])
    conn.data_received(b":1\r\n-NOSCRIPT No matching")  # a reply split across reads
    assert not first.done()
    conn.data_received(b" script\r\n*2\r\n:7\r\n-BUSY Redis is busy\r\n")
    one, noscript = first.result()
    assert one == 1
    assert isinstance(noscript, rx.NoScriptError)
    [(seven, busy)] = second.result()
    assert seven == 7
    assert isinstance(busy, rx.ResponseError)
    assert str(busy).startswith("BUSY")


async def test_a_lost_connection_fails_every_waiting_batch() -> None:
    conn = _Connection()
    waiting = asyncio.get_running_loop().create_future()
    conn.pending.append((1, waiting, []))
    conn.connection_lost(None)
    with pytest.raises(rx.ConnectionError, match="connection lost"):
        waiting.result()
    assert conn.broken is not None
    assert conn.closed.done()
