"""The gateway's Lua filter: header-size limit, HEAD as GET, gRPC frame checks, clean errors."""

from __future__ import annotations

from typing import Any

_T = "type.googleapis.com/envoy.extensions.filters.http.lua.v3."
LUA_FILTER = "envoy.filters.http.lua"

# Request headers a client may send, counted as gRPC counts metadata (name + value + 32 per
# entry). The services refuse more than 8 KiB with RESOURCE_EXHAUSTED (HTTP 429, which reads
# as rate limiting); this leaves room for what Envoy adds and answers 431 itself.
MAX_REQUEST_HEADER_BYTES = 7168

# Runs first in the chain, before the transcoder: it sees requests as clients sent them, and
# the transcoder's own error replies on their way out. Shared state between the request and
# the response of one stream lives in dynamic metadata ("leaky"), never in Lua globals.
_SCRIPT = r"""
local GRPC = { ["application/grpc"] = true, ["application/grpc+proto"] = true }

local function grpc_error(h, message)
  h:respond({ [":status"] = "200", ["content-type"] = "application/grpc",
              ["grpc-status"] = "3" }, message)
end

local function header_bytes(headers)
  local total = 0
  for key, value in pairs(headers) do
    total = total + #key + #value + 32
  end
  return total
end

-- A unary call is exactly one length-prefixed message. The service would hang on a
-- truncated frame until the route times out, which Envoy counts against the host.
local function frame_problem(h, headers)
  local body = h:body()
  local size = body and body:length() or 0
  if size < 5 then
    return "no complete message frame"
  end
  local flag = string.byte(body:getBytes(0, 1))
  local b1, b2, b3, b4 = string.byte(body:getBytes(1, 4), 1, 4)
  local length = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if flag > 1 or (flag == 1 and headers:get("grpc-encoding") == nil) then
    return "bad compressed flag"
  end
  if length ~= size - 5 then
    return "frame length does not match the body"
  end
  return nil
end

function envoy_on_request(h)
  local headers = h:headers()
  local method = headers:get(":method") or ""
  local ctype = headers:get("content-type") or ""
  local is_grpc = string.sub(ctype, 1, 16) == "application/grpc"
  h:streamInfo():dynamicMetadata():set("leaky", "method", method)
  if header_bytes(headers) > MAX_HEADER_BYTES then
    if is_grpc then
      return grpc_error(h, "request headers too large")
    end
    return h:respond({ [":status"] = "431" }, "request headers too large")
  end
  if method == "HEAD" then
    -- Answered like GET; the body is dropped on the way out.
    headers:replace(":method", "GET")
    return
  end
  if not is_grpc then
    return
  end
  if not GRPC[ctype] then
    return grpc_error(h, "unsupported content-type " .. ctype)
  end
  if CHECK_FRAMES then
    local problem = frame_problem(h, headers)
    if problem then
      return grpc_error(h, "malformed gRPC request: " .. problem)
    end
  end
end

-- Messages of the transcoder that name proto internals, as clients should read them.
local REWRITES = {
  { "Proto field is not repeating, cannot start list%.", "a list was given for a single value" },
  { "invalid value Starting an object on a scalar field for type ([%w_]+)",
    "an object was given for field %1" },
  { " for type type%.googleapis%.com/google%.protobuf%.Timestamp", "" },
  { "Illegal timestamp format; timestamps", "timestamps" },
  { " for type TYPE_[A-Z0-9]+", "" },
  { "Root element must be a message%.", "the body must be a JSON object" },
  { "type%.googleapis%.com/[%w_.]+", "a message" },
  { "leaky%.[%w_]+%.v%d+%.[%w_.]+", "the request" },
}

local function camel(name)
  return (string.gsub(name, "_(%l)", string.upper))
end

local function clean(text)
  for _, rule in ipairs(REWRITES) do
    text = string.gsub(text, rule[1], rule[2])
  end
  -- Field paths come as proto names (expires_at); clients know the JSON names (expiresAt).
  text = string.gsub(text, '"message":"([%w_.]+): ', function(field)
    return '"message":"' .. camel(field) .. ': '
  end)
  return (string.gsub(text, '"message":": ', '"message":"'))
end

function envoy_on_response(h)
  local headers = h:headers()
  local local_reply = headers:get("x-leaky-local-reply") ~= nil
  headers:remove("x-leaky-local-reply")
  local meta = h:streamInfo():dynamicMetadata():get("leaky") or {}
  if meta["method"] == "HEAD" then
    -- Headers can no longer change once the body is buffered; setBytes sets its length.
    local body = h:body()
    if body ~= nil then
      body:setBytes("")
    end
    return
  end
  if not local_reply then
    return
  end
  local body = h:body()
  if body == nil or body:length() == 0 then
    return
  end
  local text = body:getBytes(0, body:length())
  local cleaned = clean(text)
  if cleaned ~= text then
    body:setBytes(cleaned)
  end
end
"""


def _script(check_frames: bool) -> str:
    head = f"local CHECK_FRAMES = {'true' if check_frames else 'false'}\n"
    head += f"local MAX_HEADER_BYTES = {MAX_REQUEST_HEADER_BYTES}\n"
    return head + _SCRIPT.strip() + "\n"


def request_checks_filter() -> dict[str, Any]:
    """The Lua filter. Routes to streams that never end use the script named "streams",
    which leaves the body alone (buffering it would wait forever)."""
    return {
        "name": LUA_FILTER,
        "typed_config": {
            "@type": _T + "Lua",
            "default_source_code": {"inline_string": _script(check_frames=True)},
            "source_codes": {"streams": {"inline_string": _script(check_frames=False)}},
        },
    }


def for_streams() -> dict[str, Any]:
    """typed_per_filter_config of a route to streams (reflection, health Watch)."""
    return {LUA_FILTER: {"@type": _T + "LuaPerRoute", "name": "streams"}}
