"""What makes the Envoy front door safe to face clients: ejection rules, request checks, errors."""

from __future__ import annotations

from typing import Any

_T = "type.googleapis.com/envoy."
STDOUT_LOG = _T + "extensions.access_loggers.stream.v3.StdoutAccessLog"

# HTTP status of a local reply -> the google.rpc.Code its JSON body carries (the mapping of
# google/rpc/code.proto). Unlisted statuses carry 2 (UNKNOWN).
GRPC_CODE_OF_STATUS = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    408: 4,  # DEADLINE_EXCEEDED
    409: 10,  # ABORTED
    413: 3,  # INVALID_ARGUMENT: the request is too large, not a quota
    429: 8,  # RESOURCE_EXHAUSTED
    431: 3,  # INVALID_ARGUMENT: headers too large
    499: 1,  # CANCELLED
    500: 13,  # INTERNAL
    501: 12,  # UNIMPLEMENTED
    502: 14,  # UNAVAILABLE
    503: 14,  # UNAVAILABLE
    504: 4,  # DEADLINE_EXCEEDED
}
UNKNOWN = 2
LOCAL_REPLY_MARK = "x-leaky-local-reply"


def outlier_detection() -> dict[str, Any]:
    """Eject a host on what shows it is sick, never on what a client can make it say.

    Local-origin failures (connection refused or reset, timeouts) and gateway failures (the
    host itself answered UNAVAILABLE) eject after 5 in a row. Other 5xx do not: gRPC
    UNIMPLEMENTED (501) and INTERNAL (500) follow from what a request asked for. At most half
    of a cluster is ejected, so the last healthy host is never taken out: a one-host cluster
    is never ejected at all (Envoy 1.40 honours the percentage unless always_eject_one_host).
    Client-triggered stream resets and timeouts are kept from the hosts by the gRPC frame
    check, `te: trailers` and the stripped `grpc-timeout` (see grpc_route_headers).
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 5,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_consecutive_5xx": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "base_ejection_time": "2s",
        "max_ejection_time": "30s",
        "max_ejection_percent": 50,
    }


def grpc_route_headers() -> dict[str, Any]:
    """Header rules for every route to a gRPC upstream.

    `te: trailers` is required by gRPC; a client that leaves it out made the service reset the
    stream, which Envoy counts as a connection failure of the host. A client's `grpc-timeout`
    would let it make the host answer DEADLINE_EXCEEDED (a gateway failure) at will; the
    client still cancels at its deadline, and the cancellation reaches the service.
    """
    return {
        "request_headers_to_add": [
            {
                "header": {"key": "te", "value": "trailers"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        # The client's address reaches services only as CLIENT_ADDRESS_HEADER (see
        # virtual_host_headers); a forwarded-for chain starts with whatever the client wrote.
        "request_headers_to_remove": ["grpc-timeout", "x-forwarded-for"],
    }


CLIENT_ADDRESS_HEADER = "x-leaky-client-address"


def virtual_host_headers() -> dict[str, Any]:
    """Header rules of the virtual host, so of every route: the client's address, our way.

    Envoy treats a loopback peer as internal whatever internal_address_config says and then
    passes a client-sent x-envoy-external-address through (measured on Envoy 1.40), so on
    loopback a client could choose the address the login throttle keys on. Envoy writes the
    connection's peer into a header of our own instead, overwriting a client's, and drops
    x-envoy-external-address so nothing downstream can read a forged one.
    """
    return {
        "request_headers_to_add": [
            {
                "header": {
                    "key": CLIENT_ADDRESS_HEADER,
                    "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "request_headers_to_remove": ["x-envoy-external-address"],
    }


def _status_is(status: int) -> dict[str, Any]:
    comparison = {"op": "EQ", "value": {"default_value": status, "runtime_key": "leaky.none"}}
    return {"status_code_filter": {"comparison": comparison}}


def local_reply_config() -> dict[str, Any]:
    """Envoy's own replies (bad JSON, unknown path, no upstream...) as google.rpc.Status JSON.

    The same shape as service errors: {"code": <gRPC code>, "message", "details": []}; the HTTP
    status stays. gRPC clients get grpc-status from Envoy and this JSON in grpc-message.
    Mappers put before these (edge_auth, edge_limits) answer the edge's own refusals with an
    ErrorInfo: a refused API key passes Check's own Status body (ADR 0048).
    """

    def body(code: int | str) -> dict[str, Any]:
        return {
            "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []},
            "content_type": "application/json",
        }

    # The mark tells the Lua filter, which runs before the transcoder and so sees its replies
    # on the way out, which bodies to clean of proto internals; the filter removes it.
    mark = [
        {
            "header": {"key": LOCAL_REPLY_MARK, "value": "1"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    mappers = [
        {
            "filter": _status_is(status),
            "body_format_override": body(code),
            "headers_to_add": mark,
        }
        for status, code in sorted(GRPC_CODE_OF_STATUS.items())
    ]
    # 200: a gRPC answer Envoy gives itself (the frame check); its grpc-status is the code.
    mappers.append(
        {
            "filter": _status_is(200),
            "body_format_override": body("%GRPC_STATUS_NUMBER%"),
        }
    )
    return {"mappers": mappers, "body_format": body(UNKNOWN)}


def access_log() -> list[dict[str, Any]]:
    """One JSON line per request on Envoy's stdout (its log file or the container log).

    The path is logged without its query string (query strings can carry credentials), and
    no Authorization or X-Api-Key header is logged.
    """
    fields = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "method": "%DYNAMIC_METADATA(leaky:method)%",
        "path": "%PATH(NQ:ORIG_OR_PATH)%",
        "protocol": "%PROTOCOL%",
        "status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS_NUMBER%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "duration_ms": "%DURATION%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "client_address": "%REQ(X-LEAKY-CLIENT-ADDRESS)%",  # as forwarded to the service
        "user_agent": "%REQ(USER-AGENT)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
    }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {"@type": STDOUT_LOG, "log_format": {"json_format": fields}},
        }
    ]


def client_address_settings() -> dict[str, Any]:
    """HCM settings: the peer Envoy sees is the client, whatever headers it sends.

    With use_remote_address the downstream address is the connection's peer, not a
    forwarded-for entry. The empty internal list keeps RFC 1918 peers from counting as
    internal (Envoy still counts loopback as internal: virtual_host_headers covers that).
    """
    return {
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "skip_xff_append": False,
        "internal_address_config": {"cidr_ranges": []},
        # Clients can quote the id of a failed request; it is the access log's request_id.
        "always_set_request_id_in_response": True,
    }
