"""Renders the Envoy front door: gRPC-JSON transcoding and native gRPC on one port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leaky_tokens.gateway import (
    bindings,
    edge_auth,
    edge_limits,
    edge_policy,
    edge_settings,
    hardening,
    request_checks,
)
from leaky_tokens.gateway.edge_settings import GatewaySettings
from leaky_tokens.runtime.paths import descriptor
from leaky_tokens.topology import SERVICES, Service, public_services

DESCRIPTOR = descriptor()

_T = "type.googleapis.com/envoy.extensions."
HTTP_PROTOCOL_OPTIONS = _T + "upstreams.http.v3.HttpProtocolOptions"
TRANSCODER = _T + "filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
ROUTER = _T + "filters.http.router.v3.Router"
HCM = _T + "filters.network.http_connection_manager.v3.HttpConnectionManager"
UUID_REQUEST_ID = _T + "request_id.uuid.v3.UuidRequestIdConfig"


@dataclass(frozen=True)
class Upstream:
    """One cluster: a name and its static endpoints (host, port)."""

    name: str
    endpoints: tuple[tuple[str, int], ...]


def _load_assignment(name: str, endpoints: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                    for h, p in endpoints
                ]
            }
        ],
    }


def _cluster(upstream: Upstream, discovery: str | None) -> dict[str, Any]:
    """A gRPC (HTTP/2) cluster: static endpoints, or endpoints polled from discovery (EDS)."""
    cluster: dict[str, Any] = {
        "name": upstream.name,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        # Envoy probes grpc.health.v1 itself, so a dead or draining instance leaves rotation
        # within a second or two, before Consul's own check even notices.
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        # Never spread traffic over unhealthy hosts ("panic mode"): fail instead.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "outlier_detection": hardening.outlier_detection(),
    }
    if discovery is None:
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = _load_assignment(upstream.name, upstream.endpoints)
    else:
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {
            "service_name": upstream.name,
            "eds_config": {
                "resource_api_version": "V3",
                "api_config_source": {
                    "api_type": "REST",
                    "transport_api_version": "V3",
                    "cluster_names": [discovery],
                    "refresh_delay": "1s",
                    "request_timeout": "1s",
                },
            },
        }
    return cluster


def _discovery_cluster(name: str, address: tuple[str, int]) -> dict[str, Any]:
    # STRICT_DNS: in containers the discovery service is a host name, on loopback an IP.
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": _load_assignment(name, (address,)),
    }


# Retry only what never reached an instance (connection refused or failed, stream refused),
# on another instance: safe even for non-idempotent RPCs, and it hides a dead instance in
# the second before health checks take it out.
RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": _T + "retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }
    ],
    "host_selection_retry_max_attempts": 3,
}


def _routes(services: tuple[Service, ...], edge: GatewaySettings) -> list[dict[str, Any]]:
    # HTTP paths match no route until the transcoder has turned them into gRPC paths, except
    # a method the path's bindings do not take: 405 (and CORS preflights, when on).
    routes = edge_policy.preflight_routes(services, edge)
    routes += bindings.method_not_allowed_routes(services)
    routes += edge_policy.read_routes(services, hardening.grpc_route_headers())
    routes += [
        {
            "match": {"prefix": f"/{name}/"},
            "route": {"cluster": cluster, "timeout": "15s", "retry_policy": RETRY_POLICY},
            **hardening.grpc_route_headers(),
        }
        for name, cluster in sorted(public_services(services).items())
    ]
    # Streams with no end (reflection, health Watch): the gateway's own reflection and
    # health answer for the whole API (the catalog).
    for service in services:
        for prefix in service.gateway_prefixes:
            routes.append(
                {
                    "match": {"prefix": prefix},
                    "route": {"cluster": service.slug, "timeout": "0s"},
                    **hardening.grpc_route_headers(),
                    "typed_per_filter_config": {
                        **request_checks.for_streams(),
                        **edge_policy.for_streams(),
                    },
                }
            )
    return routes


def render(
    *,
    listen: tuple[str, int],
    admin: tuple[str, int],
    upstreams: list[Upstream],
    descriptor: Path = DESCRIPTOR,
    discovery: tuple[str, int] | None = None,
    services: tuple[Service, ...] = SERVICES,
    issuer: str | None = None,
    audience: str | None = None,
    edge: GatewaySettings | None = None,
) -> dict[str, Any]:
    """The whole bootstrap config as a dict (dump it as YAML or JSON).

    Without `discovery` the upstreams' endpoints are static; with it (host, port of the
    discovery service) Envoy polls their live endpoints over REST EDS (ADR 0007). Routes
    and transcoded services come from `services` (the topology). JWTs are checked for
    `issuer` and `audience` (default: edge_auth.issuer_and_audience(); ADR 0041); `edge`
    (default: from LEAKY_GATEWAY_*) sets limits, CORS and the body size (ADR 0042).
    """
    if issuer is None or audience is None:
        issuer, audience = edge_auth.issuer_and_audience()
    edge = edge if edge is not None else edge_settings.load()
    http_filters = [
        edge_policy.body_limit_filter(edge),
        request_checks.request_checks_filter(),
        *edge_auth.request_filters(services, issuer=issuer, audience=audience),
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": {
                "@type": TRANSCODER,
                "proto_descriptor": str(descriptor),
                "services": sorted(public_services(services)),
                "convert_grpc_status": True,
                "request_validation_options": {
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": True,
                },
                "print_options": {
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "always_print_enums_as_ints": False,
                    "preserve_proto_field_names": False,
                },
            },
        },
        request_checks.after_transcoding_filter(bindings.query_refused_calls(services)),
        # After the transcoder: ext_authz, CORS and rate limits skip requests with no route,
        # and an HTTP/JSON request has one only once the transcoder has run. ext_authz comes
        # before the limits, which key on the identity headers it sets.
        *edge_auth.after_transcoding_filters(),
        *edge_policy.cors_filters(edge),
        *edge_limits.filters(edge, services),
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": ROUTER},
        },
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "request_id_extension": {"typed_config": {"@type": UUID_REQUEST_ID}},
        **hardening.client_address_settings(),
        "access_log": hardening.access_log(),
        "route_config": {
            "name": "leaky",
            "virtual_hosts": [
                {
                    "name": "leaky",
                    "domains": ["*"],
                    **hardening.virtual_host_headers(),
                    **edge_limits.virtual_host(edge, services),
                    **edge_policy.virtual_host(edge),
                    "routes": _routes(services, edge),
                }
            ],
        },
        "local_reply_config": edge_limits.with_local_replies(
            edge_auth.with_local_replies(hardening.local_reply_config())
        ),
        "http_filters": http_filters,
    }
    return {
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(u, "discovery" if discovery else None) for u in upstreams]
            + ([_discovery_cluster("discovery", discovery)] if discovery else [])
            + [edge_auth.jwks_cluster(listen)],
        },
        # xDS needs a node identity; harmless without it.
        "node": {"id": "leaky-gateway", "cluster": "leaky"},
    }


def eds_upstreams(services: tuple[Service, ...] = SERVICES) -> list[Upstream]:
    """One cluster per service, its endpoints fed by the discovery service."""
    return [Upstream(s.slug, ()) for s in services]


def dump(config: dict[str, Any]) -> str:
    """The config as YAML, keys in the order they were built."""
    return str(yaml.safe_dump(config, sort_keys=False))


COMPOSE_STATS_PORT = 9902  # deploy/prometheus.yml scrapes envoy:9902


def compose_yaml(services: tuple[Service, ...] = SERVICES) -> str:
    """The Envoy config compose.yaml mounts: EDS from the `discovery` container."""
    config = render(
        listen=("0.0.0.0", 8080),  # noqa: S104 (inside the container)
        admin=("127.0.0.1", 9901),  # the container's loopback: only the healthcheck reaches it
        upstreams=eds_upstreams(services),
        descriptor=Path("/etc/envoy/leaky.pb"),
        discovery=("discovery", 18000),
        services=services,
        edge=GatewaySettings(),  # the committed file: defaults, whatever the environment
    )
    # Prometheus (another container) reads the stats through a listener of their own.
    listener, cluster = edge_policy.stats_listener(COMPOSE_STATS_PORT, 9901)
    config["static_resources"]["listeners"].append(listener)
    config["static_resources"]["clusters"].append(cluster)
    return "# Generated by `leaky envoy-config --compose`; do not edit.\n" + dump(config)
