"""The hardening holds in all three Envoy configs: embedded, native stack and compose."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from leaky_tokens.gateway.envoy_config import compose_yaml
from leaky_tokens.gateway.hardening import GRPC_CODE_OF_STATUS, _path_regex
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
    services = [c for c in config["static_resources"]["clusters"] if c["name"] != "discovery"]
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


def test_whole_body_routes_refuse_query_strings(config: dict[str, Any]) -> None:
    refused = {
        (r["match"]["headers"][0]["string_match"]["exact"], r["match"]["safe_regex"]["regex"])
        for r in routes(config)
        if "direct_response" in r
    }
    paths = {regex for _, regex in refused}
    for path in ("/api/v1/auth/login", "/api/v1/auth/register", "/api/v1/tokens/consume"):
        assert any(re.fullmatch(regex, path) for regex in paths), path
    # GET routes take their fields from the query: never refused.
    assert all(method != "GET" for method, _ in refused)
    assert re.fullmatch(
        _path_regex("/api/v1/auth/orgs/{org_id}/members"), "/api/v1/auth/orgs/7/members"
    )
    assert not re.fullmatch(
        _path_regex("/api/v1/auth/orgs/{org_id}/members"), "/api/v1/auth/orgs/7/x"
    )


def test_local_replies_carry_grpc_codes_and_the_access_log_no_secrets(
    config: dict[str, Any],
) -> None:
    manager = hcm(config)
    mappers = manager["local_reply_config"]["mappers"]
    by_status = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m
        for m in mappers
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
