"""Authentication at the front door: jwt_authn, the identity Lua filter and ext_authz (ADR 0041).

Filter order: hardening Lua -> jwt_authn -> identity Lua -> transcoder -> query-check Lua ->
ext_authz -> ratelimit -> router. ext_authz sits after the transcoder: Envoy's
ext_authz skips requests that match no route, and before the transcoder an HTTP/JSON path
matches none (the routes are gRPC paths).

- jwt_authn verifies `authorization: Bearer <jwt>` against the auth service's JWKS on every
  protected path (a missing token is let through: the API key may decide, and without either
  the service answers UNAUTHENTICATED itself); a bad, expired, tampered or foreign token is
  refused here with 401. Public paths (PUBLIC_GRPC_PATHS and their HTTP bindings) are not
  checked at all: a client that always sends its expired token can still log in (ADR 0005).
- The identity filter removes every client-sent `x-leaky-*` header, then writes
  `x-leaky-user-id` and `x-leaky-auth: jwt` from a verified token's payload, or marks the
  request for ext_authz when it carries an X-Api-Key and no verified token.
- ext_authz runs only on requests so marked: the auth service's Authorization/Check resolves
  the key (revocation effective within a second) and answers with a short-lived mesh token
  in `authorization`, plus `x-leaky-user-id`, `x-leaky-api-key-id` and `x-leaky-auth:
  api_key`, so the services keep verifying one thing: a JWT signed by auth.
"""

from __future__ import annotations

import os
from typing import Any

from leaky_tokens.gateway import bindings
from leaky_tokens.topology import ISSUER, Service

_T = "type.googleapis.com/envoy.extensions.filters.http."
JWT_AUTHN_TYPE = _T + "jwt_authn.v3.JwtAuthentication"
EXT_AUTHZ_TYPE = _T + "ext_authz.v3.ExtAuthz"
LUA_TYPE = _T + "lua.v3.Lua"

JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
IDENTITY_FILTER = "leaky.identity"
PROVIDER = "leaky"
JWT_PAYLOAD = "jwt_payload"  # key of the verified payload in jwt_authn's dynamic metadata
JWKS_CLUSTER = "leaky_jwks"
JWKS_PATH = "/oauth2/jwks"
# Envoy 1.40's jwt_authn cannot refetch on an unknown kid: the set is refetched in the
# background this often, so a rotated key verifies at the edge within this bound.
JWKS_CACHE_SECONDS = 5
# Envoy's counter of successful JWKS fetches (`leaky up` waits for the first one).
JWKS_FETCHED_STAT = "jwt_authn.jwks_fetch_success"
# The services' JwtVerifier leeway (runtime/jwt_verifier.py): the edge is no stricter.
CLOCK_SKEW_SECONDS = 30

# The services' LEAKY_<SVC>_JWT_ISSUER / _JWT_AUDIENCE defaults (runtime/server.py).
DEFAULT_ISSUER = "leaky-tokens-auth"
DEFAULT_AUDIENCE = "leaky-tokens"


def issuer_and_audience() -> tuple[str, str]:
    """What the edge's jwt_authn expects: the auth service's LEAKY_AUTH_JWT_ISSUER and
    _JWT_AUDIENCE where set when the config is rendered, else the defaults."""
    return (
        os.environ.get("LEAKY_AUTH_JWT_ISSUER") or DEFAULT_ISSUER,
        os.environ.get("LEAKY_AUTH_JWT_AUDIENCE") or DEFAULT_AUDIENCE,
    )


IDENTITY_PREFIX = "x-leaky-"
USER_ID_HEADER = "x-leaky-user-id"
API_KEY_ID_HEADER = "x-leaky-api-key-id"
AUTH_HEADER = "x-leaky-auth"
API_KEY_HEADER = "x-api-key"
# Dynamic metadata ("leaky" namespace) marking a native gRPC API-key call; ext_authz sends the
# namespace to Check (auth/edge_check.py reads the same key), which answers it in gRPC's shape.
GRPC_CALLER_KEY = "api_key_grpc"

# ADR 0005's credential-free RPCs (the servicers' PUBLIC_METHODS; a unit test keeps them
# equal). The gateway's streams (health, reflection) are public too.
PUBLIC_GRPC_PATHS = (
    "/leaky.auth.v1.AuthService/Register",
    "/leaky.auth.v1.AuthService/Login",
    "/leaky.auth.v1.AuthService/ValidateApiKey",
    "/leaky.auth.v1.AuthService/GetJwks",
    "/leaky.token.v1.TokenService/GetStatus",
    "/leaky.analytics.v1.AnalyticsService/GetHealth",
)


