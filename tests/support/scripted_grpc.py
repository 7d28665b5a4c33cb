"""A real in-process gRPC server whose auth and token servicers follow a script: what each
RPC answers call after call, and what each call carried (metadata, deadline)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from leaky.auth.v1 import auth_pb2_grpc
from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.runtime import errors
from leaky_tokens.runtime.status import to_status

Step = Callable[[Any, grpc.ServicerContext], Any]


def fail(error: errors.DomainError) -> Step:
    """A step that answers with the status the services build for `error`."""

    def step(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(to_status(error))

    return step


def answer(message: Any) -> Step:
    return lambda _request, _context: message


@dataclass
class Script:
    """What each RPC answers, call after call (the last step repeats), and what it saw."""

    steps: dict[str, list[Step]] = field(default_factory=dict)
    seen: list[tuple[str, Any, dict[str, str], float | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.seen.append((name, request, metadata, context.time_remaining()))
            steps = self.steps.get(name) or [fail(errors.UnimplementedError("not scripted"))]
            step = steps.pop(0) if len(steps) > 1 else steps[0]
        return step(request, context)

    def calls(self, name: str) -> list[tuple[Any, dict[str, str], float | None]]:
        return [(r, m, t) for n, r, m, t in self.seen if n == name]


def scripted(servicer: type, script: Script) -> Any:
    """An instance of a generated servicer class whose every RPC runs the script."""
    methods = {
        name: (lambda n: lambda _self, request, context: script.run(n, request, context))(name)
        for name in dir(servicer)
        if name[0].isupper()
    }
    return type(f"Scripted{servicer.__name__}", (servicer,), methods)()


@contextmanager
def serving(script: Script) -> Iterator[str]:
    """The scripted AuthService and TokenService on a free loopback port; its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    token_pb2_grpc.add_TokenServiceServicer_to_server(
        scripted(token_pb2_grpc.TokenServiceServicer, script), server
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        scripted(auth_pb2_grpc.AuthServiceServicer, script), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
