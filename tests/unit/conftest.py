"""The unit tier does no I/O: a test here that starts a process, opens a network connection or
a server, uses SQLite, generates RSA keys or runs argon2 fails, saying where it belongs.
Reading committed files is allowed (the drift tests compare generated text with them)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from collections.abc import Callable
from typing import Any

import argon2
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

MOVE = "the unit tier does no I/O ({}): move this test to tests/service or tests/integration"


class UnitTierIO(AssertionError):
    """A unit test tried to do I/O."""


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*args: object, **kwargs: object) -> Any:
        raise UnitTierIO(MOVE.format(what))

    return refused


class _NoProcess(subprocess.Popen):  # type: ignore[type-arg]
    """Refuses before anything starts (`_child_created` stays False: __del__ is a no-op)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise UnitTierIO(MOVE.format("a process"))


def _refuse_on_socket(method: str) -> Callable[..., Any]:
    def refused(self: socket.socket, *args: object, **kwargs: object) -> Any:
        # Closed here: callers catch OSError only, and a leaked socket's ResourceWarning would
        # surface in whichever later test happens to collect it.
        self.close()
        raise UnitTierIO(MOVE.format(f"socket.{method}"))

    return refused


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _NoProcess)
    for method in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, method, _refuse_on_socket(method))
    for name in ("server", "insecure_channel"):
        monkeypatch.setattr(grpc, name, _refuse(f"grpc.{name}"))
        monkeypatch.setattr(grpc.aio, name, _refuse(f"grpc.aio.{name}"))
    monkeypatch.setattr(sqlite3, "connect", _refuse("SQLite"))
    monkeypatch.setattr(rsa, "generate_private_key", _refuse("RSA key generation"))
    for method in ("hash", "verify"):
        monkeypatch.setattr(argon2.PasswordHasher, method, _refuse(f"argon2 {method}"))
