"""The edge policy in the rendered Envoy configs (ADR 0042): rate limits, body size, reads,
CORS, admin on loopback; and the shipped token policy has a limit for every descriptor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from leaky_tokens.gateway import edge_limits, edge_policy
from leaky_tokens.gateway.bindings import http_bindings
from leaky_tokens.gateway.edge_settings import GatewaySettings, load
from leaky_tokens.gateway.envoy_config import compose_yaml, render
from leaky_tokens.mesh.plan import MeshPorts, envoy_yaml
from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.stack.edge import Envoy
from leaky_tokens.token.adapters.config_files import load_policy
from leaky_tokens.token.domain.rls_decision import Descriptor, plan
from leaky_tokens.token.rls_wiring import SHIPPED_POLICY
from leaky_tokens.topology import SERVICES

CONFIGS: dict[str, Callable[[], str]] = {
    "embedded": lambda: envoy_yaml(MeshPorts()),
    "stack": lambda: Envoy().config(),
    "compose": compose_yaml,
}
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
ROUTER = "envoy.filters.http.router"
WRITES = ("Consume", "Purchase", "Reserve", "Settle", "Release", "Login", "Register")


@pytest.fixture(params=sorted(CONFIGS))
def config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("RATELIMIT", "CORS_ALLOWED_ORIGINS", "MAX_REQUEST_BYTES"):
        monkeypatch.delenv(f"LEAKY_GATEWAY_{name}", raising=False)
    text = CONFIGS[request.param]()
    return dict(yaml.safe_load(text))


def rendered(edge: GatewaySettings) -> dict[str, Any]:
    return render(listen=("127.0.0.1", 8080), admin=("127.0.0.1", 9901), upstreams=[], edge=edge)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def filter_names(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in hcm(config)["http_filters"]]


def host(config: dict[str, Any]) -> dict[str, Any]:
    return dict(hcm(config)["route_config"]["virtual_hosts"][0])


def test_the_ratelimit_filter_asks_the_ratelimit_deployment_after_the_transcoder(
    config: dict[str, Any],
) -> None:
    names = filter_names(config)
    # Before the transcoder an HTTP/JSON request has no route, and the filter needs one.
    assert names.index(TRANSCODER) < names.index(edge_limits.RATELIMIT_FILTER)
    assert names.index(edge_limits.RATELIMIT_FILTER) == names.index(ROUTER) - 1
    # The header filter sits before it, so responses reach it after the ratelimit filter.
    assert names.index(edge_limits.HEADERS_FILTER) == names.index(edge_limits.RATELIMIT_FILTER) - 1
    (found,) = [f for f in hcm(config)["http_filters"] if f["name"] == edge_limits.RATELIMIT_FILTER]
    typed = found["typed_config"]
    assert typed["domain"] == "leaky"
    assert typed["failure_mode_deny"] is False
    assert typed["rate_limited_as_resource_exhausted"] is True
    assert "enable_x_ratelimit_headers" not in typed  # the RLS sends them: no second set
    cluster = typed["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    # A deployment of its own (ADR 0047), not the token process that serves Consume.
    assert cluster == "ratelimit"
    assert cluster in {c["name"] for c in config["static_resources"]["clusters"]}


def test_descriptors_are_per_method_and_address_and_per_identity_header(
    config: dict[str, Any],
) -> None:
    entries = host(config)["rate_limits"]
    shapes = []
    for entry in entries:
        first, second = entry["actions"]
        assert first == {"request_headers": {"header_name": ":path", "descriptor_key": "method"}}
        shapes.append(second)
    assert {"remote_address": {}} in shapes
    headers = {
        s["request_headers"]["header_name"]: s["request_headers"]["descriptor_key"]
        for s in shapes
        if "request_headers" in s
    }
    assert headers == {"x-leaky-user-id": "user_id", "x-leaky-api-key-id": "api_key_id"}
    # No route has rate_limits of its own, which would hide the virtual host's.
    assert all("rate_limits" not in r.get("route", {}) for r in host(config)["routes"])


def test_the_shipped_policy_limits_every_descriptor_envoy_sends() -> None:
    limits = load_policy(SHIPPED_POLICY).rate_limits
    methods = sorted({b.grpc_path for b in http_bindings(SERVICES)})
    for method in methods:
        sent = [
            Descriptor((("method", method), ("remote_address", "192.0.2.1"))),
            Descriptor((("method", method), ("user_id", "u-1"))),
            Descriptor((("method", method), ("api_key_id", "k-1"))),
        ]
        planned = plan(limits, "leaky", sent)
        address = planned[0].limit
        assert address is not None, method
        assert address.requests_per_unit > 0, method
        if method.endswith(("/Login", "/Register")):
            assert address.name.startswith("edge-"), method
            assert address.requests_per_unit <= 20  # a flood stops at the edge
        else:
            assert [p.limit.name for p in planned if p.limit] == [
                "edge-address",
                "edge-user",
                "edge-api-key",
            ], method


def test_edge_limits_can_be_turned_off() -> None:
    config = rendered(GatewaySettings(ratelimit=False))
    assert edge_limits.RATELIMIT_FILTER not in filter_names(config)
    assert edge_limits.HEADERS_FILTER not in filter_names(config)
    assert "rate_limits" not in host(config)


def test_a_topology_without_the_ratelimit_deployment_has_no_edge_limits() -> None:
    services = tuple(s for s in SERVICES if s.slug != "ratelimit")
    config = render(
        listen=("127.0.0.1", 8080),
        admin=("127.0.0.1", 9901),
        upstreams=[],
        services=services,
        edge=GatewaySettings(),
    )
    assert edge_limits.RATELIMIT_FILTER not in filter_names(config)
    assert "rate_limits" not in host(config)


def test_failure_mode_deny_answers_503() -> None:
    config = rendered(GatewaySettings(ratelimit_failure_mode_deny=True, ratelimit_domain="edge"))
    (found,) = [f for f in hcm(config)["http_filters"] if f["name"] == edge_limits.RATELIMIT_FILTER]
    assert found["typed_config"]["failure_mode_deny"] is True
    assert found["typed_config"]["status_on_error"] == {"code": "ServiceUnavailable"}
    assert found["typed_config"]["domain"] == "edge"


def test_the_edge_429_has_the_status_shape_with_a_reason(config: dict[str, Any]) -> None:
    first = hcm(config)["local_reply_config"]["mappers"][0]
    assert first["filter"] == {"response_flag_filter": {"flags": ["RL"]}}
    body = first["body_format_override"]["json_format"]
    assert body["code"] == 8
    assert body["details"][0]["reason"] == "EDGE_RATE_LIMITED"


def test_bodies_are_bounded_first_except_on_streams(config: dict[str, Any]) -> None:
    assert filter_names(config)[0] == edge_policy.BUFFER_FILTER
    first = hcm(config)["http_filters"][0]["typed_config"]
    assert first["max_request_bytes"] == 1024 * 1024
    streams = [r for r in host(config)["routes"] if r.get("route", {}).get("timeout") == "0s"]
    assert streams
    for route in streams:
        assert route["typed_per_filter_config"][edge_policy.BUFFER_FILTER]["disabled"] is True


def test_only_reads_are_retried_on_unavailable_and_reset(config: dict[str, Any]) -> None:
    routes = [r for r in host(config)["routes"] if "route" in r]
    exact = {r["match"]["path"]: r["route"] for r in routes if "path" in r["match"]}
    reads = set(edge_policy.read_calls(SERVICES))
    assert set(exact) == reads
    assert "/leaky.token.v1.TokenService/GetQuota" in reads
    assert "/leaky.analytics.v1.AnalyticsService/GetReport" in reads
    for path in reads:
        verbs = {b.method for b in http_bindings(SERVICES) if b.grpc_path == path}
        assert verbs == {"GET"}, path
        assert "unavailable" in exact[path]["retry_policy"]["retry_on"]
        assert exact[path]["retry_policy"]["per_try_timeout"]
    assert not [p for p in reads if p.rsplit("/", 1)[1] in WRITES]
    # Everything else (Consume, Purchase, ...) goes by prefix: retried only before it reached
    # an instance.
    for route in routes:
        if "prefix" in route["match"] and "retry_policy" in route["route"]:
            assert route["route"]["retry_policy"]["retry_on"] == "connect-failure,refused-stream"


def test_the_prefix_routes_come_after_the_exact_read_routes(config: dict[str, Any]) -> None:
    kinds = [("path" in r["match"], "prefix" in r["match"]) for r in host(config)["routes"]]
    last_exact = max(i for i, (exact, _) in enumerate(kinds) if exact)
    first_prefix = min(i for i, (_, prefix) in enumerate(kinds) if prefix)
    assert last_exact < first_prefix


def test_cors_is_off_by_default(config: dict[str, Any]) -> None:
    assert edge_policy.CORS_FILTER not in filter_names(config)
    assert edge_policy.CORS_FILTER not in host(config).get("typed_per_filter_config", {})


def test_cors_with_origins_after_the_transcoder_and_preflight_routes_first() -> None:
    config = rendered(GatewaySettings(cors_allowed_origins=("https://app.example.com", "*")))
    names = filter_names(config)
    assert names.index(TRANSCODER) < names.index(edge_policy.CORS_FILTER)
    assert names.index(edge_policy.CORS_FILTER) < names.index(edge_limits.RATELIMIT_FILTER)
    policy = host(config)["typed_per_filter_config"][edge_policy.CORS_FILTER]
    assert policy["allow_origin_string_match"] == [
        {"exact": "https://app.example.com"},
        {"safe_regex": {"regex": ".*"}},
    ]
    assert policy["forward_not_matching_preflights"] is False
    assert "ratelimit" in policy["expose_headers"]
    routes = host(config)["routes"]
    preflights = [i for i, r in enumerate(routes) if _is_preflight(r)]
    templates = {b.template for b in http_bindings(SERVICES)}
    assert len(preflights) == len(templates)
    assert preflights == list(range(len(templates)))  # before the 405 routes


def _is_preflight(route: dict[str, Any]) -> bool:
    return any(
        h.get("string_match") == {"exact": "OPTIONS"} for h in route["match"].get("headers", [])
    )


def test_admin_is_on_loopback_in_every_config(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_compose_serves_only_stats_and_ready_beside_the_gateway() -> None:
    config = yaml.safe_load(compose_yaml())
    (stats,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "stats"]
    manager = stats["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    forwarded = {r["match"]["path"] for r in routes if "route" in r}
    assert forwarded == {"/stats/prometheus", "/ready"}
    assert routes[-1]["direct_response"]["status"] == 404
    scraped = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"
    assert f"envoy:{stats['address']['socket_address']['port_value']}" in scraped.read_text()


def test_the_compose_file_takes_defaults_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEAKY_GATEWAY_CORS_ALLOWED_ORIGINS", "https://x.example.com")
    monkeypatch.setenv("LEAKY_GATEWAY_RATELIMIT", "false")
    assert "x.example.com" not in compose_yaml()
    assert edge_limits.RATELIMIT_FILTER in compose_yaml()
    assert load().cors_allowed_origins == ("https://x.example.com",)


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ({"ratelimit_domain": ""}, "ratelimit_domain"),
        ({"ratelimit_timeout_ms": 0}, "ratelimit_timeout_ms"),
        ({"max_request_bytes": 10}, "max_request_bytes"),
        ({"cors_allowed_origins": ("app.example.com",)}, "cors_allowed_origins"),
        ({"cors_max_age_seconds": -1}, "cors_max_age_seconds"),
    ],
)
def test_bad_gateway_settings_are_named(values: dict[str, Any], bad: str) -> None:
    with pytest.raises(SettingsError, match=bad):
        GatewaySettings(**values)
