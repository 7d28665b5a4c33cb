"""The gateway's Lua filter: header-size limit, HEAD as GET, gRPC frame checks, clean errors."""

from __future__ import annotations

from typing import Any

from leaky_tokens.gateway import bindings

_T = "type.googleapis.com/envoy.extensions.filters.http.lua.v3."
LUA_FILTER = "envoy.filters.http.lua"
QUERY_CHECK_FILTER = "leaky.query_check"  # its own name: per-route Lua configs are LUA_FILTER's

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

-- gRPC metadata keys are [0-9a-z_.-]: a header name HTTP allows beyond that ("a|b"), and from
-- an HTTP/JSON client a "-bin" header (binary metadata, base64) or a reserved "grpc-*" one,
-- would reach the service as metadata gRPC refuses, answered INTERNAL (HTTP 500). No service
-- reads such a header: it is dropped, the request goes on.
local function drop_unforwardable(headers, is_grpc)
  local drop = {}
  for key, _ in pairs(headers) do
    if string.sub(key, 1, 1) ~= ":" then
      if string.find(key, "[^0-9a-z_.-]") then
        drop[#drop + 1] = key
      elseif not is_grpc and (string.sub(key, 1, 5) == "grpc-" or string.sub(key, -4) == "-bin")
      then
        drop[#drop + 1] = key
      end
    end
  end
  for _, key in ipairs(drop) do
    headers:remove(key)
  end
end

function envoy_on_request(h)
  local headers = h:headers()
  local method = headers:get(":method") or ""
  local ctype = headers:get("content-type") or ""
  -- Media types are case-insensitive; gRPC servers take only the lower-case spelling.
  local is_grpc = string.sub(string.lower(ctype), 1, 16) == "application/grpc"
  local meta = h:streamInfo():dynamicMetadata()
  meta:set("leaky", "method", method)
  if not is_grpc and string.find(headers:get(":path") or "", "?", 1, true) then
    -- Read after the transcoder (QUERY_CHECK_SCRIPT), which drops nothing it can map.
    meta:set("leaky", "query", "1")
  end
  if header_bytes(headers) > MAX_HEADER_BYTES then
    if is_grpc then
      return grpc_error(h, "request headers too large")
    end
    return h:respond({ [":status"] = "431" }, "request headers too large")
  end
  drop_unforwardable(headers, is_grpc)
  if method == "HEAD" then
    -- Answered like GET; the body is dropped on the way out.
    headers:replace(":method", "GET")
    return
  end
  if not is_grpc then
    return
  end
  if not GRPC[ctype] then
    h:body()  -- read it first: answering mid-upload resets the stream before the answer
    return grpc_error(h, "unsupported content-type " .. ctype)
  end
  if CHECK_FRAMES then
    local problem = frame_problem(h, headers)
    if problem then
      return grpc_error(h, "malformed gRPC request: " .. problem)
    end
  end
end

-- Messages of the transcoder that name proto internals, as clients should read them. Applied
-- to the message only, as it stands JSON-escaped in the body. Type names are matched whole:
-- never inside a path (%f frontiers), so "/leaky.auth.v1.AuthService/Login" stays as sent.
local NAME = "%f[%w_./]leaky%.[%w_]+%.v%d+%.[%w_.]+%f[^%w_./]"
local REWRITES = {
  { "Proto field is not repeating, cannot start list%.", "a list was given for a single value" },
  { "invalid value Starting an object on a scalar field for type ([%w_]+)",
    "an object was given for field %1" },
  { "Could not find field (\\\"[^\\\"]*\\\") in the type \\\"" .. NAME .. "\\\"%.?",
    "unknown query parameter %1" },
  { " for type type%.googleapis%.com/google%.protobuf%.Timestamp", "" },
  { "Illegal timestamp format; timestamps", "timestamps" },
  { " for type TYPE_[A-Z0-9]+", "" },
  { "Root element must be a message%.", "the body must be a JSON object" },
  { "%f[%w_./]type%.googleapis%.com/[%w_.]+", "a message" },
  { NAME, "the request" },
}

local function camel(name)
  return (string.gsub(name, "_(%l)", string.upper))
end

local function clean(text)
  -- Envoy's JSON ends with a newline and its keys are sorted: the message comes last.
  text = string.gsub(text, "%s+$", "")
  local head, message = string.match(text, '^(.*"message":")(.*)"}$')
  if message == nil then
    return text
  end
  -- The JSON parser appends the input and a caret under the error ("\n{...}\n   ^").
  message = string.gsub(message, "\\n.*$", "")
  for _, rule in ipairs(REWRITES) do
    message = string.gsub(message, rule[1], rule[2])
  end
  -- Field paths come as proto names (expires_at); clients know the JSON names (expiresAt).
  message = string.gsub(message, "^([%w_.]+): ", function(field)
    return camel(field) .. ": "
  end)
  message = string.gsub(string.gsub(message, "^: ", ""), "%s+$", "")
  return head .. message .. '"}'
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


# Runs after the transcoder, which has turned an HTTP request into its gRPC call: the path is
# the call's, whatever spelling of the HTTP path the transcoder accepted.
QUERY_CHECK_SCRIPT = r"""
function envoy_on_request(h)
  local meta = h:streamInfo():dynamicMetadata():get("leaky") or {}
  if meta["query"] == nil then
    return
  end
  local call = (meta["method"] or "") .. " " .. (h:headers():get(":path") or "")
  if REFUSED[call] then
    h:respond({ [":status"] = "400" }, QUERY_REFUSED)
  end
end

function envoy_on_response(h)
end
"""


def after_transcoding_filter(refused_calls: list[str]) -> dict[str, Any]:
    """A second Lua filter, after the transcoder: 400 for a query string on the calls given
    ("POST /leaky.auth.v1.AuthService/Login": whole-body bindings, see bindings.py)."""
    table = ", ".join(f'["{call}"] = true' for call in refused_calls)
    head = f"local REFUSED = {{ {table} }}\n"
    head += f'local QUERY_REFUSED = "{bindings.QUERY_REFUSED}"\n'
    return {
        "name": QUERY_CHECK_FILTER,
        "typed_config": {
            "@type": _T + "Lua",
            "default_source_code": {"inline_string": head + QUERY_CHECK_SCRIPT.strip() + "\n"},
        },
    }


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
