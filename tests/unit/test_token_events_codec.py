"""The usage-event codec: store events <-> leaky.events.v1 envelopes, deterministic bytes."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from leaky.events.v1 import events_pb2 as ev
from leaky.token.v1 import limits_pb2
from leaky_tokens.token.adapters import event_codec as codec
from leaky_tokens.token.domain.decision import Level, LevelStatus, Limiting, Reason
from leaky_tokens.token.domain.ports import EventKind, UsageEvent

T0 = 1_780_000_000_123


def event(kind: EventKind, **changes: object) -> UsageEvent:
    base = UsageEvent(
        event_id="d-1",
        kind=kind,
        occurred_at_ms=T0,
        tenant="org:acme",
        user_id="alice",
        org_id="acme",
        provider="openai",
        tokens=40,
        causation_id="d-1",
        levels=(Level.USER_BUCKET, Level.ORG_BUCKET, Level.USER_QUOTA),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


STATUSES = (
    LevelStatus(Level.USER_BUCKET, 100, 10, 90_000),
    LevelStatus(Level.ORG_BUCKET, 500, 0, 500_000),
    LevelStatus(Level.USER_QUOTA, 150, 0, 3_600_000),
)
LIMITING = (
    Limiting(Level.ORG_BUCKET, Reason.REQUEST_EXCEEDS_CAPACITY, None),
    Limiting(Level.USER_QUOTA, Reason.QUOTA_EXHAUSTED, 3_600_000),
)
REFUSED: dict[str, object] = {
    "levels": (Level.ORG_BUCKET, Level.USER_QUOTA),
    "statuses": STATUSES,
    "limiting": LIMITING,
}

EVENTS = [
    event(EventKind.ALLOWED),
    event(
        EventKind.DENIED,
        levels=(),
        reason="QUOTA_EXHAUSTED",
        tenant="user:alice",
        org_id=None,
    ),
    event(EventKind.DENIED, reason="REQUEST_EXCEEDS_CAPACITY", **REFUSED),
    event(
        EventKind.RESERVE_DENIED,
        event_id="r-9",
        causation_id="r-9",
        reason="RATE_LIMITED",
        levels=(Level.USER_BUCKET,),
        statuses=STATUSES[:1],
        limiting=(Limiting(Level.USER_BUCKET, Reason.RATE_LIMITED, 20_000),),
    ),
    event(EventKind.RESERVED, event_id="r-2", causation_id="r-2", expires_at_ms=T0 + 60_000),
    event(EventKind.REFUNDED, event_id="d-1:refund", reason="provider call failed"),
    event(EventKind.RESERVED, event_id="r-1", causation_id="r-1"),
    event(
        EventKind.SETTLED,
        event_id="r-1:settle",
        causation_id="r-1",
        estimate=30,
        overage=MappingProxyType({Level.USER_BUCKET: 5}),
    ),
    event(EventKind.RELEASED, event_id="r-1:release", causation_id="r-1", reason="expired"),
    event(EventKind.RELEASED, event_id="r-2:release", causation_id="r-2"),
    event(EventKind.CREDITED, event_id="g-1", causation_id="g-1", levels=(Level.ORG_QUOTA,)),
    event(
        EventKind.CREDITED,
        event_id="g-2",
        causation_id="g-2",
        levels=(Level.ORG_QUOTA,),
        granted_by="admin-1",
        reason="support",
    ),
]


@pytest.mark.parametrize("stored", EVENTS, ids=lambda e: f"{e.kind}-{e.event_id}")
def test_every_kind_survives_the_wire_and_reads_back_as_recorded(stored: UsageEvent) -> None:
    value = codec.encode(stored)
    assert codec.usage_event(codec.decode(value)) == stored
    assert codec.encode(stored) == value  # deterministic: a re-sent event has the same bytes


def test_the_headers_sit_outside_the_oneof() -> None:
    env = codec.envelope(event(EventKind.REFUNDED, event_id="d-1:refund"))
    assert env.event_id == "d-1:refund"
    assert env.partition_key == "org:acme"
    assert (env.occurred_at.seconds, env.occurred_at.nanos) == (T0 // 1000, 123_000_000)
    assert env.causation_id == "d-1"  # the allowed event it follows from
    assert env.correlation_id == "d-1"
    assert env.source == "token"


def test_a_flows_first_event_has_no_cause() -> None:
    env = codec.envelope(event(EventKind.ALLOWED))
    assert env.causation_id == ""
    assert env.correlation_id == "d-1"


def test_an_allowed_decision_lists_each_levels_debit() -> None:
    body = codec.envelope(event(EventKind.ALLOWED)).token_usage_recorded
    assert body.allowed
    assert body.reason == ev.DECISION_REASON_ALLOWED
    assert [(d.level, d.tokens) for d in body.debits] == [
        (limits_pb2.LIMIT_LEVEL_USER_BUCKET, 40),
        (limits_pb2.LIMIT_LEVEL_ORG_BUCKET, 40),
        (limits_pb2.LIMIT_LEVEL_USER_QUOTA_WINDOW, 40),
    ]


def test_a_denial_carries_its_reason_and_no_debits() -> None:
    stored = event(EventKind.DENIED, reason="RATE_LIMITED")
    body = codec.envelope(stored).token_usage_recorded
    assert not body.allowed
    assert body.reason == ev.DECISION_REASON_RATE_LIMITED
    assert list(body.debits) == []


def test_refunds_and_releases_give_back_negative_tokens() -> None:
    refund = codec.envelope(event(EventKind.REFUNDED, event_id="x")).tokens_refunded
    assert {d.tokens for d in refund.debits} == {-40}
    released = codec.envelope(
        event(EventKind.RELEASED, event_id="r:release", causation_id="r", reason="expired")
    ).reservation_released
    assert released.expired
    assert released.reservation_id == "r"
    assert {d.tokens for d in released.debits} == {-40}


def test_the_tenant_is_the_partition_key_and_ids_of_users_are_kept_apart() -> None:
    env = codec.envelope(event(EventKind.ALLOWED, tenant="user:bob", org_id=None, user_id="bob"))
    assert env.partition_key == "user:bob"
    assert env.token_usage_recorded.org_id == ""


@pytest.mark.parametrize("value", [b"\xff\xff\xff", ev.EventEnvelope().SerializeToString()])
def test_a_value_that_is_no_envelope_is_refused(value: bytes) -> None:
    with pytest.raises(codec.EventCodecError):
        codec.decode(value)


def test_an_envelope_of_another_area_is_not_a_usage_event() -> None:
    env = ev.EventEnvelope(event_id="s-1", purchase_requested=ev.PurchaseRequested(saga_id="s"))
    with pytest.raises(codec.EventCodecError, match="purchase_requested"):
        codec.usage_event(env)


def test_a_denial_names_each_level_it_was_checked_against() -> None:
    body = codec.envelope(event(EventKind.DENIED, reason="QUOTA_EXHAUSTED", **REFUSED))
    limits = body.token_usage_recorded.limits
    assert [(s.name, s.code, s.limit, s.remaining) for s in limits] == [
        ("openai/user-bucket", limits_pb2.LIMIT_CODE_OK, 100, 10),
        ("openai/org-bucket", limits_pb2.LIMIT_CODE_OVER_LIMIT, 500, 0),
        ("openai/user-quota", limits_pb2.LIMIT_CODE_OVER_LIMIT, 150, 0),
    ]
    assert not limits[1].HasField("retry_after")  # no wait lets a too-large request in
    assert limits[2].retry_after.seconds == 3600
    assert limits[0].reset_after.seconds == 90


def test_a_reserve_denial_is_a_tokens_reserved_that_holds_nothing() -> None:
    stored = event(EventKind.RESERVE_DENIED, event_id="r-9", causation_id="r-9", **REFUSED)
    body = codec.envelope(stored).tokens_reserved
    assert (body.allowed, body.reservation_id, body.decision_id) == (False, "", "r-9")
    assert list(body.debits) == []
    assert not body.HasField("expires_at")
    assert len(body.limits) == 3


@pytest.mark.parametrize(
    ("estimate", "actual", "refunded", "charged", "nets"),
    [(30, 40, 0, 10, [5, 10, 10]), (30, 12, 18, 0, [-18, -18, -18]), (30, 30, 0, 0, [0, 0, 0])],
)
def test_a_settlement_carries_the_estimate_and_each_levels_net(
    estimate: int, actual: int, refunded: int, charged: int, nets: list[int]
) -> None:
    overage = MappingProxyType({Level.USER_BUCKET: 5} if actual > estimate else {})
    stored = event(
        EventKind.SETTLED, event_id="r:settle", causation_id="r", tokens=actual,
        estimate=estimate, overage=overage,
    )  # fmt: skip
    body = codec.envelope(stored).reservation_settled
    assert (body.reserved_tokens, body.actual_tokens) == (estimate, actual)
    assert (body.refunded_tokens, body.charged_tokens) == (refunded, charged)
    # The bucket that lacked room for 5 of the excess moved by the rest; it bills them.
    assert [d.tokens for d in body.debits] == nets
