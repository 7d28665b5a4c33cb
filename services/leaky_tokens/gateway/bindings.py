"""Routes and checks derived from the services' google.api.http bindings (their descriptors)."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]

from leaky_tokens.topology import Service

FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"


def _path_regex(template: str) -> str:
    """google.api.http path template -> RE2 for the path ({x} one segment, {x=**} any)."""
    out = []
    for part in re.split(r"(\{[^}]*\})", template):
        if part.startswith("{"):
            out.append(".+" if "**" in part else "[^/]+")
        else:
            out.append(re.escape(part))
    return "".join(out)


@dataclass(frozen=True)
class Binding:
    """One google.api.http binding: HTTP method, path template, body rule, gRPC path."""

    method: str
    template: str
    body: str
    grpc_path: str


def http_bindings(services: tuple[Service, ...]) -> list[Binding]:
    """Every (non-custom) HTTP binding of the topology's services, from their descriptors."""
    found = set()
    for service in services:
        if not service.proto_module:
            continue
        module = importlib.import_module(service.proto_module)
        for name in service.proto_services:
            descriptor = module.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[1]]
            for method in descriptor.methods:
                rule: http_pb2.HttpRule = method.GetOptions().Extensions[annotations_pb2.http]
                grpc_path = f"/{descriptor.full_name}/{method.name}"
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    if kind and kind != "custom":
                        found.add(
                            Binding(kind.upper(), getattr(binding, kind), binding.body, grpc_path)
                        )
    return sorted(found, key=lambda b: (b.template, b.method, b.grpc_path))


QUERY_REFUSED = (
    "query parameters are not accepted on this endpoint; send every field in the JSON body"
)


def query_refused_calls(services: tuple[Service, ...]) -> list[str]:
    """Every "<HTTP method> <gRPC path>" whose binding takes the whole request as its body.

    Such a request's fields belong in the body; taking them from the URL put passwords into
    URLs, browser history and access logs. The Lua filter after the transcoder refuses these
    calls when the client's path had a query string: keyed on the method the transcoder
    resolved, so every spelling of the path it accepts (`/login/`, `/login//`) is covered.
    """
    return sorted({f"{b.method} {b.grpc_path}" for b in http_bindings(services) if b.body == "*"})


def _overlap(a: str, b: str) -> bool:
    """Whether two path templates can match the same path (segment by segment)."""
    left, right = a.strip("/").split("/"), b.strip("/").split("/")
    if "**" in a or "**" in b:
        return True
    return len(left) == len(right) and all(
        x == y or x.startswith("{") or y.startswith("{") for x, y in zip(left, right, strict=True)
    )


def method_not_allowed_routes(services: tuple[Service, ...]) -> list[dict[str, Any]]:
    """405 with `Allow` for a method no binding of the path takes (PUT on a POST endpoint).

    Allowed are the methods of every template that can match the same path (a method bound
    only to an overlapping template still goes to the transcoder, which may answer 404), and
    HEAD wherever GET is. Trailing slashes are matched as the transcoder ignores them.
    """
    bindings = http_bindings(services)
    routes = []
    for template in sorted({b.template for b in bindings}):
        allowed = {b.method for b in bindings if _overlap(template, b.template)}
        if "GET" in allowed:
            allowed.add("HEAD")
        allow = ", ".join(sorted(allowed))
        routes.append(
            {
                "match": {
                    "safe_regex": {"regex": _path_regex(template) + "/*"},
                    "headers": [
                        {
                            "name": ":method",
                            "string_match": {"safe_regex": {"regex": "|".join(sorted(allowed))}},
                            "invert_match": True,
                        }
                    ],
                },
                "direct_response": {
                    "status": 405,
                    "body": {"inline_string": f"this method is not allowed here; allowed: {allow}"},
                },
                "response_headers_to_add": [
                    {
                        "header": {"key": "allow", "value": allow},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "typed_per_filter_config": {
                    TRANSCODER_FILTER: {"@type": FILTER_CONFIG, "disabled": True},
                },
            }
        )
    return routes
