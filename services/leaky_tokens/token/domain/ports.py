"""The decision store port: one call per decision, its usage event recorded in the same step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from leaky_tokens.runtime.errors import AlreadyExistsError, UnavailableError
from leaky_tokens.token.domain.decision import (
    Allowed,
    Denied,
    Level,
    LevelStatus,
    Limiting,
    Snapshot,
)
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.reservation import Reserved, Settlement


class StoreUnavailableError(UnavailableError):
    """The decision store cannot be reached in time (the failure policy decides what next)."""


class StoreTimeoutError(StoreUnavailableError):
    """The decision store did not answer in time: it may be slow (or this process may be),
    not down (the failure policy trips only when timeouts persist, ADR 0054)."""


class ReservationIdTakenError(AlreadyExistsError):
    """Another subject holds a reservation with this id (ids are meant to be fresh)."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__(
            f"reservation id {reservation_id!r} is taken", reason="RESERVATION_ID_TAKEN"
        )
        self.reservation_id = reservation_id


class IdempotencyKeyReusedError(AlreadyExistsError):
    """A client key named another request of the same user and tenant (ADR 0031): refused,
    never replayed, so a key reused for another provider or size cannot borrow a decision."""

    def __init__(self, what: str, first: object, now: object) -> None:
        super().__init__(
            f"the idempotency key was used for a request with {what} {first}, not {now}",
            reason="IDEMPOTENCY_KEY_REUSED",
        )


