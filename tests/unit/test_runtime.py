"""Shared runtime: settings, JSON logs, error mapping and JWT verification."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from leaky_tokens import cli
from leaky_tokens.runtime import errors, settings
from leaky_tokens.runtime.identity import API_KEY_NOT_ALLOWED, Caller, refuse_api_key
from leaky_tokens.runtime.jwt_verifier import bearer_token
from leaky_tokens.runtime.logging import JsonFormatter, request_id_var
from leaky_tokens.runtime.status import to_status

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sample:
    port: int = field(default=1, metadata=settings.doc("a port"))
    ratio: float = 0.5
    enabled: bool = False
    name: str = "x"
    hosts: tuple[str, ...] = ()


def test_settings_come_from_prefixed_environment_with_defaults() -> None:
    loaded = settings.load(
        Sample,
        "LEAKY_T",
        {"LEAKY_T_PORT": "8080", "LEAKY_T_ENABLED": "yes", "LEAKY_T_HOSTS": "a, b", "OTHER": "1"},
    )
    assert loaded == Sample(port=8080, ratio=0.5, enabled=True, name="x", hosts=("a", "b"))


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(settings.SettingsError, match="LEAKY_T_PORT"):
        settings.load(Sample, "LEAKY_T", {"LEAKY_T_PORT": "eighty"})
    with pytest.raises(settings.SettingsError, match="LEAKY_T_ENABLED"):
        settings.load(Sample, "LEAKY_T", {"LEAKY_T_ENABLED": "maybe"})


def test_json_log_line_carries_request_id_and_extras() -> None:
    formatter = JsonFormatter("auth")
    token = request_id_var.set("req-42")
    try:
        record = logging.makeLogRecord(
            {"name": "x", "levelname": "INFO", "msg": "hello %s", "args": ("you",), "port": 1}
        )
        line = json.loads(formatter.format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "hello you"
    assert line["request_id"] == "req-42"
    assert line["service"] == "auth"
    assert line["port"] == 1


def _details(status: grpc.Status) -> status_pb2.Status:
    (_, raw), *_ = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_invalid_argument_maps_to_bad_request_with_every_field() -> None:
    error = errors.InvalidArgumentError(
        [errors.FieldViolation("userId", "is required"), errors.FieldViolation("tokens", "> 0")]
    )
    status = to_status(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    detail = _details(status)
    bad = error_details_pb2.BadRequest()
    assert detail.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("userId", "is required"),
        ("tokens", "> 0"),
    ]
    info = error_details_pb2.ErrorInfo()
    assert detail.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "leaky-tokens")


def test_resource_exhausted_carries_retry_info() -> None:
    status = to_status(
        errors.ResourceExhaustedError("bucket full", retry_after_seconds=2.5, reason="RATE_LIMITED")
    )
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert _details(status).details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UnauthenticatedError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDeniedError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.UnimplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_each_domain_error_has_its_code(error: errors.DomainError, code: grpc.StatusCode) -> None:
    assert to_status(error).code == code


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("x-other", "1"),)) is None
    with pytest.raises(errors.UnauthenticatedError):
        bearer_token((("authorization", "Basic abc"),))


def test_compose_envoy_config_matches_the_code() -> None:
    out = io.StringIO()
    with redirect_stdout(out):  # the command in-process: the unit tier starts no processes
        assert cli.main(["envoy-config", "--compose"]) == 0
    generated = out.getvalue()
    committed = (ROOT / "deploy" / "envoy.yaml").read_text()
    assert generated == committed, "run: leaky envoy-config --compose --out deploy/envoy.yaml"


def test_refuse_api_key_refuses_api_key_callers_only() -> None:
    # ADR 0048: an API key's caller (a mesh token's akid) is refused, ADMIN or not.
    person = Caller("u1", frozenset({"ADMIN"}), frozenset())
    refuse_api_key(person, "create API keys")  # a login token: nothing to refuse
    keyed = Caller("u1", frozenset({"ADMIN"}), frozenset(), api_key_id="key-1")
    with pytest.raises(errors.PermissionDeniedError) as refused:
        refuse_api_key(keyed, "create API keys")
    assert refused.value.reason == API_KEY_NOT_ALLOWED
    assert refused.value.metadata == {"api_key_id": "key-1"}
    assert "cannot create API keys" in refused.value.message
    status = to_status(refused.value)
    assert status.code == grpc.StatusCode.PERMISSION_DENIED
