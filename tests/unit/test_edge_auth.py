"""Authentication at the edge (ADR 0041): the API-key gate's bounds and the rendered filters."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
import yaml

from leaky_tokens.analytics.servicer import PUBLIC_METHODS as ANALYTICS_PUBLIC
from leaky_tokens.auth import edge_check
from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.domain.api_key_gate import ApiKeyGate
from leaky_tokens.auth.domain.service import AuthApp
from leaky_tokens.auth.servicer import PUBLIC_METHODS as AUTH_PUBLIC
from leaky_tokens.gateway import edge_auth
from leaky_tokens.gateway.envoy_config import compose_yaml
from leaky_tokens.mesh.plan import MeshPorts, envoy_yaml
from leaky_tokens.runtime.errors import UnauthenticatedError
from leaky_tokens.runtime.identity import Caller
from leaky_tokens.runtime.server import ServerSettings
from leaky_tokens.stack.edge import Envoy
from leaky_tokens.token.servicer import PUBLIC_METHODS as TOKEN_PUBLIC
from tests.support.fakes import FakeClock, FakeTokenCrypto

# -- the gate -------------------------------------------------------------------------------


class Ticks:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def issued(app: AuthApp, name: str = "alice") -> tuple[str, str, str]:
    session = await app.register(name, f"{name}@example.com", "correct horse")
    me = Caller(session.user.id, frozenset({"USER"}), frozenset())
    key = await app.create_api_key(me, session.user.id, "ci", None)
    return session.user.id, key.key.id, key.secret


def gate_for(app: AuthApp, clock: FakeClock, ticks: Ticks, cache: float = 0.5) -> ApiKeyGate:
    return ApiKeyGate(
        app,
        cache_seconds=cache,
        token_ttl=timedelta(seconds=60),
        monotonic=ticks,
        wall=lambda: clock.now().timestamp(),
    )


async def test_a_revoked_key_is_refused_once_the_cache_bound_has_passed(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    ticks = Ticks()
    gate = gate_for(auth_app, clock, ticks)
    user_id, key_id, secret = await issued(auth_app)
    assert (await gate.admit(secret)).owner.key.id == key_id
    await auth_app.revoke_api_key(
        Caller(user_id, frozenset({"USER"}), frozenset()), user_id, key_id
    )
    ticks.now += 0.49  # inside the bound the cached answer may still stand
    await gate.admit(secret)
    ticks.now += 0.01  # at the bound (0.5 s after the check) it is asked again: refused
    with pytest.raises(UnauthenticatedError):
        await gate.admit(secret)


async def test_refusals_are_bounded_too_and_the_secret_is_not_kept(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    ticks = Ticks()
    gate = gate_for(auth_app, clock, ticks)
    for _ in range(2):
        with pytest.raises(UnauthenticatedError) as info:
            await gate.admit("lt_made-up")
        assert info.value.reason == "INVALID_API_KEY"
    assert all(isinstance(k, bytes) and len(k) == 32 for k in gate._entries)


def test_the_cache_cannot_be_set_to_a_second_or_more(auth_app: AuthApp) -> None:
    for seconds in (1.0, 5.0, -0.1):
        with pytest.raises(ValueError, match="below one second"):
            ApiKeyGate(auth_app, cache_seconds=seconds)


async def test_the_mesh_token_is_reused_while_half_its_life_is_left(
    auth_app: AuthApp, clock: FakeClock, crypto: FakeTokenCrypto, memory_store: InMemoryAuthStore
) -> None:
    ticks = Ticks()
    gate = gate_for(auth_app, clock, ticks)
    user_id, key_id, secret = await issued(auth_app)
    first = await gate.admit(secret)
    ticks.now += 1
    clock.advance(seconds=20)
    assert (await gate.admit(secret)).token == first.token  # re-checked, same token
    ticks.now += 1
    clock.advance(seconds=15)  # 35 s old: less than half of 60 s left
    renewed = await gate.admit(secret)
    assert renewed.token != first.token
    keys = await memory_store.list_signing_keys(5)
    claims = crypto.decode(renewed.token, keys, "leaky-tokens#mesh")
    assert (claims["sub"], claims["akid"], claims["amr"]) == (user_id, key_id, ["api_key"])
    assert claims["exp"] - claims["iat"] == 60


async def test_a_changed_role_gets_a_new_mesh_token_at_once(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    ticks = Ticks()
    gate = gate_for(auth_app, clock, ticks)
    _, _, secret = await issued(auth_app)
    first = await gate.admit(secret)
    await auth_app.grant_role("alice", "ADMIN")
    ticks.now += 1
    renewed = await gate.admit(secret)
    assert renewed.token != first.token
    assert "ADMIN" in jwt.decode(renewed.token, options={"verify_signature": False})["roles"]


async def test_the_mesh_token_never_outlives_its_key(auth_app: AuthApp, clock: FakeClock) -> None:
    session = await auth_app.register("alice", "alice@example.com", "correct horse")
    me = Caller(session.user.id, frozenset({"USER"}), frozenset())
    expiry = clock.now() + timedelta(seconds=10)
    key = await auth_app.create_api_key(me, session.user.id, "short", expiry)
    identity = await gate_for(auth_app, clock, Ticks()).admit(key.secret)
    assert identity.token_expires == expiry.timestamp()


# -- the rendered filters -------------------------------------------------------------------

CONFIGS: dict[str, Callable[[], str]] = {
    "embedded": lambda: envoy_yaml(MeshPorts.from_bases()),
    "stack": lambda: Envoy().config(),
    "compose": compose_yaml,
}


@pytest.fixture(params=sorted(CONFIGS))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIGS[request.param]())
    return loaded


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def by_name(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in http_filters(config) if f["name"] == name]
    typed: dict[str, Any] = found["typed_config"]
    return typed


def test_the_public_list_is_the_services_public_rpcs() -> None:
    assert set(edge_auth.PUBLIC_GRPC_PATHS) == AUTH_PUBLIC | TOKEN_PUBLIC | ANALYTICS_PUBLIC


def test_edge_defaults_are_the_services_jwt_defaults() -> None:
    fields = ServerSettings.__dataclass_fields__
    assert fields["jwt_issuer"].default == edge_auth.DEFAULT_ISSUER
    assert fields["jwt_audience"].default == edge_auth.DEFAULT_AUDIENCE


def test_filters_run_in_the_agreed_order(config: dict[str, Any]) -> None:
    names = [f["name"] for f in http_filters(config)]
    order = [
        "envoy.filters.http.lua",  # hardening, first
        edge_auth.JWT_AUTHN_FILTER,
        edge_auth.IDENTITY_FILTER,
        "envoy.filters.http.grpc_json_transcoder",
        edge_auth.EXT_AUTHZ_FILTER,  # after it: ext_authz skips requests without a route
        "envoy.filters.http.router",
    ]
    assert [n for n in names if n in order] == order


def test_jwt_authn_checks_every_path_but_the_public_ones(config: dict[str, Any]) -> None:
    jwt_authn = by_name(config, edge_auth.JWT_AUTHN_FILTER)
    rules = jwt_authn["rules"]
    *public, catch_all = rules
    assert all("requires" not in r for r in public)
    assert catch_all["match"] == {"prefix": "/"}
    requirements = catch_all["requires"]["requires_any"]["requirements"]
    assert requirements == [{"provider_name": edge_auth.PROVIDER}, {"allow_missing": {}}]
    paths = {r["match"].get("path") for r in public}
    assert "/leaky.auth.v1.AuthService/Login" in paths
    assert "/leaky.token.v1.TokenService/Consume" not in paths
    regexes = [r["match"]["safe_regex"]["regex"] for r in public if "safe_regex" in r["match"]]

    def public_http(path: str) -> bool:
        return any(re.fullmatch(regex, path) for regex in regexes)

    for http_path in ("/api/v1/auth/login", "/api/v1/auth/register/", "/oauth2/jwks"):
        assert public_http(http_path), http_path
    for http_path in ("/api/v1/tokens/consume", "/api/v1/auth/api-keys", "/api/v1/tokens/quota"):
        assert not public_http(http_path), http_path
    provider = jwt_authn["providers"][edge_auth.PROVIDER]
    assert provider["audiences"] == ["leaky-tokens"]  # never the mesh audience
    assert provider["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert provider["forward"] is True
    remote = provider["remote_jwks"]
    assert remote["http_uri"]["cluster"] == edge_auth.JWKS_CLUSTER
    assert remote["async_fetch"]["fast_listener"] is True


def test_the_jwks_cluster_is_this_envoys_own_listener(config: dict[str, Any]) -> None:
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    (cluster,) = [
        c for c in config["static_resources"]["clusters"] if c["name"] == edge_auth.JWKS_CLUSTER
    ]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    address = endpoint["address"]["socket_address"]
    assert address["port_value"] == listener["port_value"]
    assert address["address"] == "127.0.0.1"


def test_ext_authz_asks_auth_only_about_api_keys_and_fails_closed(config: dict[str, Any]) -> None:
    ext_authz = by_name(config, edge_auth.EXT_AUTHZ_FILTER)
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "auth"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert ext_authz["allowed_headers"] == {"patterns": [{"exact": "x-api-key"}]}
    enabled = ext_authz["filter_enabled_metadata"]
    assert (enabled["filter"], enabled["path"]) == ("leaky", [{"key": "api_key"}])


def test_the_identity_filter_strips_every_client_identity_header(config: dict[str, Any]) -> None:
    script = by_name(config, edge_auth.IDENTITY_FILTER)["default_source_code"]["inline_string"]
    assert 'string.sub(key, 1, 8) == "x-leaky-"' in script
    # Stripped before anything is set from the verified token.
    assert script.index("headers:remove") < script.index('headers:add("x-leaky-user-id"')
    assert 'meta:get("envoy.filters.http.jwt_authn")' in script
    assert 'jwt["jwt_payload"]' in script
    # Public RPCs (which ignore credentials) never send their API key to Check.
    for path in ('"/api/v1/auth/login"', '"/leaky.auth.v1.AuthService/ValidateApiKey"'):
        assert f"[{path}] = true" in script
    assert '"/api/v1/tokens/consume"' not in script
    assert '"/grpc.reflection."' in script


def test_the_edge_expects_the_auth_services_issuer_and_audience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEAKY_AUTH_JWT_ISSUER", "https://auth.example")
    monkeypatch.setenv("LEAKY_AUTH_JWT_AUDIENCE", "example-api")
    config: dict[str, Any] = yaml.safe_load(compose_yaml())
    provider = by_name(config, edge_auth.JWT_AUTHN_FILTER)["providers"][edge_auth.PROVIDER]
    assert (provider["issuer"], provider["audiences"]) == ("https://auth.example", ["example-api"])


def test_a_verified_token_drops_a_key_sent_beside_it(config: dict[str, Any]) -> None:
    script = by_name(config, edge_auth.IDENTITY_FILTER)["default_source_code"]["inline_string"]
    jwt_branch = script[script.index('headers:add("x-leaky-auth", "jwt")') : script.index("elseif")]
    assert 'headers:remove("x-api-key")' in jwt_branch


def test_check_refusals_pass_the_local_reply_unchanged(config: dict[str, Any]) -> None:
    # ADR 0048: the 401 of a denial carries Check's google.rpc.Status body as it is; an
    # ext_authz error (flagged UAEX too) keeps the generic mapping (503, UNAVAILABLE).
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    mappers = hcm["local_reply_config"]["mappers"]
    (denied,) = [m for m in mappers if "and_filter" in m["filter"]]
    flags, status = denied["filter"]["and_filter"]["filters"]
    assert flags == {"response_flag_filter": {"flags": ["UAEX"]}}
    assert status["status_code_filter"]["comparison"]["value"]["default_value"] == 401
    assert denied["body_format_override"] == {
        "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
        "content_type": "application/json",
    }
    # Before the mappers by status alone (mappers apply in order, the first match wins).
    plain_401 = next(
        i
        for i, m in enumerate(mappers)
        if m["filter"].get("status_code_filter", {}).get("comparison", {}).get("value", {})
        == {"default_value": 401, "runtime_key": "leaky.none"}
    )
    assert mappers.index(denied) < plain_401


def test_native_grpc_api_key_calls_are_marked_for_check(config: dict[str, Any]) -> None:
    script = by_name(config, edge_auth.IDENTITY_FILTER)["default_source_code"]["inline_string"]
    key_branch = script[script.index("elseif") :]
    assert f'meta:set("leaky", "{edge_check.GRPC_CALLER_KEY}", "1")' in key_branch
    assert edge_check.GRPC_CALLER_KEY == edge_auth.GRPC_CALLER_KEY
    ext_authz = by_name(config, edge_auth.EXT_AUTHZ_FILTER)
    assert ext_authz["metadata_context_namespaces"] == [edge_check.METADATA_NAMESPACE]
