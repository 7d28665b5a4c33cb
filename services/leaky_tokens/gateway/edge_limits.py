"""Edge request-rate limits: Envoy's ratelimit filter asking the RLS (ADRs 0042, 0047).

Every request routed to a service is described to `ShouldRateLimit` (the token service's RLS,
ADR 0025, served for Envoy by the `ratelimit` deployment, ADR 0047) by the virtual host's
`rate_limits`, one descriptor per entry:

- (method, remote_address): the gRPC method (`:path` once the transcoder has run, so an
  HTTP/JSON call and a native gRPC call of one method count alike) and the connection's peer
  (the address Envoy trusts: `use_remote_address`, ADR 0015). Always sent, so the anonymous
  fallback, and a budget no header can dodge.
- (method, user_id) from `x-leaky-user-id` and (method, api_key_id) from
  `x-leaky-api-key-id`: sent only when the header is there, which is after the auth filters
  set it (Envoy strips client-sent `x-leaky-*`); absent headers drop the entry, as Envoy does
  for any `request_headers` action.

The limits live in the token policy's `rate_limits` (or LEAKY_TOKEN_RLS_CONFIG), keyed
`method` [value] -> `remote_address` | `user_id` | `api_key_id`: envoyproxy/ratelimit's
matching, so a method with an entry of its own (Login) takes that one instead of the
any-method entry.
"""

from __future__ import annotations

from typing import Any

from leaky_tokens.gateway.edge_settings import GatewaySettings
from leaky_tokens.topology import RATELIMIT, Service

_T = "type.googleapis.com/envoy.extensions.filters.http."
RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
HEADERS_FILTER = "leaky.rate_limit_headers"
# ShouldRateLimit is asked of a deployment of its own (the token service's code serving the
# RLS alone, ADR 0047), not of the token process that also serves Consume.
RLS_CLUSTER = RATELIMIT

# Descriptor keys, as the policy file's rate_limits name them.
METHOD_KEY = "method"
ADDRESS_KEY = "remote_address"
USER_KEY = "user_id"
API_KEY_KEY = "api_key_id"
USER_HEADER = "x-leaky-user-id"
API_KEY_HEADER = "x-leaky-api-key-id"

# The edge's 429 and 503 bodies: the google.rpc.Status shape of every other error.
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RATE_LIMITED_REASON = "EDGE_RATE_LIMITED"
ERROR_DOMAIN = "leaky-tokens"


def _method() -> dict[str, Any]:
    return {"request_headers": {"header_name": ":path", "descriptor_key": METHOD_KEY}}


def rate_limits() -> list[dict[str, Any]]:
    """The virtual host's rate_limits: (method, address) always, (method, identity) once the
    auth filters have set the identity headers."""
    return [
        {"actions": [_method(), {"remote_address": {}}]},
        {
            "actions": [
                _method(),
                {"request_headers": {"header_name": USER_HEADER, "descriptor_key": USER_KEY}},
            ]
        },
        {
            "actions": [
                _method(),
                {
                    "request_headers": {
                        "header_name": API_KEY_HEADER,
                        "descriptor_key": API_KEY_KEY,
                    }
                },
            ]
        },
    ]


def enabled(settings: GatewaySettings, services: tuple[Service, ...]) -> bool:
    """Edge limits are on, and the topology has the deployment that answers them."""
    return settings.ratelimit and any(s.slug == RLS_CLUSTER for s in services)


def virtual_host(settings: GatewaySettings, services: tuple[Service, ...]) -> dict[str, Any]:
    """Virtual host fields: the rate_limits (none when edge limits are off)."""
    return {"rate_limits": rate_limits()} if enabled(settings, services) else {}


