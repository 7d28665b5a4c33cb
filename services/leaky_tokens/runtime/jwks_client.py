"""Fetches the auth service's JWKS over gRPC, for services that verify tokens themselves."""

from __future__ import annotations

import grpc
from google.protobuf.json_format import MessageToDict

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky_tokens.runtime.jwt_verifier import JwksFetcher


def grpc_jwks_fetcher(auth_target: str, timeout: float = 2.0) -> JwksFetcher:
    """A JwksFetcher calling AuthService.GetJwks at `auth_target` (host:port)."""
    channel = grpc.aio.insecure_channel(auth_target)
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> list[dict[str, str]]:
        response = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=timeout)
        return [MessageToDict(k, preserving_proto_field_name=True) for k in response.keys]

    return fetch
