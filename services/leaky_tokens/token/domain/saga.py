"""The purchase saga's state machine: states, steps, and what each step may do (pure rules).

A saga is one row (its `Purchase`); every participant step reads it, decides with `guard`
whether the step applies in its state, and leaves it with `apply`. Steps that do not apply
change nothing and emit nothing: that is what makes a redelivered event harmless.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class SagaStatus(StrEnum):
    """The saga's status as the API shows it (PurchaseStatus)."""

    STARTED = "STARTED"
    PAYMENT_RESERVED = "PAYMENT_RESERVED"
    TOKENS_ALLOCATED = "TOKENS_ALLOCATED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED})


class PaymentState(StrEnum):
    """Where the payment participant is with this saga."""

    NONE = "none"
    RESERVED = "reserved"
    DECLINED = "declined"
    CAPTURED = "captured"
    CAPTURE_FAILED = "capture_failed"
    RELEASED = "released"


class AllocationState(StrEnum):
    """Where the allocation participant is with this saga."""

    NONE = "none"
    ALLOCATED = "allocated"
    FAILED = "failed"
    REVERTED = "reverted"


class EventType(StrEnum):
    """The purchase topic's events (the EventEnvelope cases, by the saga's names)."""

    PURCHASE_REQUESTED = "purchase_requested"
    PAYMENT_RESERVED = "payment_reserved"
    PAYMENT_FAILED = "payment_failed"
    TOKENS_ALLOCATED = "tokens_allocated"
    ALLOCATION_FAILED = "allocation_failed"
    PAYMENT_CAPTURED = "payment_captured"
    PAYMENT_CAPTURE_FAILED = "payment_capture_failed"
    ALLOCATION_REVERTED = "allocation_reverted"
    PAYMENT_RELEASED = "payment_released"
    PURCHASE_COMPLETED = "purchase_completed"
    PURCHASE_FAILED = "purchase_failed"


class Step(StrEnum):
    """One participant step (also its row in the processed-steps table)."""

    RESERVE_PAYMENT = "payment.reserve"
    CAPTURE_PAYMENT = "payment.capture"
    RELEASE_PAYMENT = "payment.release"
    ALLOCATE = "allocation.allocate"
    REVERT_ALLOCATION = "allocation.revert"
    COMPLETE = "keeper.complete"
    FAIL = "keeper.fail"


# Which participant reacts to which event with which step (choreography: nobody orchestrates).
REACTIONS: dict[str, dict[EventType, Step]] = {
    "payment": {
        EventType.PURCHASE_REQUESTED: Step.RESERVE_PAYMENT,
        EventType.TOKENS_ALLOCATED: Step.CAPTURE_PAYMENT,
        EventType.ALLOCATION_FAILED: Step.RELEASE_PAYMENT,
        EventType.ALLOCATION_REVERTED: Step.RELEASE_PAYMENT,
    },
    "allocation": {
        EventType.PAYMENT_RESERVED: Step.ALLOCATE,
        EventType.PAYMENT_CAPTURE_FAILED: Step.REVERT_ALLOCATION,
    },
    "keeper": {
        EventType.PAYMENT_FAILED: Step.FAIL,
        EventType.PAYMENT_RELEASED: Step.FAIL,
        EventType.PAYMENT_CAPTURED: Step.COMPLETE,
    },
}

TIMED_OUT = "timed out"


@dataclass(frozen=True, slots=True)
class Purchase:
    """One saga: what was bought, for whom, and where each participant is."""

    saga_id: str
    user_id: str
    org_id: str | None
    provider: str
    tokens: int
    idempotency_key: str | None
    status: SagaStatus
    created_at: datetime
    updated_at: datetime
    failure_reason: str = ""
    payment_id: str = ""
    payment: PaymentState = PaymentState.NONE
    allocation: AllocationState = AllocationState.NONE

    @property
    def terminal(self) -> bool:
        """COMPLETED or FAILED: no step applies any more."""
        return self.status in TERMINAL

    def same_request(self, user_id: str, org_id: str | None, provider: str, tokens: int) -> bool:
        """Whether a replayed idempotency key comes with the request it was first used for."""
        return (self.user_id, self.org_id, self.provider, self.tokens) == (
            user_id,
            org_id,
            provider,
            tokens,
        )


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """One event a step emits; `event_id` is derived from the saga and the step, so the same
    step can never emit two different events (a consumer de-duplicates by it)."""

    type: EventType
    purchase: Purchase
    event_id: str
    causation_id: str
    occurred_at: datetime
    reason: str = ""
    tokens: int = 0  # what moved, when it differs from purchase.tokens (a partial revert)


def event_id(saga_id: str, what: str) -> str:
    """A stable UUID for the event `what` of one saga (uuid5: same inputs, same id)."""
    return str(uuid.uuid5(uuid.UUID(saga_id), what))


class IllegalTransitionError(ValueError):
    """A step was applied in a state it does not apply in (a bug, never a redelivery)."""


