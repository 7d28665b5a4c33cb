"""The committed OpenAPI document describes what Envoy serves (ADR 0043): every HTTP binding
the transcoder routes and no other, the public methods without security, and proto3 JSON as
Envoy's print options render it. `make openapi-check` proves the document is what the protos
generate; these tests prove the generation options and the config say the right things."""

from __future__ import annotations

import json
import re
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from leaky_tokens.analytics.servicer import PUBLIC_METHODS as ANALYTICS_PUBLIC
from leaky_tokens.auth.servicer import PUBLIC_METHODS as AUTH_PUBLIC
from leaky_tokens.gateway import bindings, envoy_config
from leaky_tokens.provider.servicer import PUBLIC_METHODS as PROVIDER_PUBLIC
from leaky_tokens.token.servicer import PUBLIC_METHODS as TOKEN_PUBLIC
from leaky_tokens.topology import SERVICES

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "leaky.swagger.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return dict(json.loads(DOCUMENT.read_text()))


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m[1].upper(), name)


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, ops in document["paths"].items()
        for method, op in ops.items()
    }


def test_every_transcoded_binding_is_an_operation_and_nothing_else(
    document: dict[str, Any],
) -> None:
    served = {
        # The document names path parameters by their JSON names, as clients do.
        (b.method, re.sub(r"\{([a-z_]+)\}", lambda m: "{" + _camel(m[1]) + "}", b.template))
        for b in bindings.http_bindings(SERVICES)
    }
    assert set(_operations(document)) == served


def test_the_public_methods_and_only_they_need_no_credential(document: dict[str, Any]) -> None:
    public = {
        m.rsplit("/", 1)[1] for m in AUTH_PUBLIC | TOKEN_PUBLIC | ANALYTICS_PUBLIC | PROVIDER_PUBLIC
    }
    # Every other operation takes a JWT or an API key (Envoy's ext_authz, ADR 0041);
    # ValidateApiKey is public to the JWT check: its credential is the X-Api-Key header.
    assert document["security"] == [{"Bearer": []}, {"ApiKey": []}]
    open_ops = {
        op["operationId"].split("_", 1)[1].rstrip("0123456789")
        for op in _operations(document).values()
        if op.get("security") == []
    }
    assert open_ops == public - {"ValidateApiKey"}
    (validate,) = [
        op for op in _operations(document).values() if op["operationId"].endswith("ValidateApiKey")
    ]
    assert validate["security"] == [{"ApiKey": []}]
    schemes = document["securityDefinitions"]
    assert (schemes["Bearer"]["in"], schemes["Bearer"]["name"]) == ("header", "Authorization")
    assert (schemes["ApiKey"]["in"], schemes["ApiKey"]["name"]) == ("header", "X-Api-Key")


def test_envoy_renders_json_names_and_enum_names() -> None:
    """The document assumes these print options; changing them changes the wire format."""
    config = envoy_config.render(listen=("127.0.0.1", 1), admin=("127.0.0.1", 2), upstreams=[])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (transcoder,) = [
        f
        for f in hcm["typed_config"]["http_filters"]
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    options = transcoder["typed_config"]["print_options"]
    assert options["preserve_proto_field_names"] is False  # lowerCamelCase json_name
    assert options["always_print_enums_as_ints"] is False  # enum value names


def _messages() -> dict[str, Descriptor]:
    """Every message of the transcoded services' files and the files they import."""
    found: dict[str, Descriptor] = {}

    def visit(message: Descriptor) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            visit(nested)

    for service in SERVICES:
        if service.proto_module:
            for message in import_module(
                service.proto_module
            ).DESCRIPTOR.message_types_by_name.values():
                visit(message)
    return found


INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64}


def test_fields_are_the_proto3_json_names_int64_strings_and_enum_names(
    document: dict[str, Any],
) -> None:
    checked = 0
    for message in _messages().values():
        schema = document["definitions"].get(message.name)
        if schema is None:  # request messages of GET bindings are query parameters
            continue
        properties = schema.get("properties", {})
        assert set(properties) <= {f.json_name for f in message.fields}, message.full_name
        for field in message.fields:
            if field.json_name not in properties:
                continue
            prop = properties[field.json_name]
            if field.is_repeated:
                prop = prop.get("items", prop)
            if field.type in INT64:
                assert (prop["type"], prop["format"]) == ("string", "int64"), field.full_name
            if field.enum_type is not None:
                enum = document["definitions"][prop["$ref"].rsplit("/", 1)[1]]
                assert enum["enum"] == [v.name for v in field.enum_type.values]
            checked += 1
    assert checked > 200  # the whole API, not a vacuous loop


def test_query_parameters_are_json_names(document: dict[str, Any]) -> None:
    # Envoy's transcoder takes both spellings; the document (and the docs) use the JSON one.
    names = {
        p["name"]
        for op in _operations(document).values()
        for p in op.get("parameters", [])
        if p["in"] == "query"
    }
    assert {"userId", "orgId", "windowMinutes", "pageSize"} <= names
    assert not {n for n in names if "_" in n}
