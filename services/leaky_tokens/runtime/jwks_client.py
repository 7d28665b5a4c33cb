"""Fetches the auth service's JWKS over gRPC, for services that verify tokens themselves."""

from __future__ import annotations

import grpc
from google.protobuf.json_format import MessageToDict

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc


class GrpcJwksFetcher:
    """Calls AuthService.GetJwks at `auth_target` (host:port) over one reused channel."""

    def __init__(self, auth_target: str, timeout: float = 2.0) -> None:
        self._channel = grpc.aio.insecure_channel(auth_target)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._timeout = timeout

    async def __call__(self) -> list[dict[str, str]]:
        response = await self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=self._timeout)
        return [MessageToDict(k, preserving_proto_field_name=True) for k in response.keys]

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(grace=None)
