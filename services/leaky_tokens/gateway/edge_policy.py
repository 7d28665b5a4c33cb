"""Front-door policy beside the hardening (ADR 0042): body size, read routes, CORS, stats.

- A request body larger than `max_request_bytes` is refused by Envoy with 413 (the buffer
  filter, first in the chain; the local-reply mapper gives it the google.rpc.Status shape).
  Routes to streams that never end (reflection, health Watch) turn it off.
- Calls whose every HTTP binding is GET (reads: quotas, purchases, reports, keys...) get a
  route of their own, exact on the gRPC path, with a shorter timeout and retries on
  `unavailable` and `reset` as well; every other call (Consume, Purchase, Reserve, Settle,
  Login...) keeps the prefix route's retries of what never reached an instance only.
- CORS, off unless origins are configured: the filter sits after the transcoder (before it an
  HTTP/JSON request matches no route, and the policy is read from the route's virtual host).
- Compose: Envoy's admin listens on the container's loopback; Prometheus reads
  `/stats/prometheus` (and the healthcheck `/ready`) through a listener that serves only
  those two paths.
"""

from __future__ import annotations

from typing import Any

from leaky_tokens.gateway import bindings
from leaky_tokens.gateway.edge_settings import GatewaySettings
from leaky_tokens.topology import Service, public_services

_T = "type.googleapis.com/envoy.extensions.filters."
BUFFER_FILTER = "envoy.filters.http.buffer"
CORS_FILTER = "envoy.filters.http.cors"

# Route timeouts: reads answer from a store and are retried, so each try is bounded; writes
# keep the prefix route's 15 s (Consume waits for the provider call within it).
READ_TIMEOUT = "10s"
READ_TRY_TIMEOUT = "4s"
READ_RETRY_POLICY = {
    # connect-failure / refused-stream: never reached an instance; reset: the instance went
    # away mid-call; unavailable: it answered UNAVAILABLE (draining, its store down). Safe
    # only because the call reads.
    "retry_on": "connect-failure,refused-stream,reset,unavailable",
    "num_retries": 2,
    "per_try_timeout": READ_TRY_TIMEOUT,
    "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}

# CORS: what a browser client may send and read.
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = "authorization, content-type, x-api-key, x-request-id"
CORS_EXPOSED_HEADERS = (
    "x-request-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, "
    "ratelimit, ratelimit-policy"
)

STATS_PATHS = ("/stats/prometheus", "/ready")
ADMIN_CLUSTER = "envoy_admin"


def body_limit_filter(settings: GatewaySettings) -> dict[str, Any]:
    """The buffer filter: the whole body before anything else sees it, 413 past the limit."""
    return {
        "name": BUFFER_FILTER,
        "typed_config": {
            "@type": _T + "http.buffer.v3.Buffer",
            "max_request_bytes": settings.max_request_bytes,
        },
    }


def for_streams() -> dict[str, Any]:
    """typed_per_filter_config of a route to streams: no buffering (they never end)."""
    return {BUFFER_FILTER: {"@type": _T + "http.buffer.v3.BufferPerRoute", "disabled": True}}


def read_calls(services: tuple[Service, ...]) -> list[str]:
    """gRPC paths of the calls whose every HTTP binding is GET, from the descriptors."""
    methods: dict[str, set[str]] = {}
    for binding in bindings.http_bindings(services):
        methods.setdefault(binding.grpc_path, set()).add(binding.method)
    return sorted(path for path, verbs in methods.items() if verbs == {"GET"})


def read_routes(services: tuple[Service, ...], headers: dict[str, Any]) -> list[dict[str, Any]]:
    """One exact route per read call, before the service prefix routes: retries and timeout."""
    clusters = public_services(services)
    routes = []
    for path in read_calls(services):
        cluster = clusters[path.split("/")[1]]
        routes.append(
            {
                "match": {"path": path},
                "route": {
                    "cluster": cluster,
                    "timeout": READ_TIMEOUT,
                    "retry_policy": READ_RETRY_POLICY,
                },
                **headers,
            }
        )
    return routes


def cors_filters(settings: GatewaySettings) -> list[dict[str, Any]]:
    """The CORS filter when origins are configured, else nothing."""
    if not settings.cors_allowed_origins:
        return []
    return [{"name": CORS_FILTER, "typed_config": {"@type": _T + "http.cors.v3.Cors"}}]


def preflight_routes(
    services: tuple[Service, ...], settings: GatewaySettings
) -> list[dict[str, Any]]:
    """With CORS on: a route for browser preflights (OPTIONS with Origin and
    Access-Control-Request-Method) to any path the bindings serve, ahead of the 405 routes.

    The CORS filter answers them itself (allowed origin or not: forward_not_matching_preflights
    is off), but only on a route that forwards somewhere; the transcoder, which would answer
    404 for OPTIONS, is off on it. Nothing reaches the cluster.
    """
    if not settings.cors_allowed_origins:
        return []
    present = [
        {"name": name, "present_match": True}
        for name in ("origin", "access-control-request-method")
    ]
    cluster = sorted(public_services(services).values())[0]
    # One route per template, as the 405 routes: RE2 refuses one big alternation.
    return [
        {
            "match": {
                "safe_regex": {"regex": bindings._path_regex(template) + "/*"},
                "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}, *present],
            },
            "route": {"cluster": cluster, "timeout": "1s"},
            "typed_per_filter_config": {
                bindings.TRANSCODER_FILTER: {"@type": bindings.FILTER_CONFIG, "disabled": True}
            },
        }
        for template in sorted({b.template for b in bindings.http_bindings(services)})
    ]


def _origin(origin: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}


def virtual_host(settings: GatewaySettings) -> dict[str, Any]:
    """Virtual host fields: the CORS policy (nothing when CORS is off)."""
    if not settings.cors_allowed_origins:
        return {}
    policy = {
        "@type": _T + "http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [_origin(o) for o in settings.cors_allowed_origins],
        "allow_methods": CORS_METHODS,
        "allow_headers": CORS_REQUEST_HEADERS,
        "expose_headers": CORS_EXPOSED_HEADERS,
        "max_age": str(settings.cors_max_age_seconds),
        "allow_credentials": False,
        "forward_not_matching_preflights": False,
    }
    return {"typed_per_filter_config": {CORS_FILTER: policy}}


def stats_listener(port: int, admin_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A listener (all interfaces, inside the container) serving only STATS_PATHS from the
    admin on loopback, and the cluster it uses."""
    routes: list[dict[str, Any]] = [
        {"match": {"path": path}, "route": {"cluster": ADMIN_CLUSTER}} for path in STATS_PATHS
    ]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    hcm = {
        "@type": _T + "network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "stats",
        "route_config": {
            "name": "stats",
            "virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "stats",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},  # noqa: S104
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    cluster = {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }
    return listener, cluster
