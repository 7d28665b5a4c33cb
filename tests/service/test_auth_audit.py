"""The auth audit trail: one structured `leaky.audit` line per security event, no secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from leaky.auth.v1 import auth_pb2 as pb
from leaky_tokens.auth.domain.audit import AUDIT_LOGGER, AuditEvent
from leaky_tokens.auth.domain.throttle import ThrottlePolicy, ThrottleRule
from leaky_tokens.runtime.logging import JsonFormatter
from tests.service.test_auth_abuse import LOOSE, Auth, serve

PASSWORD = "correct horse"
WRONG = "tr0ub4dor&3"
LOCKING = ThrottleRule(free_failures=1, lockout_after=2)


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[Auth]:
    async for running in serve(tmp_path, ThrottlePolicy(LOCKING, LOOSE)):
        yield running


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The audit records as the service writes them: JSON lines (runtime/logging.py)."""
    formatter = JsonFormatter("auth")
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == AUDIT_LOGGER]


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line["event"] for line in lines(caplog)]


def meta(request_id: str, address: str = "203.0.113.5") -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id), ("x-leaky-client-address", address))


async def register(auth: Auth, name: str = "alice") -> pb.RegisterResponse:
    response: pb.RegisterResponse = await auth.stub.Register(
        pb.RegisterRequest(username=name, email=f"{name}@example.com", password=PASSWORD)
    )
    return response


async def test_failed_logins_and_the_lockout_are_audited(
    auth: Auth, audit: pytest.LogCaptureFixture
) -> None:
    me = await register(auth)
    for request_id in ("req-1", "req-2"):
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.stub.Login(
                pb.LoginRequest(username="Alice", password=WRONG), metadata=meta(request_id)
            )
        auth.clock.advance(seconds=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await auth.stub.Login(pb.LoginRequest(username="nobody", password=WRONG))
    failed, second, locked, unknown = lines(audit)
    assert failed["event"] == "login.failed"
    assert failed["outcome"] == "failure"
    assert failed["subject"] == me.user_id
    assert failed["username"] == "Alice"
    assert failed["client"] == "203.0.113.5"
    assert failed["request_id"] == "req-1"
    assert failed["logger"] == "leaky.audit"
    assert second["request_id"] == "req-2"
    assert locked["event"] == "login.locked"
    assert locked["locked"] == "username"
    assert locked["subject"] == me.user_id
    # An unknown name is audited too (for the operator; the client's answer is the same).
    assert unknown["event"] == "login.failed"
    assert unknown["subject"] == ""
    assert unknown["client"] == "127.0.0.1"  # no Envoy header: the gRPC peer
    assert WRONG not in audit.text
    assert WRONG not in json.dumps(lines(audit))


async def test_api_key_creation_and_revocation_are_audited_without_the_key(
    auth: Auth, audit: pytest.LogCaptureFixture
) -> None:
    me = await register(auth)
    bearer = (("authorization", f"Bearer {me.token}"), *meta("req-key"))
    created = await auth.stub.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=me.user_id, name="ci"), metadata=bearer
    )
    await auth.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(user_id=me.user_id, api_key_id=created.id), metadata=bearer
    )
    made, revoked = lines(audit)
    for line, event in ((made, "api_key.created"), (revoked, "api_key.revoked")):
        assert line["event"] == event
        assert line["actor"] == line["subject"] == me.user_id
        assert line["key_id"] == created.id
        assert line["client"] == "203.0.113.5"
        assert line["request_id"] == "req-key"
    text = json.dumps(lines(audit))
    for secret in (created.api_key, created.api_key[3:], me.token, PASSWORD):
        assert secret not in text


async def test_role_grants_revocations_and_key_rotation_are_audited(
    auth: Auth, audit: pytest.LogCaptureFixture
) -> None:
    me = await register(auth)
    await auth.app.grant_role("alice", "ADMIN")
    admin = await auth.stub.Login(pb.LoginRequest(username="alice", password=PASSWORD))
    rotated = await auth.stub.RotateSigningKey(
        pb.RotateSigningKeyRequest(), metadata=(("authorization", f"Bearer {admin.token}"),)
    )
    await auth.app.revoke_role("alice", "ADMIN")
    granted, rotation, revoked = lines(audit)
    assert granted["event"] == "role.granted"
    assert granted["actor"] == "operator"
    assert (granted["subject"], granted["role"]) == (me.user_id, "ADMIN")
    assert rotation["event"] == "signing_key.rotated"
    assert (rotation["actor"], rotation["kid"]) == (me.user_id, rotated.kid)
    assert revoked["event"] == "role.revoked"
    assert (revoked["subject"], revoked["role"]) == (me.user_id, "ADMIN")
    text = json.dumps(lines(audit))
    for secret in ("PRIVATE KEY", admin.token, PASSWORD):
        assert secret not in text


async def test_a_successful_login_writes_no_audit_line(
    auth: Auth, audit: pytest.LogCaptureFixture
) -> None:
    await register(auth)
    await auth.stub.Login(pb.LoginRequest(username="alice", password=PASSWORD))
    assert events(audit) == []


def test_an_audit_event_refuses_fields_outside_the_allowed_list() -> None:
    with pytest.raises(ValueError, match="password"):
        AuditEvent("login.failed", "failure", "", "", {"password": "x"})
