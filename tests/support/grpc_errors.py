"""What a failed gRPC call carries: google.rpc.Status details, ErrorInfo, BadRequest, trailers."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def details(error: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    """The google.rpc.Status details of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an AioRpcError is a Call
    assert status is not None
    return list(status.details)


def unpack(error: grpc.aio.AioRpcError, kind: type[Any]) -> Any | None:
    """The first detail of type `kind`, or None."""
    for packed in details(error):
        found = kind()
        if packed.Unpack(found):
            return found
    return None


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    info = unpack(error, error_details_pb2.ErrorInfo)
    assert info is not None
    return str(info.reason)


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The BadRequest field names of a failed call."""
    bad = unpack(error, error_details_pb2.BadRequest)
    assert bad is not None
    return [v.field for v in bad.field_violations]


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The trailing metadata of a failed call."""
    metadata: Any = error.trailing_metadata() or ()
    return {k: str(v) for k, v in metadata}
