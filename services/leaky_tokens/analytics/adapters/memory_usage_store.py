"""The UsageStore port in memory: for fast tests and a process that keeps nothing.

It holds the port's contract exactly as the SQLite and Cassandra stores do (the shared
contract tests run over all of them): an event id seen before changes nothing; every usage
fact counts in each of its scopes (ports.scopes_of) and in its minute, hour and day bucket;
a purchase is its saga's latest state, a terminal state is final and the saga was created at
its earliest event. Nothing survives the process.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

from leaky_tokens.analytics.domain.facts import (
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import (
    PurchaseTotals,
    PurchaseView,
    Scope,
    ScopeKind,
    UsageStoreUnavailableError,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import RESOLUTIONS, Resolution

_Key = tuple[Scope, str]  # (scope, provider)


class InMemoryUsageStore:
    """Rollups, latest decisions and purchases in dicts.

    `down` makes every call raise UsageStoreUnavailableError (tests of the outage path).
    """

    def __init__(self) -> None:
        self.down = False
        self._seen: set[str] = set()
        self._decisions: dict[_Key, list[UsageFact]] = defaultdict(list)
        self._buckets: dict[tuple[_Key, Resolution], dict[int, Totals]] = defaultdict(dict)
        self._providers: dict[Scope, set[str]] = defaultdict(set)
        self._purchases: dict[str, PurchaseView] = {}

    def _check(self) -> None:
        if self.down:
            raise UsageStoreUnavailableError("the in-memory usage store is down (test)")

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        self._check()
        for sourced in facts:
            fact = sourced.fact
            if fact.event_id in self._seen:
                continue
            self._seen.add(fact.event_id)
            if isinstance(fact, UsageFact):
                self._project_usage(fact)
            else:
                self._project_purchase(fact)

    def _project_usage(self, fact: UsageFact) -> None:
        for scope in scopes_of(fact):
            key = (scope, fact.provider)
            self._providers[scope].add(fact.provider)
            if fact.kind.is_decision:
                self._decisions[key].append(fact)
            for resolution in RESOLUTIONS:
                buckets = self._buckets[(key, resolution)]
                start = resolution.floor(fact.occurred_at_ms)
                bucket = buckets.get(start)
                if bucket is None:
                    bucket = buckets[start] = Totals()
                bucket.add(fact)

    def _project_purchase(self, fact: PurchaseFact) -> None:
        at = fact.occurred_at_ms
        view = self._purchases.get(fact.saga_id)
        if view is None:
            self._purchases[fact.saga_id] = PurchaseView(
                fact.saga_id, fact.user_id, fact.org_id, fact.provider, fact.tokens,
                fact.state, fact.reason, at, at,
            )  # fmt: skip
            return
        created = min(view.created_at_ms, at)
        if view.state.terminal:
            # Final: a late or replayed earlier step never moves it back; it may only tell
            # that the saga began earlier than the steps seen so far.
            self._purchases[fact.saga_id] = replace(view, created_at_ms=created)
        elif fact.state.terminal or at >= view.updated_at_ms:
            self._purchases[fact.saga_id] = replace(
                view, state=fact.state, reason=fact.reason, created_at_ms=created,
                updated_at_ms=max(view.updated_at_ms, at),
            )  # fmt: skip
        else:  # an older step arriving late: the state stays the newer one
            self._purchases[fact.saga_id] = replace(view, created_at_ms=created)

    async def latest(self, scope: Scope, provider: str, limit: int) -> list[UsageFact]:
        self._check()
        decisions = self._decisions.get((scope, provider), [])
        return heapq.nlargest(limit, decisions, key=lambda f: (f.occurred_at_ms, f.event_id))

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        self._check()
        stored = self._buckets.get(((scope, provider), resolution), {})
        found: dict[int, Totals] = {}
        for start in starts:
            if start % resolution.value:
                raise ValueError(f"{start} is not the start of a {resolution.name} bucket")
            bucket = stored.get(start)
            if bucket is not None:
                found[start] = copy = Totals()
                copy.merge(bucket)
        return found

    async def providers(self, scope: Scope) -> list[str]:
        self._check()
        return sorted(self._providers.get(scope, ()))

    def _scoped(self, scope: Scope) -> list[PurchaseView]:
        if scope.kind is ScopeKind.ALL:
            return list(self._purchases.values())
        if scope.kind is ScopeKind.USER:
            return [p for p in self._purchases.values() if p.user_id == scope.id]
        return [p for p in self._purchases.values() if p.org_id and p.org_id == scope.id]

    async def purchases(self, scope: Scope, limit: int) -> list[PurchaseView]:
        self._check()
        views = self._scoped(scope)
        return heapq.nlargest(limit, views, key=lambda p: (p.created_at_ms, p.saga_id))

    async def purchase_totals(self, scope: Scope) -> PurchaseTotals:
        self._check()
        views = self._scoped(scope)
        completed = [p for p in views if p.state is PurchaseState.COMPLETED]
        failed = sum(1 for p in views if p.state is PurchaseState.FAILED)
        return PurchaseTotals(len(completed), sum(p.tokens for p in completed), failed)

    async def close(self) -> None:
        """Nothing to release."""
