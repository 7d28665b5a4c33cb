"""envoy.service.auth.v3.Authorization over gRPC: Envoy's ext_authz asks it about API keys.

Envoy calls Check only for requests with an X-Api-Key and no verified JWT (gateway/
edge_auth.py). A valid key answers OK with the headers the services get: the mesh token in
`authorization` (the services verify it as any JWT), `x-leaky-user-id`, `x-leaky-api-key-id`
and `x-leaky-auth: api_key`; the key itself is removed. (Public RPCs, ValidateApiKey among
them, never come here: they ignore credentials, and ValidateApiKey reads the key itself.)
A refused key answers 401, which Envoy turns into the google.rpc.Status JSON of every other
error (hardening.local_reply_config). Errors (the store is down) fail the call, and Envoy
answers 503: a key is never let through unchecked.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from leaky.vendor.envoy.config.core.v3 import base_pb2
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2 as pb
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from leaky.vendor.envoy.type.v3 import http_status_pb2
from leaky_tokens.auth.domain.api_key_gate import ApiKeyGate, EdgeIdentity
from leaky_tokens.runtime.errors import UnauthenticatedError
from leaky_tokens.runtime.identity import API_KEY_AUTH

Context = grpc.aio.ServicerContext[Any, Any]

AUTHORIZATION_SERVICE = pb.DESCRIPTOR.services_by_name["Authorization"]
CHECK = f"/{AUTHORIZATION_SERVICE.full_name}/Check"
API_KEY_HEADER = "x-api-key"


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def allowed(identity: EdgeIdentity) -> pb.CheckResponse:
    """OK with the verified identity as headers for the services."""
    key = identity.owner.key
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=pb.OkHttpResponse(
            headers=[
                _header("authorization", f"Bearer {identity.token}"),
                _header("x-leaky-user-id", key.user_id),
                _header("x-leaky-api-key-id", key.id),
                _header("x-leaky-auth", API_KEY_AUTH),
            ],
            headers_to_remove=[API_KEY_HEADER],
        ),
    )


def refused(error: UnauthenticatedError) -> pb.CheckResponse:
    """401; Envoy wraps the message in the google.rpc.Status JSON body (code 16)."""
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=error.message),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=[_header("www-authenticate", 'ApiKey realm="leaky-tokens"')],
            body=error.message,
        ),
    )


class EdgeAuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Thin translation layer over ApiKeyGate."""

    def __init__(self, gate: ApiKeyGate) -> None:
        self._gate = gate

    async def Check(self, request: pb.CheckRequest, context: Context) -> pb.CheckResponse:
        headers = request.attributes.request.http.headers
        secret = headers.get(API_KEY_HEADER, "")
        try:
            identity = await self._gate.admit(secret)
        except UnauthenticatedError as error:
            return refused(error)
        return allowed(identity)