def same_request(first: Subject, first_tokens: int, now: Subject, now_tokens: int) -> None:
    """Refuse a replay unless the key comes with the request it was first used for."""
    if first.provider != now.provider:
        raise IdempotencyKeyReusedError("provider", repr(first.provider), repr(now.provider))
    if first_tokens != now_tokens:
        raise IdempotencyKeyReusedError("tokens", first_tokens, now_tokens)


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is charged: a verified user, optionally inside an org, for one provider.

    The tenant (the partition key of events and of the store's shards) is the org when there
    is one, else the user: every level of one request lives with its tenant (ADR 0021).
    """

    user_id: str
    provider: str
    org_id: str | None = None

    @property
    def tenant(self) -> str:
        """`org:<id>` inside an org, else `user:<id>`."""
        return f"org:{self.org_id}" if self.org_id else f"user:{self.user_id}"


class EventKind(StrEnum):
    """What a usage event records."""

    ALLOWED = "allowed"
    DENIED = "denied"
    REFUNDED = "refunded"
    RESERVED = "reserved"
    RESERVE_DENIED = "reserve_denied"
    SETTLED = "settled"
    RELEASED = "released"
    CREDITED = "credited"
    REVERTED = "reverted"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One recorded decision; `event_id` is unique and stable, so relays de-duplicate by it.

    `causation_id` is the decision, reservation or grant the event follows from; `levels` are
    the levels debited (allowed, reserved, settled), refused (denied) or given back; `reason`
    names a denial's most severe refusal, why a reservation was released (`expired`) or why
    tokens were granted. A denial (consume or reserve) also carries every checked level's
    `statuses` and the refusing `limiting` levels; a settlement the `estimate` it settles; a
    reservation its `expires_at_ms`; a grant the ADMIN who `granted_by`.
    """

    event_id: str
    kind: EventKind
    occurred_at_ms: int
    tenant: str
    user_id: str
    org_id: str | None
    provider: str
    tokens: int
    causation_id: str
    levels: tuple[Level, ...] = ()
    reason: str | None = None
    overage: Mapping[Level, int] = field(default_factory=lambda: MappingProxyType({}))
    statuses: tuple[LevelStatus, ...] = ()
    limiting: tuple[Limiting, ...] = ()
    estimate: int = 0
    expires_at_ms: int = 0
    granted_by: str = ""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event and its position in its shard's log (opaque, increasing)."""

    position: str
    event: UsageEvent


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One consume: the levels' limits (`Policy.limits_for`), the tokens and the clock reading.

    `idempotency_key` (the client's, per user and tenant) answers a retry with the first
    allowed outcome while it stands: a denial and a refunded decision keep no key, so their
    retry is decided afresh, and a key first used with another provider or token count is
    refused (`IdempotencyKeyReusedError`, ADR 0031). The `decision_id` is fresh per request
    (the servicer's, never the client's) and becomes the allowed/denied event's id.
    `refundable=False` (Envoy's ShouldRateLimit, which never refunds) keeps no decision
    record unless an idempotency key needs one: less to store.
    """

    decision_id: str
    subject: Subject
    limits: LevelLimits
    tokens: int
    now_ms: int
    idempotency_key: str | None = None
    refundable: bool = True


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    """The decision, and whether it is the stored answer to an earlier request (a retry)."""

    decision_id: str
    result: Allowed | Denied
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """Tokens given back; `changed` is False when nothing was (unknown, denied, done before)."""

    decision_id: str
    refunded: int
    changed: bool


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """Reserve an estimate for `ttl_ms` under a fresh `reservation_id` (the servicer's).

    As for decisions, a retry is recognised by the client's `idempotency_key`, which then
    answers with the first reservation; a denial keeps no key (the retry is decided afresh).
    """

    reservation_id: str
    subject: Subject
    limits: LevelLimits
    estimate: int
    now_ms: int
    ttl_ms: int
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """The reservation (or the denial), and whether it answers an earlier request."""

    reservation_id: str
    result: Reserved | Denied
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CreditOutcome:
    """The purchased balance after a grant; `changed` is False for a repeated grant id."""

    grant_id: str
    balance: int
    changed: bool


@dataclass(frozen=True, slots=True)
class RevertOutcome:
    """A grant taken back: `reverted` tokens (at most the balance left), `balance` after it;
    `changed` is False for a repeated revert (which answers as the first did)."""

    grant_id: str
    reverted: int
    balance: int
    changed: bool


class DecisionStore(Protocol):
    """Every mutating call is one atomic step that also appends its usage event.

    Refund, settle and release use the limits stored with the decision or reservation, so
    the store can also release expired reservations on its own (`sweep_expired`).
    """

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        """Check and debit every level, all or nothing; a known idempotency key replays."""

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        """Give back up to `tokens` of an allowed decision, once; forget its idempotency key.
        `reason` (short printable text) says why, in the refund's event."""

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        """Debit an estimate as a reservation; a known id or idempotency key replays."""

    async def settle(
        self, subject: Subject, reservation_id: str, actual: int, now_ms: int
    ) -> Settlement | None:
        """Settle to the actual count (None: no such reservation for this subject)."""

    async def release(
        self, subject: Subject, reservation_id: str, now_ms: int
    ) -> Settlement | None:
        """Give the whole estimate back (None: no such reservation for this subject)."""

    async def credit_balance(
        self, subject: Subject, level: Level, tokens: int, grant_id: str, now_ms: int,
        granted_by: str = "", reason: str = "",
    ) -> CreditOutcome:  # fmt: skip
        """Add purchased tokens to the balance of the user or org quota level (USER/ORG_QUOTA);
        the event names the ADMIN who granted them and why. A grant id seen before (or
        reverted before) credits nothing and answers with the balance it left."""

    async def revert_credit(
        self, subject: Subject, level: Level, grant_id: str, now_ms: int, reason: str = ""
    ) -> RevertOutcome:
        """Take a grant's tokens back out of the balance, once (a compensation): at most what
        is left of the balance. An unknown grant id takes nothing and bars a later credit
        under it; a repeat changes nothing. Appends a `reverted` event when it changed."""

    async def read(self, subject: Subject, limits: LevelLimits, now_ms: int) -> Snapshot:
        """The levels' states leaked and rolled to `now_ms` (for GetQuota); changes nothing."""

    async def sweep_expired(self, now_ms: int) -> int:
        """Release the reservations whose time is up; returns how many."""

    @property
    def shard_count(self) -> int:
        """How many event logs `read_events` serves (0..shard_count-1)."""

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        """Up to `limit` events of one shard after `after` ("" or "0": from the start)."""

    async def ack_events(self, shard: int, upto: str) -> int:
        """Forget the shard's events up to and including `upto` (relayed); returns how many."""
