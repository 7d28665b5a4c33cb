"""Servicers for contract RPCs whose implementation has not landed: a clear UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from leaky_tokens.runtime.errors import UnimplementedError


def with_unimplemented(base: type[Any], service: ServiceDescriptor, why: str) -> type[Any]:
    """A subclass of `base` where every RPC not defined by `base`'s subclasses says `why`."""

    def make(name: str) -> Any:
        async def method(self: Any, request: Any, context: Any) -> Any:
            raise UnimplementedError(f"{service.full_name}/{name} is not implemented yet: {why}")

        method.__name__ = name
        return method

    methods = {m.name: make(m.name) for m in service.methods}
    return type(f"Unimplemented{service.name}", (base,), methods)
