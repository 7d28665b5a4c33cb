"""Servicers for contract RPCs whose implementation has not landed: a clear UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from leaky_tokens.runtime.errors import UnimplementedError


def with_unimplemented(base: type[Any], service: ServiceDescriptor, why: str) -> type[Any]:
    """A subclass of `base` where every RPC that hand-written code does not define says `why`."""

    def make(name: str) -> Any:
        async def method(self: Any, request: Any, context: Any) -> Any:
            raise UnimplementedError(f"{service.full_name}/{name} is not implemented yet: {why}")

        method.__name__ = name
        return method

    implemented = {
        name
        for klass in base.__mro__
        if not klass.__module__.endswith("_pb2_grpc")
        for name in vars(klass)
    }
    methods = {m.name: make(m.name) for m in service.methods if m.name not in implemented}
    return type(f"Unimplemented{service.name}", (base,), methods)
