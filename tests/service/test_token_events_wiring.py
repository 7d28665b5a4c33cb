"""The token service relays every decision it records: a consume reaches the event bus."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from leaky.events.v1 import events_pb2
from leaky.token.v1 import limits_pb2
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.adapters.event_bus import InProcessEventBus
from tests.support.token_service import token_service
from tests.support.wait import eventually


async def test_a_consume_is_published_once_as_a_usage_event(tmp_path: Path) -> None:
    bus = InProcessEventBus()
    seen: list[events_pb2.EventEnvelope] = []

    async def collect(topic: str, envelope: events_pb2.EventEnvelope) -> None:
        seen.append(envelope)

    bus.subscribe(collect)
    async with token_service(tmp_path, bus=bus) as svc:
        got = await svc.stub.Consume(
            pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=30),
            metadata=svc.auth(),
        )
        usage = await eventually(
            lambda: [e for e in seen if e.WhichOneof("event") == "token_usage_recorded"],
            10,
            what="the consume's usage event on the bus",
        )
    (event,) = usage
    assert event.token_usage_recorded.decision_id == got.decision_id
    assert event.token_usage_recorded.allowed
    assert event.partition_key  # the tenant: Kafka's key
    assert event.event_id


async def test_denials_settlements_and_grants_reach_the_bus_with_their_detail(
    tmp_path: Path,
) -> None:
    bus = InProcessEventBus()
    seen: list[events_pb2.EventEnvelope] = []

    async def collect(topic: str, envelope: events_pb2.EventEnvelope) -> None:
        seen.append(envelope)

    bus.subscribe(collect)
    async with token_service(tmp_path, bus=bus) as svc:
        admin = svc.auth("admin-1", "ADMIN")
        grant = pb.GrantTokensRequest(
            user_id="user-1", provider="openai", tokens=5, reason="support"
        )
        await svc.stub.GrantTokens(grant, metadata=admin)
        held = await svc.stub.Reserve(
            pb.ReserveRequest(user_id="user-1", provider="openai", tokens=90),
            metadata=svc.auth(),
        )
        with pytest.raises(grpc.aio.AioRpcError):  # 10 tokens of room left in the bucket
            await svc.stub.Reserve(
                pb.ReserveRequest(user_id="user-1", provider="openai", tokens=30),
                metadata=svc.auth(),
            )
        svc.provider.fail = grpc.StatusCode.PERMISSION_DENIED  # not retried: one refund
        with pytest.raises(grpc.aio.AioRpcError):
            await svc.stub.Consume(
                pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=5),
                metadata=svc.auth(),
            )
        rid = held.reservation.reservation_id
        await svc.stub.Settle(
            pb.SettleRequest(reservation_id=rid, actual_tokens=60), metadata=svc.auth()
        )
        cases = {"tokens_granted", "tokens_reserved", "reservation_settled", "tokens_refunded"}
        await eventually(
            lambda: len([e for e in seen if e.WhichOneof("event") in cases]) >= 5,
            10,
            what="the grant, both reservations and the settlement on the bus",
        )
    by_case: dict[str, list[events_pb2.EventEnvelope]] = {}
    for env in seen:
        by_case.setdefault(env.WhichOneof("event") or "", []).append(env)
    (granted,) = by_case["tokens_granted"]
    assert (granted.tokens_granted.granted_by, granted.tokens_granted.reason) == (
        "admin-1",
        "support",
    )
    reserved, refused = (e.tokens_reserved for e in by_case["tokens_reserved"])
    assert (reserved.allowed, reserved.reservation_id) == (True, rid)
    assert reserved.HasField("expires_at")
    assert (refused.allowed, refused.reason) == (False, events_pb2.DECISION_REASON_RATE_LIMITED)
    over = [s for s in refused.limits if s.code == limits_pb2.LIMIT_CODE_OVER_LIMIT]
    assert [(s.level, s.limit, s.remaining) for s in over] == [
        (limits_pb2.LIMIT_LEVEL_USER_BUCKET, 100, 10)
    ]
    (settled,) = (e.reservation_settled for e in by_case["reservation_settled"])
    assert (settled.reserved_tokens, settled.actual_tokens) == (90, 60)
    assert (settled.refunded_tokens, settled.charged_tokens) == (30, 0)
    assert {d.tokens for d in settled.debits} == {-30}
    (refund,) = (e.tokens_refunded for e in by_case["tokens_refunded"])
    assert (refund.reason, refund.tokens) == ("provider call failed", 5)
