"""Reserve an estimate, settle to the actual count or release; idempotent; expiry is pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from leaky_tokens.token.domain.decision import (
    Debit,
    Denied,
    Level,
    LevelStatus,
    Snapshot,
    charge,
    decide,
    refund,
)


class ReservationStatus(StrEnum):
    """Where a reservation is in its life; only PENDING can change."""

    PENDING = "pending"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Reservation:
    """An estimate debited up front; `id` comes from the caller, `expires_at_ms` from the TTL.

    After settling, `actual` is the count charged in the end and `overage` what did not fit
    per level (charged in the usage event, forgiven by the limiter: ADR 0019).
    """

    id: str
    estimate: int
    expires_at_ms: int
    debit: Debit
    status: ReservationStatus = ReservationStatus.PENDING
    actual: int | None = None
    overage: Mapping[Level, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Reserved:
    """The estimate fits every level: the new states, the reservation and the statuses."""

    snapshot: Snapshot
    reservation: Reservation
    statuses: tuple[LevelStatus, ...]


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of settle or release; `changed` is False for a repeated call (no effect).

    `refunded` and `charged` are tokens given back and taken beyond the estimate.
    """

    snapshot: Snapshot
    reservation: Reservation
    refunded: int = 0
    charged: int = 0
    changed: bool = True


def reserve(
    snapshot: Snapshot, reservation_id: str, estimate: int, now_ms: int, ttl_ms: int
) -> Reserved | Denied:
    """Debit `estimate` on every level, all or nothing, as a reservation expiring after `ttl_ms`."""
    if ttl_ms <= 0:
        raise ValueError("a reservation needs a positive time to live")
    outcome = decide(snapshot, estimate, now_ms)
    if isinstance(outcome, Denied):
        return outcome
    held = Reservation(reservation_id, estimate, now_ms + ttl_ms, outcome.debit)
    return Reserved(outcome.snapshot, held, outcome.statuses)


def settle(snapshot: Snapshot, held: Reservation, actual: int, now_ms: int) -> Settlement:
    """Settle to `actual`: refund what the estimate overshot or charge what it undershot.

    An excess is charged as far as each level has room and never refused (the tokens were
    already spent); what does not fit is reported per level as overage. A reservation that is
    no longer PENDING is returned unchanged with `changed=False`.
    """
    if actual < 0:
        raise ValueError("actual tokens must not be negative")
    if held.status is not ReservationStatus.PENDING:
        return Settlement(snapshot, held, changed=False)
    if actual <= held.estimate:
        back = held.estimate - actual
        after = refund(snapshot, held.debit, back, now_ms) if back else snapshot
        done = replace(held, status=ReservationStatus.SETTLED, actual=actual)
        return Settlement(after, done, refunded=back)
    excess = actual - held.estimate
    charged = charge(snapshot, excess, now_ms)
    done = replace(held, status=ReservationStatus.SETTLED, actual=actual, overage=charged.overage)
    return Settlement(charged.snapshot, done, charged=excess)


def release(snapshot: Snapshot, held: Reservation, now_ms: int) -> Settlement:
    """Refund the whole estimate; a reservation that is no longer PENDING stays as it is."""
    if held.status is not ReservationStatus.PENDING:
        return Settlement(snapshot, held, changed=False)
    after = refund(snapshot, held.debit, held.estimate, now_ms)
    done = replace(held, status=ReservationStatus.RELEASED, actual=0)
    return Settlement(after, done, refunded=held.estimate)


def expire(reservations: Iterable[Reservation], now_ms: int) -> tuple[Reservation, ...]:
    """The PENDING reservations whose time is up at `now_ms`: the store releases each of them."""
    return tuple(
        r
        for r in reservations
        if r.status is ReservationStatus.PENDING and r.expires_at_ms <= now_ms
    )