def filters(settings: GatewaySettings, services: tuple[Service, ...]) -> list[dict[str, Any]]:
    """The ratelimit filter and the Lua filter that tidies rate-limit headers ([] when off).

    Both sit after the transcoder: before it an HTTP/JSON request matches no route yet (the
    routes are gRPC paths), and Envoy's ratelimit filter does nothing without a route.
    """
    if not enabled(settings, services):
        return []
    config: dict[str, Any] = {
        "@type": _T + "ratelimit.v3.RateLimit",
        "domain": settings.ratelimit_domain,
        "timeout": f"{settings.ratelimit_timeout_ms / 1000:g}s",
        "failure_mode_deny": settings.ratelimit_failure_mode_deny,
        # A native gRPC caller gets RESOURCE_EXHAUSTED, as from the services' own limits
        # (Envoy's default is UNAVAILABLE, which clients retry at once).
        "rate_limited_as_resource_exhausted": True,
        # x-envoy-ratelimited tells an Envoy in front to retry; the answer carries
        # Retry-After instead (HEADERS_FILTER).
        "disable_x_envoy_ratelimited_header": True,
        # Envoy's own X-RateLimit-* (enable_x_ratelimit_headers) stays off: the RLS sends
        # X-RateLimit-* and the IETF RateLimit / RateLimit-Policy itself, and Envoy would add
        # a second X-RateLimit-Limit beside it.
        "rate_limit_service": {
            "grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
            "transport_api_version": "V3",
        },
    }
    if settings.ratelimit_failure_mode_deny:
        config["status_on_error"] = {"code": "ServiceUnavailable"}
    # The Lua filter first: responses pass filters in reverse, so it sees what the ratelimit
    # filter added (and the ratelimit filter's own 429).
    return [
        {
            "name": HEADERS_FILTER,
            "typed_config": {
                "@type": _T + "lua.v3.Lua",
                "default_source_code": {"inline_string": HEADERS_SCRIPT.strip() + "\n"},
            },
        },
        {"name": RATELIMIT_FILTER, "typed_config": config},
    ]


def with_local_replies(config: dict[str, Any]) -> dict[str, Any]:
    """A local_reply_config with the edge's own refusal first (mappers apply in order): a 429
    of the ratelimit filter (response flag RL) says so, with an ErrorInfo."""
    body = {
        "code": 8,  # RESOURCE_EXHAUSTED
        "message": "request rate limit exceeded",
        "details": [{"@type": ERROR_INFO, "reason": RATE_LIMITED_REASON, "domain": ERROR_DOMAIN}],
    }
    mapper = {
        "filter": {"response_flag_filter": {"flags": ["RL"]}},
        "body_format_override": {"json_format": body, "content_type": "application/json"},
    }
    return {**config, "mappers": [mapper, *config["mappers"]]}


# Runs on the way out after the ratelimit filter (it is before it in the chain). The RLS's
# headers come after the service's own (the token service answers Consume with X-RateLimit-*
# of its buckets, in LLM tokens): the first X-RateLimit-* set is kept, the one of the limit
# that decided the call; RateLimit / RateLimit-Policy are lists, joined into one field, so
# they name every limit. A 429 without Retry-After gets one from X-RateLimit-Reset.
HEADERS_SCRIPT = r"""
local TRIPLE = { "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset" }
local LISTS = { "ratelimit", "ratelimit-policy" }

function envoy_on_response(h)
  local headers = h:headers()
  for _, name in ipairs(TRIPLE) do
    if headers:getNumValues(name) > 1 then
      local first = headers:getAtIndex(name, 0)
      headers:remove(name)
      headers:add(name, first)
    end
  end
  for _, name in ipairs(LISTS) do
    local count = headers:getNumValues(name)
    if count > 1 then
      local parts = {}
      for i = 0, count - 1 do
        parts[#parts + 1] = headers:getAtIndex(name, i)
      end
      headers:remove(name)
      headers:add(name, table.concat(parts, ", "))
    end
  end
  if headers:get(":status") == "429" and headers:get("retry-after") == nil then
    local reset = tonumber(headers:get("x-ratelimit-reset") or "")
    if reset ~= nil then
      headers:add("retry-after", tostring(math.max(1, math.floor(reset))))
    end
  end
end
"""
