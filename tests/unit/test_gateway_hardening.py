"""The hardening holds in all three Envoy configs: embedded, native stack and compose."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from leaky_tokens.gateway import edge_auth
from leaky_tokens.gateway.bindings import _path_regex
from leaky_tokens.gateway.edge_policy import ADMIN_CLUSTER
from leaky_tokens.gateway.envoy_config import compose_yaml
from leaky_tokens.gateway.hardening import GRPC_CODE_OF_STATUS
from leaky_tokens.gateway.request_checks import QUERY_CHECK_FILTER
from leaky_tokens.mesh.plan import MeshPorts, envoy_yaml
from leaky_tokens.stack.edge import Envoy

CONFIGS: dict[str, Callable[[], str]] = {
    "embedded": lambda: envoy_yaml(MeshPorts()),
    "stack": lambda: Envoy().config(),
    "compose": compose_yaml,
}


@pytest.fixture(params=sorted(CONFIGS))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(yaml.safe_load(CONFIGS[request.param]()))


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(hcm(config)["route_config"]["virtual_hosts"][0]["routes"])


def test_no_cluster_can_lose_its_last_host_to_outlier_detection(config: dict[str, Any]) -> None:
    # The discovery cluster, the JWKS loop back to Envoy itself and the admin serve no service.
    skip = ("discovery", edge_auth.JWKS_CLUSTER, ADMIN_CLUSTER)
    services = [c for c in config["static_resources"]["clusters"] if c["name"] not in skip]
    assert services
    for cluster in services:
        outlier = cluster["outlier_detection"]
        assert outlier["max_ejection_percent"] <= 50, cluster["name"]
        assert not outlier.get("always_eject_one_host", False)
        assert outlier["split_external_local_origin_errors"] is True
        # 5xx such as UNIMPLEMENTED (501) follow from what a client asked: never eject on them.
        assert outlier["enforcing_consecutive_5xx"] == 0
        assert outlier["consecutive_local_origin_failure"] > 1


def test_every_grpc_route_adds_te_and_drops_client_deadlines_and_forwarded_for(
    config: dict[str, Any],
) -> None:
    upstream = [r for r in routes(config) if "route" in r]
    assert upstream
    for route in upstream:
        added = {h["header"]["key"]: h["header"]["value"] for h in route["request_headers_to_add"]}
        assert added["te"] == "trailers"
        assert {"grpc-timeout", "x-forwarded-for"} <= set(route["request_headers_to_remove"])


def test_client_address_comes_from_the_connection(config: dict[str, Any]) -> None:
    manager = hcm(config)
    assert manager["use_remote_address"] is True
    assert manager["xff_num_trusted_hops"] == 0
    assert manager["internal_address_config"] == {"cidr_ranges": []}
    # Envoy counts loopback peers as internal anyway: the address services read is a header
    # Envoy writes from the peer on every route (the virtual host), over a client's own.
    (host,) = manager["route_config"]["virtual_hosts"]
    (added,) = [
        h for h in host["request_headers_to_add"] if h["header"]["key"] == "x-leaky-client-address"
    ]
    assert added["header"]["value"] == "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert added["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"
    assert "x-envoy-external-address" in host["request_headers_to_remove"]


def test_whole_body_calls_refuse_query_strings_after_the_transcoder(
    config: dict[str, Any],
) -> None:
    names = [f["name"] for f in hcm(config)["http_filters"]]
    transcoder = names.index("envoy.filters.http.grpc_json_transcoder")
    assert names.index(QUERY_CHECK_FILTER) == transcoder + 1
    (check,) = [f for f in hcm(config)["http_filters"] if f["name"] == QUERY_CHECK_FILTER]
    script = check["typed_config"]["default_source_code"]["inline_string"]
    refused = set(re.findall(r'\["([A-Z]+ /[^"]+)"\] = true', script))
    for call in (
        "POST /leaky.auth.v1.AuthService/Login",
        "POST /leaky.auth.v1.AuthService/Register",
        "POST /leaky.auth.v1.AuthService/CreateApiKey",
        "POST /leaky.token.v1.TokenService/Consume",
    ):
        assert call in refused, call
    # GET bindings take their fields from the query: never refused.
    assert not any(call.startswith("GET ") for call in refused)
    assert "POST /leaky.auth.v1.AuthService/ListApiKeys" not in refused


def test_methods_a_path_does_not_take_get_405_with_allow(config: dict[str, Any]) -> None:
    refused = {
        r["match"]["safe_regex"]["regex"]: r
        for r in routes(config)
        if r.get("direct_response", {}).get("status") == 405
    }

    def route_for(path: str) -> dict[str, Any]:
        (found,) = [r for regex, r in refused.items() if re.fullmatch(regex, path)]
        return found

    for path, allow in (
        ("/api/v1/auth/login", "POST"),
        ("/api/v1/auth/login/", "POST"),
        ("/api/v1/tokens/status", "GET, HEAD"),
        ("/api/v1/auth/orgs/7/members", "GET, HEAD, POST"),
        ("/api/v1/auth/orgs/7/members/u1", "DELETE"),
    ):
        route = route_for(path)
        (header,) = route["response_headers_to_add"]
        assert header["header"] == {"key": "allow", "value": allow}, path
        (method,) = route["match"]["headers"]
        assert method["invert_match"] is True
        allowed = method["string_match"]["safe_regex"]["regex"].split("|")
        assert set(allowed) == set(allow.split(", "))
        # The transcoder would answer 404 instead: it is off on these routes.
        config_of = route["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"]
        assert config_of["disabled"] is True
    members = _path_regex("/api/v1/auth/orgs/{org_id}/members")
    assert re.fullmatch(members, "/api/v1/auth/orgs/7/members")
    assert not re.fullmatch(members, "/api/v1/auth/orgs/7/x")
    # Native gRPC paths never meet a 405 route.
    assert not any(re.fullmatch(r, "/leaky.auth.v1.AuthService/Login") for r in refused)


def test_local_replies_carry_grpc_codes_and_the_access_log_no_secrets(
    config: dict[str, Any],
) -> None:
    manager = hcm(config)
    mappers = manager["local_reply_config"]["mappers"]
    by_status = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m
        for m in mappers
        if "status_code_filter" in m["filter"]  # the edge's own refusals first (ADR 0042)
    }
    assert by_status[400]["body_format_override"]["json_format"]["code"] == 3
    assert by_status[431]["body_format_override"]["json_format"]["code"] == 3
    assert by_status[404]["body_format_override"]["json_format"]["code"] == 5
    assert GRPC_CODE_OF_STATUS[503] == 14
    fields = manager["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert {"method", "path", "status", "request_id"} <= set(fields)
    logged = " ".join(fields.values()).lower()
    assert "authorization" not in logged
    assert "x-api-key" not in logged
    assert fields["path"].startswith("%PATH(NQ")  # never the query string
    assert fields["client_address"] == "%REQ(X-LEAKY-CLIENT-ADDRESS)%"
