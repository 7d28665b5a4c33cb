"""Shared runtime: settings, JSON logs, error mapping and JWT verification."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.rpc import error_details_pb2, status_pb2
from jwt.algorithms import RSAAlgorithm

from leaky_tokens.runtime import errors, settings
from leaky_tokens.runtime.jwt_verifier import JwtVerifier, bearer_token
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


class KeySet:
    """A JWKS that can rotate, counting fetches."""

    def __init__(self) -> None:
        self.private: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.add("k1")

    def add(self, kid: str) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def fetch(self) -> list[dict[str, str]]:
        self.fetches += 1
        return [
            {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in self.private.items()
        ]

    def token(self, kid: str = "k1", **overrides: object) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": "iss",
            "aud": "aud",
            "sub": "user-1",
            "roles": ["USER"],
            "orgs": ["org-1"],
            "iat": now,
            "exp": now + timedelta(minutes=5),
            "jti": "j1",
            **overrides,
        }
        return jwt.encode(claims, self.private[kid], algorithm="RS256", headers={"kid": kid})


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def verifier_for(keys: KeySet, clock: FakeMonotonic | None = None) -> JwtVerifier:
    return JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock or FakeMonotonic())


async def test_valid_token_gives_caller_and_keys_are_cached() -> None:
    keys = KeySet()
    verifier = verifier_for(keys)
    caller = await verifier.verify(keys.token())
    await verifier.verify(keys.token())
    assert caller.user_id == "user-1"
    assert caller.roles == frozenset({"USER"})
    assert caller.org_ids == frozenset({"org-1"})
    assert keys.fetches == 1


async def test_unknown_kid_triggers_one_refresh_and_then_verifies() -> None:
    keys = KeySet()
    clock = FakeMonotonic()
    verifier = verifier_for(keys, clock)
    await verifier.verify(keys.token())
    keys.add("k2")
    clock.now += 2  # past the refresh interval, so no waiting
    caller = await verifier.verify(keys.token("k2"))
    assert caller.user_id == "user-1"
    assert keys.fetches == 2


async def test_made_up_kids_are_rejected_together_without_queueing() -> None:
    keys = KeySet()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", min_refresh_interval=0.2)
    await verifier.verify(keys.token())
    bogus = [
        jwt.encode({"sub": "x"}, keys.private["k1"], algorithm="RS256", headers={"kid": f"no-{n}"})
        for n in range(8)
    ]
    results = await asyncio.gather(*(verifier.verify(t) for t in bogus), return_exceptions=True)
    assert all(isinstance(r, errors.UnauthenticatedError) for r in results)
    # One refresh served all eight: not eight refreshes one interval apart.
    assert keys.fetches == 2
    # Within the interval a known-missing kid is refused without any fetch.
    with pytest.raises(errors.UnauthenticatedError):
        await verifier.verify(bogus[0])
    assert keys.fetches == 2


async def test_keys_the_issuer_stopped_publishing_stop_verifying() -> None:
    keys = KeySet()
    clock = FakeMonotonic()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=60)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    keys.add("k2")
    del keys.private["k1"]  # retired by rotation
    clock.now += 61
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(old_token)
    assert info.value.reason == "UNKNOWN_KEY_ID"


async def test_jwks_outage_before_any_key_is_unavailable_not_unauthenticated() -> None:
    async def broken() -> list[dict[str, str]]:
        raise ConnectionError("auth is down")

    verifier = JwtVerifier(broken, issuer="iss", audience="aud")
    with pytest.raises(errors.UnavailableError):
        await verifier.verify(KeySet().token())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: k.token(exp=datetime.now(UTC) - timedelta(hours=1)), "TOKEN_EXPIRED"),
        (lambda k: k.token(iss="someone-else"), "INVALID_TOKEN"),
        (lambda k: k.token(aud="other"), "INVALID_TOKEN"),
        (
            lambda k: jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "k1"}),
            "MALFORMED_TOKEN",
        ),
        (lambda k: "garbage", "MALFORMED_TOKEN"),
        (
            lambda k: jwt.encode({"sub": "x"}, "", algorithm="none", headers={"kid": "k1"}),
            "MALFORMED_TOKEN",
        ),
    ],
)
async def test_bad_tokens_are_rejected_with_a_reason(make: object, reason: str) -> None:
    keys = KeySet()
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier_for(keys).verify(make(keys))  # type: ignore[operator]
    assert info.value.reason == reason


async def test_token_signed_by_a_foreign_key_with_a_known_kid_is_rejected() -> None:
    keys, impostor = KeySet(), KeySet()
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier_for(keys).verify(impostor.token("k1"))
    assert info.value.reason == "INVALID_TOKEN"


def test_bearer_token_parsing() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("x-other", "1"),)) is None
    with pytest.raises(errors.UnauthenticatedError):
        bearer_token((("authorization", "Basic abc"),))


def test_compose_envoy_config_matches_the_code() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "leaky_tokens.cli", "envoy-config", "--compose"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / "deploy" / "envoy.yaml").read_text()
    assert generated == committed, "run: leaky envoy-config --compose --out deploy/envoy.yaml"
