"""Reserve / settle / release, quota reads and ADMIN grants through a real stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from leaky.token.v1 import limits_pb2 as lpb
from leaky.token.v1 import token_pb2 as pb
from tests.support.grpc_errors import reason, violations
from tests.support.token_service import TokenHarness, token_service


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[TokenHarness]:
    async with token_service(tmp_path) as harness:
        yield harness


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def quota(svc: TokenHarness, user: str = "user-1") -> pb.Quota:
    return await svc.stub.GetQuota(
        pb.GetQuotaRequest(user_id=user, provider="openai"), metadata=svc.auth(user)
    )


def reserve(tokens: int, **extra: object) -> pb.ReserveRequest:
    return pb.ReserveRequest(user_id="user-1", provider="openai", tokens=tokens, **extra)  # type: ignore[arg-type]


async def test_settle_refunds_what_the_estimate_overshot(svc: TokenHarness) -> None:
    held = await svc.stub.Reserve(reserve(50), metadata=svc.auth())
    r = held.reservation
    assert (r.state, r.reserved_tokens, r.user_id) == (pb.RESERVATION_STATE_OPEN, 50, "user-1")
    assert (r.expires_at.ToDatetime() - r.created_at.ToDatetime()) == timedelta(minutes=15)
    assert (await quota(svc)).window_used == 50
    settled = await svc.stub.Settle(
        pb.SettleRequest(reservation_id=r.reservation_id, actual_tokens=30), metadata=svc.auth()
    )
    assert (settled.refunded_tokens, settled.charged_tokens) == (20, 0)
    assert settled.reservation.state == pb.RESERVATION_STATE_SETTLED
    assert settled.reservation.actual_tokens == 30
    assert (await quota(svc)).window_used == 30
    again = await svc.stub.Settle(
        pb.SettleRequest(reservation_id=r.reservation_id, actual_tokens=30), metadata=svc.auth()
    )
    assert again.reservation.state == pb.RESERVATION_STATE_SETTLED  # idempotent
    assert (await quota(svc)).window_used == 30
    other = await refused(
        svc.stub.Settle(
            pb.SettleRequest(reservation_id=r.reservation_id, actual_tokens=40),
            metadata=svc.auth(),
        )
    )
    assert (other.code(), reason(other)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_SETTLED",
    )


async def test_settle_charges_an_undershot_estimate(svc: TokenHarness) -> None:
    held = await svc.stub.Reserve(reserve(20), metadata=svc.auth())
    settled = await svc.stub.Settle(
        pb.SettleRequest(reservation_id=held.reservation.reservation_id, actual_tokens=35),
        metadata=svc.auth(),
    )
    assert (settled.refunded_tokens, settled.charged_tokens) == (0, 15)
    assert (await quota(svc)).window_used == 35


async def test_release_gives_everything_back_once(svc: TokenHarness) -> None:
    held = await svc.stub.Reserve(reserve(60), metadata=svc.auth())
    rid = held.reservation.reservation_id
    for _ in range(2):
        done = await svc.stub.Release(pb.ReleaseRequest(reservation_id=rid), metadata=svc.auth())
        assert (done.released_tokens, done.reservation.state) == (
            60,
            pb.RESERVATION_STATE_RELEASED,
        )
    assert (await quota(svc)).window_used == 0
    error = await refused(
        svc.stub.Settle(pb.SettleRequest(reservation_id=rid, actual_tokens=5), metadata=svc.auth())
    )
    assert reason(error) == "RESERVATION_RELEASED"


async def test_an_unsettled_reservation_expires_and_is_released_by_the_store(
    svc: TokenHarness,
) -> None:
    ttl = duration_pb2.Duration(seconds=10)
    held = await svc.stub.Reserve(reserve(40, ttl=ttl), metadata=svc.auth())
    svc.clock.advance(seconds=11)
    assert svc.store is not None
    assert await svc.store.sweep_expired(int(svc.clock.now().timestamp() * 1000)) == 1
    assert (await quota(svc)).window_used == 0
    error = await refused(
        svc.stub.Settle(
            pb.SettleRequest(reservation_id=held.reservation.reservation_id, actual_tokens=40),
            metadata=svc.auth(),
        )
    )
    assert reason(error) == "RESERVATION_EXPIRED"


async def test_someone_elses_reservation_is_not_settled(svc: TokenHarness) -> None:
    held = await svc.stub.Reserve(reserve(10), metadata=svc.auth())
    rid = held.reservation.reservation_id
    error = await refused(
        svc.stub.Release(pb.ReleaseRequest(reservation_id=rid), metadata=svc.auth("user-2"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(
        svc.stub.Release(pb.ReleaseRequest(reservation_id="made-up"), metadata=svc.auth())
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")


async def test_a_reservation_over_the_limit_is_denied_with_the_levels(svc: TokenHarness) -> None:
    error = await refused(svc.stub.Reserve(reserve(101), metadata=svc.auth()))
    assert reason(error) == "REQUEST_EXCEEDS_CAPACITY"
    error = await refused(
        svc.stub.Reserve(reserve(10, ttl=duration_pb2.Duration(seconds=-1)), metadata=svc.auth())
    )
    assert violations(error) == ["ttl"]


async def test_quota_keeps_the_window_and_the_purchased_balance_apart(svc: TokenHarness) -> None:
    await svc.stub.Consume(
        pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=40), metadata=svc.auth()
    )
    q = await quota(svc)
    assert (q.window_allowance, q.window_used, q.window_remaining) == (150, 40, 110)
    assert (q.purchased_balance, q.total_tokens, q.remaining_tokens) == (0, 150, 110)
    assert (q.tier, q.window_unit) == ("USER", lpb.LIMIT_UNIT_DAY)
    assert q.reset_time.ToDatetime() - q.window_start.ToDatetime() == timedelta(days=1)


async def test_only_admin_grants_and_a_grant_lands_in_the_purchased_balance(
    svc: TokenHarness,
) -> None:
    grant = pb.GrantTokensRequest(
        user_id="user-1", provider="openai", tokens=500, reason="support", idempotency_key="g1"
    )
    error = await refused(svc.stub.GrantTokens(grant, metadata=svc.auth()))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY")
    admin = svc.auth("admin-1", "ADMIN")
    done = await svc.stub.GrantTokens(grant, metadata=admin)
    assert (done.grant_id, done.replayed, done.quota.purchased_balance) == ("g1", False, 500)
    again = await svc.stub.GrantTokens(grant, metadata=admin)
    assert again.replayed
    assert again.quota.purchased_balance == 500
    q = await quota(svc)
    assert (q.window_remaining, q.purchased_balance, q.remaining_tokens) == (150, 500, 650)
    # The balance is spent after the window: 150 + 50 of a 200-token day.
    for _ in range(2):
        await svc.stub.Consume(
            pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=100),
            metadata=svc.auth(),
        )
        svc.clock.advance(seconds=100)
    q = await quota(svc)
    assert (q.window_remaining, q.purchased_balance) == (0, 450)


async def test_a_grant_reason_and_keys_must_be_short_printable_text(svc: TokenHarness) -> None:
    admin = svc.auth("admin-1", "ADMIN")
    bad = pb.GrantTokensRequest(
        user_id="user-1", provider="openai", tokens=5, reason="a\x1eb", idempotency_key="k\x1e"
    )
    error = await refused(svc.stub.GrantTokens(bad, metadata=admin))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["reason", "idempotencyKey"]
    bad = pb.GrantTokensRequest(user_id="user-1", provider="openai", tokens=5, reason="x" * 201)
    error = await refused(svc.stub.GrantTokens(bad, metadata=admin))
    assert violations(error) == ["reason"]