def public_rules(services: tuple[Service, ...]) -> list[dict[str, Any]]:
    """jwt_authn rules with no requirement: every public RPC by gRPC path and HTTP binding.

    Route matches ignore the query string; trailing slashes are matched as the transcoder
    ignores them. Listed before the catch-all, so they win.
    """
    rules: list[dict[str, Any]] = [{"match": {"path": path}} for path in PUBLIC_GRPC_PATHS]
    templates = sorted(
        {b.template for b in bindings.http_bindings(services) if b.grpc_path in PUBLIC_GRPC_PATHS}
    )
    rules += [
        {"match": {"safe_regex": {"regex": bindings._path_regex(t) + "/*"}}} for t in templates
    ]
    prefixes = sorted({p for s in services for p in s.gateway_prefixes})
    rules += [{"match": {"prefix": p}} for p in prefixes]
    return rules


def jwt_authn_filter(
    services: tuple[Service, ...], *, issuer: str, audience: str
) -> dict[str, Any]:
    """Verify bearer tokens at the edge; JWKS from the auth service through our own listener."""
    provider = {
        "issuer": issuer,
        "audiences": [audience],  # never the mesh audience: mesh tokens stay inside
        "remote_jwks": {
            # GetJwks speaks gRPC only: the transcoder of this very listener serves its JSON.
            "http_uri": {
                "uri": "http://jwks.leaky" + JWKS_PATH,
                "cluster": JWKS_CLUSTER,
                "timeout": "1s",
            },
            "cache_duration": f"{JWKS_CACHE_SECONDS}s",
            # Fetched in the background on the main thread; the listener must not wait for
            # it, since the fetch goes through the listener itself.
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
        },
        # Only the header: no access_token query parameter (query strings reach logs).
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": True,  # the services verify it again (ADR 0005)
        "payload_in_metadata": JWT_PAYLOAD,
        "clock_skew_seconds": CLOCK_SKEW_SECONDS,
        "require_expiration": True,
        "jwt_cache_config": {"jwt_cache_size": 4096},
    }
    optional_jwt = {
        "requires_any": {"requirements": [{"provider_name": PROVIDER}, {"allow_missing": {}}]}
    }
    return {
        "name": JWT_AUTHN_FILTER,
        "typed_config": {
            "@type": JWT_AUTHN_TYPE,
            "providers": {PROVIDER: provider},
            "rules": [
                *public_rules(services),
                {"match": {"prefix": "/"}, "requires": optional_jwt},
            ],
            "bypass_cors_preflight": True,
        },
    }


# Runs right after jwt_authn. Header names are lower case inside Envoy.
IDENTITY_SCRIPT = r"""
local public = { PUBLIC_PATHS }
local public_prefixes = { PUBLIC_PREFIX_LIST }

-- Public RPCs ignore credentials (ADR 0005): an API key on them is never checked here.
local function is_public(path)
  local bare = (string.gsub(string.match(path, "^[^?]*"), "/+$", ""))
  if public[bare] then
    return true
  end
  for _, prefix in ipairs(public_prefixes) do
    if string.sub(path, 1, #prefix) == prefix then
      return true
    end
  end
  return false
end

function envoy_on_request(h)
  local headers = h:headers()
  local forged = {}
  for key, _ in pairs(headers) do
    if string.sub(key, 1, PREFIX_LENGTH) == "PREFIX" then
      table.insert(forged, key)
    end
  end
  for _, key in ipairs(forged) do
    headers:remove(key)
  end
  local meta = h:streamInfo():dynamicMetadata()
  local jwt = meta:get("JWT_FILTER")
  local payload = jwt and jwt["JWT_PAYLOAD"]
  if payload and type(payload["sub"]) == "string" then
    headers:add("USER_ID_HEADER", payload["sub"])
    headers:add("AUTH_HEADER", "jwt")
    -- The token decides; a key sent beside it goes no further than the edge.
    headers:remove("API_KEY_HEADER")
  elseif headers:get("API_KEY_HEADER") ~= nil and not is_public(headers:get(":path") or "") then
    meta:set("leaky", "api_key", "1")
    -- Check answers a native gRPC caller's refusal as gRPC (after the transcoder, every
    -- request it sees says application/grpc).
    local ctype = string.lower(headers:get("content-type") or "")
    if string.sub(ctype, 1, 16) == "application/grpc" then
      meta:set("leaky", "GRPC_CALLER_KEY", "1")
    end
  end
end
"""


