"""envoy.service.auth.v3.Authorization over gRPC: Envoy's ext_authz asks it about API keys.

Envoy calls Check only for requests with an X-Api-Key and no verified JWT (gateway/
edge_auth.py). A valid key answers OK with the headers the services get: the mesh token in
`authorization` (the services verify it as any JWT), `x-leaky-user-id`, `x-leaky-api-key-id`
and `x-leaky-auth: api_key`; the key itself is removed. (Public RPCs, ValidateApiKey among
them, never come here: they ignore credentials, and ValidateApiKey reads the key itself.)
A refused key answers 401 with the google.rpc.Status of every other error, ErrorInfo
included (ADR 0048): as the JSON body for an HTTP caller, which Envoy's local reply passes
unchanged (edge_auth.with_local_replies); for a native gRPC caller (the identity filter marks
it in the `leaky` metadata Envoy sends here) as `grpc-status-details-bin` beside the plain
message, which Envoy sends as grpc-message with grpc-status UNAUTHENTICATED. Errors (the
store is down) fail the call, and Envoy answers 503: a key is never let through unchecked.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from leaky.vendor.envoy.config.core.v3 import base_pb2
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2 as pb
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from leaky.vendor.envoy.type.v3 import http_status_pb2
from leaky_tokens.auth.domain.api_key_gate import ApiKeyGate, EdgeIdentity
from leaky_tokens.runtime.errors import UnauthenticatedError
from leaky_tokens.runtime.identity import API_KEY_AUTH
from leaky_tokens.runtime.status import to_rpc_status

Context = grpc.aio.ServicerContext[Any, Any]

AUTHORIZATION_SERVICE = pb.DESCRIPTOR.services_by_name["Authorization"]
CHECK = f"/{AUTHORIZATION_SERVICE.full_name}/Check"
API_KEY_HEADER = "x-api-key"
# Dynamic metadata the identity filter sets (gateway/edge_auth.py) and Envoy sends to Check.
METADATA_NAMESPACE = "leaky"
GRPC_CALLER_KEY = "api_key_grpc"  # "1": the client called over native gRPC


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


def refused(error: UnauthenticatedError, *, grpc_caller: bool = False) -> pb.CheckResponse:
    """401 carrying the error's google.rpc.Status (code 16, its ErrorInfo in the details).

    For an HTTP caller the body is that Status as JSON, the shape the transcoder gives every
    service error. A gRPC caller gets the plain message as body (Envoy sends it as
    grpc-message) and the Status in `grpc-status-details-bin`, as a service would send it.
    """
    status = to_rpc_status(error)
    headers = [_header("www-authenticate", 'ApiKey realm="leaky-tokens"')]
    if grpc_caller:
        details = base64.b64encode(status.SerializeToString()).decode()
        headers.append(_header("grpc-status-details-bin", details))
        body = error.message
    else:
        headers.append(_header("content-type", "application/json"))
        # Printed as the transcoder prints service errors (always_print_primitive_fields).
        shape = json_format.MessageToDict(status, always_print_fields_with_no_presence=True)
        body = json.dumps(shape, separators=(",", ":"))
    return pb.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=error.message),
        denied_response=pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            headers=headers,
            body=body,
        ),
    )


def is_grpc_caller(request: pb.CheckRequest) -> bool:
    """Whether the identity filter marked the request as a native gRPC call."""
    marks = request.attributes.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
    if marks is None or GRPC_CALLER_KEY not in marks.fields:
        return False
    return bool(marks.fields[GRPC_CALLER_KEY].string_value == "1")


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
            return refused(error, grpc_caller=is_grpc_caller(request))
        return allowed(identity)
