"""The purchase saga's state machine: every transition, refusals, and invariants (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaky_tokens.token.domain import saga
from leaky_tokens.token.domain.saga import (
    AllocationState,
    EventType,
    IllegalTransitionError,
    Outcome,
    PaymentState,
    Purchase,
    SagaStatus,
    Step,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SAGA = "6f1c2a52-7d0e-4c57-9d55-0a4b0e0c1f11"
OK = Outcome(ok=True, payment_id="pay-1")


def started() -> Purchase:
    return Purchase(SAGA, "u1", None, "openai", 50, "k1", SagaStatus.STARTED, T0, T0)


def step(p: Purchase, s: Step, outcome: Outcome = OK, **kw: bool) -> tuple[Purchase, EventType]:
    nxt, events = saga.apply(s, p, outcome, T0 + timedelta(seconds=1), "cause", **kw)
    assert len(events) == 1
    assert events[0].purchase == nxt
    assert events[0].causation_id == "cause"
    return nxt, events[0].type


def test_the_happy_path_reserves_allocates_captures_and_completes() -> None:
    p, kind = step(started(), Step.RESERVE_PAYMENT)
    assert (p.status, p.payment, p.payment_id, kind) == (
        SagaStatus.PAYMENT_RESERVED, PaymentState.RESERVED, "pay-1", EventType.PAYMENT_RESERVED,
    )  # fmt: skip
    p, kind = step(p, Step.ALLOCATE)
    assert (p.status, p.allocation, kind) == (
        SagaStatus.TOKENS_ALLOCATED, AllocationState.ALLOCATED, EventType.TOKENS_ALLOCATED,
    )  # fmt: skip
    p, kind = step(p, Step.CAPTURE_PAYMENT)
    assert (p.payment, kind) == (PaymentState.CAPTURED, EventType.PAYMENT_CAPTURED)
    p, kind = step(p, Step.COMPLETE)
    assert (p.status, kind, p.updated_at) == (
        SagaStatus.COMPLETED, EventType.PURCHASE_COMPLETED, T0 + timedelta(seconds=1),
    )  # fmt: skip
    assert saga.pending_step(p) is None
    assert saga.pending_step(p, timed_out=True) is None


def test_a_declined_payment_fails_with_its_reason_and_nothing_to_undo() -> None:
    p, kind = step(started(), Step.RESERVE_PAYMENT, Outcome(ok=False, reason="card declined"))
    assert (p.status, p.payment, kind) == (
        SagaStatus.STARTED, PaymentState.DECLINED, EventType.PAYMENT_FAILED,
    )  # fmt: skip
    assert saga.pending_step(p) is Step.FAIL
    p, kind = step(p, Step.FAIL)
    assert (p.status, p.failure_reason, kind) == (
        SagaStatus.FAILED, "card declined", EventType.PURCHASE_FAILED,
    )  # fmt: skip


def test_a_failed_allocation_releases_the_payment_then_fails() -> None:
    p, _ = step(started(), Step.RESERVE_PAYMENT)
    p, kind = step(p, Step.ALLOCATE, Outcome(ok=False, reason="too big"))
    assert (p.allocation, kind, saga.pending_step(p)) == (
        AllocationState.FAILED, EventType.ALLOCATION_FAILED, Step.RELEASE_PAYMENT,
    )  # fmt: skip
    p, kind = step(p, Step.RELEASE_PAYMENT)
    assert (p.payment, kind) == (PaymentState.RELEASED, EventType.PAYMENT_RELEASED)
    p, _ = step(p, Step.FAIL)
    assert (p.status, p.failure_reason) == (SagaStatus.FAILED, "too big")


def test_a_failed_capture_reverts_the_allocation_then_releases_then_fails() -> None:
    p, _ = step(started(), Step.RESERVE_PAYMENT)
    p, _ = step(p, Step.ALLOCATE)
    p, kind = step(p, Step.CAPTURE_PAYMENT, Outcome(ok=False, reason="capture failed"))
    assert (p.payment, kind, saga.pending_step(p)) == (
        PaymentState.CAPTURE_FAILED, EventType.PAYMENT_CAPTURE_FAILED, Step.REVERT_ALLOCATION,
    )  # fmt: skip
    p, kind = step(p, Step.REVERT_ALLOCATION, Outcome(ok=True, tokens=30))
    assert (p.allocation, kind) == (AllocationState.REVERTED, EventType.ALLOCATION_REVERTED)
    p, kind = step(p, Step.RELEASE_PAYMENT)
    assert kind is EventType.PAYMENT_RELEASED
    p, _ = step(p, Step.FAIL)
    assert (p.status, p.failure_reason) == (SagaStatus.FAILED, "capture failed")


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (started(), Step.RELEASE_PAYMENT),  # never reserved: release bars a late reserve
        (
            replace(started(), status=SagaStatus.PAYMENT_RESERVED, payment=PaymentState.RESERVED),
            Step.RELEASE_PAYMENT,  # compensated rather than allocated
        ),
        (
            replace(
                started(),
                status=SagaStatus.TOKENS_ALLOCATED,
                payment=PaymentState.RESERVED,
                allocation=AllocationState.ALLOCATED,
            ),
            Step.CAPTURE_PAYMENT,  # allocated: pushed on to completion
        ),
    ],
)
def test_recovery_compensates_before_allocation_and_completes_after(
    before: Purchase, expected: Step
) -> None:
    assert saga.pending_step(before, timed_out=True) is expected
    p, _ = step(before, expected, timed_out=True)
    if expected is Step.RELEASE_PAYMENT:
        assert (p.payment, p.failure_reason) == (PaymentState.RELEASED, saga.TIMED_OUT)
        p, _ = step(p, Step.FAIL)
        assert (p.status, p.failure_reason) == (SagaStatus.FAILED, "timed out")


def test_steps_out_of_their_state_are_refused() -> None:
    p = started()
    for s in (Step.ALLOCATE, Step.CAPTURE_PAYMENT, Step.REVERT_ALLOCATION, Step.COMPLETE):
        assert not saga.guard(s, p)
        with pytest.raises(IllegalTransitionError):
            saga.apply(s, p, OK, T0, "c")
    assert not saga.guard(Step.RELEASE_PAYMENT, p)  # only recovery releases an unreserved saga
    done, _ = step(started(), Step.RESERVE_PAYMENT)
    assert not saga.guard(Step.RESERVE_PAYMENT, done)  # a redelivered request: no second hold


def test_event_ids_are_stable_per_saga_and_event() -> None:
    assert saga.event_id(SAGA, "payment_reserved") == saga.event_id(SAGA, "payment_reserved")
    assert saga.event_id(SAGA, "payment_reserved") != saga.event_id(SAGA, "payment_failed")


outcomes = st.builds(Outcome, ok=st.booleans(), reason=st.sampled_from(["", "no"]))


@settings(deadline=None)  # pure and fast; a loaded machine's pause is no failure
@given(st.lists(st.tuples(st.sampled_from(list(Step)), outcomes, st.booleans()), max_size=40))
def test_any_order_of_deliveries_keeps_the_saga_consistent(
    attempts: list[tuple[Step, Outcome, bool]],
) -> None:
    """Whatever arrives in whatever order (redeliveries, recovery), a step applies only where
    its guard allows, each event happens at most once, and the end is consistent."""
    p, seen = started(), []
    for s, outcome, timed_out in attempts:
        if not saga.guard(s, p, timed_out=timed_out):
            with pytest.raises(IllegalTransitionError):
                saga.apply(s, p, outcome, T0, "c", timed_out=timed_out)
            continue
        p, kind = step(p, s, outcome, timed_out=timed_out)
        seen.append(kind)
        # Recovery can always move an unfinished saga on: no state is a dead end.
        assert p.terminal or saga.pending_step(p, timed_out=True) is not None
    assert len(seen) == len(set(seen))  # no event twice
    if p.status is SagaStatus.COMPLETED:
        assert (p.payment, p.allocation) == (PaymentState.CAPTURED, AllocationState.ALLOCATED)
    if p.status is SagaStatus.FAILED:
        # Nothing is left held or credited once FAILED: every compensation ran first.
        assert p.payment in (PaymentState.DECLINED, PaymentState.RELEASED)
        assert p.allocation is not AllocationState.ALLOCATED
        assert p.failure_reason
    if p.allocation is AllocationState.REVERTED:
        assert EventType.PAYMENT_CAPTURE_FAILED in seen
