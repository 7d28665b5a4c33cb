"""TokenService over gRPC; only GetStatus is implemented so far."""

from __future__ import annotations

from typing import Any

import grpc

from leaky.token.v1 import token_pb2 as pb
from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.runtime.convert import timestamp
from leaky_tokens.runtime.ports import Clock

Context = grpc.aio.ServicerContext[Any, Any]

TOKEN_SERVICE = pb.DESCRIPTOR.services_by_name["TokenService"]
# RPCs these classes do not define answer UNIMPLEMENTED with this reason (the interceptor).
PENDING = (
    "the token service (quotas, buckets, consume, reserve/settle, purchase) lands with issue 7"
)
PUBLIC_METHODS = frozenset({f"/{TOKEN_SERVICE.full_name}/GetStatus"})


class TokenServicer(token_pb2_grpc.TokenServiceServicer):
    """TokenService: the status probe; quotas, consume, reservations, purchase still to come."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(
            service="token-service", status="ok", timestamp=timestamp(self._clock.now())
        )