def public_paths(services: tuple[Service, ...]) -> tuple[list[str], list[str]]:
    """(exact paths, prefixes) of the public RPCs: gRPC paths, HTTP bindings, streams."""
    templates = {
        b.template for b in bindings.http_bindings(services) if b.grpc_path in PUBLIC_GRPC_PATHS
    }
    if any("{" in t for t in templates):
        raise ValueError("a public HTTP binding with path variables needs a pattern match")
    exact = sorted({*PUBLIC_GRPC_PATHS, *(t.rstrip("/") for t in templates)})
    return exact, sorted({p for s in services for p in s.gateway_prefixes})


def _lua_string(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"not a plain path: {value!r}")
    return f'"{value}"'


def identity_filter(services: tuple[Service, ...]) -> dict[str, Any]:
    """Strip forged identity headers; forward a verified JWT's subject; flag API-key calls
    (not on public RPCs, which ignore credentials)."""
    exact, prefixes = public_paths(services)
    script = IDENTITY_SCRIPT
    for name, value in {
        "PUBLIC_PATHS": ", ".join(f"[{_lua_string(p)}] = true" for p in exact),
        "PUBLIC_PREFIX_LIST": ", ".join(_lua_string(p) for p in prefixes),
        "PREFIX_LENGTH": str(len(IDENTITY_PREFIX)),
        "PREFIX": IDENTITY_PREFIX,
        "JWT_FILTER": JWT_AUTHN_FILTER,
        "JWT_PAYLOAD": JWT_PAYLOAD,
        "USER_ID_HEADER": USER_ID_HEADER,
        "AUTH_HEADER": AUTH_HEADER,
        "API_KEY_HEADER": API_KEY_HEADER,
        "GRPC_CALLER_KEY": GRPC_CALLER_KEY,
    }.items():
        script = script.replace(name, value)
    return {
        "name": IDENTITY_FILTER,
        "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": script}},
    }


def ext_authz_filter() -> dict[str, Any]:
    """API keys: the auth service's Authorization/Check, only for requests the identity filter
    marked (an X-Api-Key and no verified JWT); an error or timeout answers 503, never lets
    the request through."""
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": EXT_AUTHZ_TYPE,
            "grpc_service": {"envoy_grpc": {"cluster_name": ISSUER}, "timeout": "1s"},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
            # The key is all Check needs; nothing else of the request goes to it.
            "allowed_headers": {"patterns": [{"exact": API_KEY_HEADER}]},
            # The identity filter's marks: whether the caller speaks native gRPC.
            "metadata_context_namespaces": ["leaky"],
            "filter_enabled_metadata": {
                "filter": "leaky",
                "path": [{"key": "api_key"}],
                "value": {"string_match": {"exact": "1"}},
            },
        },
    }


def with_local_replies(config: dict[str, Any]) -> dict[str, Any]:
    """A local_reply_config whose first mapper passes Check's refusals unchanged (ADR 0048).

    Check answers a refused key with 401 and the google.rpc.Status JSON (ErrorInfo included)
    as the body, or for a gRPC caller the plain message (sent as grpc-message) beside
    grpc-status-details-bin: the body goes out as Check wrote it. Only the 401 of a denial:
    an ext_authz error (Check unreachable) is flagged UAEX too, and its empty 503 keeps the
    generic mapping.
    """
    denied = {
        "and_filter": {
            "filters": [
                {"response_flag_filter": {"flags": ["UAEX"]}},
                {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"default_value": 401, "runtime_key": "leaky.none"},
                        }
                    }
                },
            ]
        }
    }
    mapper = {
        "filter": denied,
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    return {**config, "mappers": [mapper, *config["mappers"]]}


def request_filters(
    services: tuple[Service, ...], *, issuer: str, audience: str
) -> list[dict[str, Any]]:
    """The filters before the transcoder (after the hardening Lua and CORS)."""
    return [
        jwt_authn_filter(services, issuer=issuer, audience=audience),
        identity_filter(services),
    ]


def after_transcoding_filters() -> list[dict[str, Any]]:
    """ext_authz, after the transcoder (and its query check), before the ratelimit filter.

    Before the transcoder an HTTP/JSON request matches no route (the routes are gRPC paths),
    and Envoy's ext_authz skips the check of a request without a route: after it, every
    request it would protect has one.
    """
    return [ext_authz_filter()]


def jwks_cluster(listen: tuple[str, int]) -> dict[str, Any]:
    """The cluster jwt_authn fetches the JWKS through: this Envoy's own listener (whose
    transcoder turns GET /oauth2/jwks into AuthService/GetJwks on a healthy auth instance)."""
    host = "127.0.0.1" if listen[0] in ("0.0.0.0", "") else listen[0]  # noqa: S104
    return {
        "name": JWKS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": JWKS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": host, "port_value": listen[1]}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