def guard(step: Step, p: Purchase, *, timed_out: bool = False) -> bool:
    """Whether `step` applies to the saga now; False means "already done or moot: skip".

    `timed_out` is recovery's view: a saga stuck before allocation is compensated
    (payment released) instead of pushed on.
    """
    if p.terminal:
        return False
    if step is Step.RESERVE_PAYMENT:
        return not timed_out and p.status is SagaStatus.STARTED and p.payment is PaymentState.NONE
    if step is Step.ALLOCATE:
        return (
            not timed_out
            and p.status is SagaStatus.PAYMENT_RESERVED
            and p.payment is PaymentState.RESERVED
            and p.allocation is AllocationState.NONE
        )
    if step is Step.CAPTURE_PAYMENT:
        return p.payment is PaymentState.RESERVED and p.allocation is AllocationState.ALLOCATED
    if step is Step.REVERT_ALLOCATION:
        return (
            p.payment is PaymentState.CAPTURE_FAILED and p.allocation is AllocationState.ALLOCATED
        )
    if step is Step.RELEASE_PAYMENT:
        if p.payment is PaymentState.CAPTURE_FAILED:
            return p.allocation is AllocationState.REVERTED
        if p.payment is PaymentState.RESERVED:
            return p.allocation is AllocationState.FAILED or (
                timed_out and p.allocation is AllocationState.NONE
            )
        return timed_out and p.payment is PaymentState.NONE
    if step is Step.COMPLETE:
        return p.payment is PaymentState.CAPTURED and p.allocation is AllocationState.ALLOCATED
    # Step.FAIL: once nothing is held any more (declined, or released after compensation).
    return p.payment in (PaymentState.DECLINED, PaymentState.RELEASED)


def pending_step(p: Purchase, *, timed_out: bool = False) -> Step | None:
    """The one step that moves the saga on from its state (what recovery runs), if any."""
    for step in Step:
        if guard(step, p, timed_out=timed_out):
            return step
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a step's effect came to: success, or a refusal with its reason."""

    ok: bool
    reason: str = ""
    payment_id: str = ""
    tokens: int = 0  # tokens actually reverted (a revert may find part of the balance spent)


def apply(
    step: Step, p: Purchase, outcome: Outcome, now: datetime, cause: str, *, timed_out: bool = False
) -> tuple[Purchase, list[SagaEvent]]:
    """The saga after `step` came to `outcome`, and the one event it emits."""
    if not guard(step, p, timed_out=timed_out):
        raise IllegalTransitionError(
            f"{step} does not apply to {p.status}/{p.payment}/{p.allocation}"
        )
    nxt, emitted = _next(step, p, outcome, timed_out)
    nxt = replace(nxt, updated_at=now)

    # A refusal names its own reason; a compensation or the end names why the saga failed.
    reason = outcome.reason or nxt.failure_reason
    eid = event_id(p.saga_id, emitted.value)
    return nxt, [SagaEvent(emitted, nxt, eid, cause, now, reason, outcome.tokens)]


def _next(step: Step, p: Purchase, o: Outcome, timed_out: bool) -> tuple[Purchase, EventType]:
    if step is Step.RESERVE_PAYMENT:
        if o.ok:
            reserved = replace(
                p, status=SagaStatus.PAYMENT_RESERVED, payment=PaymentState.RESERVED,
                payment_id=o.payment_id,
            )  # fmt: skip
            return reserved, EventType.PAYMENT_RESERVED
        declined = replace(p, payment=PaymentState.DECLINED, failure_reason=o.reason)
        return declined, EventType.PAYMENT_FAILED
    if step is Step.ALLOCATE:
        if o.ok:
            done = replace(
                p, status=SagaStatus.TOKENS_ALLOCATED, allocation=AllocationState.ALLOCATED
            )
            return done, EventType.TOKENS_ALLOCATED
        failed = replace(p, allocation=AllocationState.FAILED, failure_reason=o.reason)
        return failed, EventType.ALLOCATION_FAILED
    if step is Step.CAPTURE_PAYMENT:
        if o.ok:
            return replace(p, payment=PaymentState.CAPTURED), EventType.PAYMENT_CAPTURED
        lost = replace(p, payment=PaymentState.CAPTURE_FAILED, failure_reason=o.reason)
        return lost, EventType.PAYMENT_CAPTURE_FAILED
    if step is Step.REVERT_ALLOCATION:
        return replace(p, allocation=AllocationState.REVERTED), EventType.ALLOCATION_REVERTED
    if step is Step.RELEASE_PAYMENT:
        reason = p.failure_reason or (TIMED_OUT if timed_out else o.reason)
        released = replace(p, payment=PaymentState.RELEASED, failure_reason=reason)
        return released, EventType.PAYMENT_RELEASED
    if step is Step.COMPLETE:
        return replace(p, status=SagaStatus.COMPLETED), EventType.PURCHASE_COMPLETED
    failed_for_good = replace(
        p, status=SagaStatus.FAILED, failure_reason=p.failure_reason or "failed"
    )
    return failed_for_good, EventType.PURCHASE_FAILED
