"""What the analytics use cases need from storage: one port, two adapters (SQLite, Cassandra).

Write side: `project` takes facts in the order one source partition delivered them and is
idempotent: a fact seen again (a replay from an older offset, or the same event id relayed
twice at another offset) changes nothing, so the projection may be re-run from any committed
offset after a crash or a rebalance. Read side: raw latest events, rollup buckets per scope
and resolution, the providers seen, and the purchase history. The shared contract tests
(tests/integration/test_usage_store_contract.py) hold every adapter to this.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from leaky_tokens.analytics.domain.facts import PurchaseState, SourcedFact, UsageFact
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import Resolution
from leaky_tokens.runtime.errors import UnavailableError


class ScopeKind(enum.Enum):
    """Whose usage a query reads."""

    ALL = "all"  # every user of the provider (ADMIN only)
    USER = "user"  # one user's decisions, whatever org they were charged to
    ORG = "org"  # the decisions charged to one organization, any member's


@dataclass(frozen=True, slots=True)
class Scope:
    """A scope: ALL has id ""; USER and ORG name the user or organization."""

    kind: ScopeKind
    id: str = ""

    @classmethod
    def everyone(cls) -> Scope:
        return cls(ScopeKind.ALL)


def scopes_of(fact: UsageFact) -> tuple[Scope, ...]:
    """The scopes a fact counts in: everyone's, its user's and, if charged to one, its org's."""
    user = Scope(ScopeKind.USER, fact.user_id)
    if fact.org_id:
        return (Scope.everyone(), user, Scope(ScopeKind.ORG, fact.org_id))
    return (Scope.everyone(), user)


@dataclass(frozen=True, slots=True)
class PurchaseView:
    """A purchase's latest known state."""

    saga_id: str
    user_id: str
    org_id: str
    provider: str
    tokens: int
    state: PurchaseState
    reason: str
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class PurchaseTotals:
    """All-time purchase sums of a scope."""

    completed_purchases: int = 0
    completed_tokens: int = 0
    failed_purchases: int = 0


class UsageStoreUnavailableError(UnavailableError):
    """The store cannot be reached now; the projection pauses and retries, queries answer
    UNAVAILABLE."""


class UsageStore(Protocol):
    """Usage facts in, rollups and raw events out. Purchase facts are scoped to the buyer's
    user and, when set, org (USER/ORG scopes; ALL sees every purchase)."""

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        """Apply facts (in delivery order per (topic, partition)) exactly once each.

        Returns only when every fact is durable; raises UsageStoreUnavailableError (nothing
        or part applied: calling again with the same facts is safe and completes them).
        """

    async def latest(self, scope: Scope, provider: str, limit: int) -> list[UsageFact]:
        """The newest decision facts (CONSUME, RESERVE) of `provider` in `scope`, newest first
        (by occurred_at, then event id descending)."""

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        """The rollup of each bucket starting at one of `starts` (aligned to `resolution`);
        buckets without usage are absent. Totals of a bucket equal `Totals.of` its facts."""

    async def providers(self, scope: Scope) -> list[str]:
        """Every provider with at least one usage fact in `scope`, sorted."""

    async def purchases(self, scope: Scope, limit: int) -> list[PurchaseView]:
        """The scope's purchases, newest (created) first, each in its latest state."""

    async def purchase_totals(self, scope: Scope) -> PurchaseTotals:
        """Completed and failed purchase counts and completed tokens, all time."""

    async def close(self) -> None:
        """Release connections."""
