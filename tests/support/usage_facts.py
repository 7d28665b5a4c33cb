"""Usage facts for analytics tests: builders, random histories and the brute-force answers."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leaky_tokens.analytics.domain.facts import (
    FactKind,
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import Scope, ScopeKind
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import DAY_MS, MINUTE_MS

_ids = itertools.count(1)


def usage(
    at_ms: int,
    *,
    user: str = "u1",
    org: str = "",
    provider: str = "openai",
    tokens: int = 10,
    allowed: bool = True,
    kind: FactKind = FactKind.CONSUME,
    event_id: str | None = None,
) -> UsageFact:
    """One usage fact with a fresh event id unless one is given."""
    return UsageFact(
        event_id=event_id or f"e{next(_ids):08d}",
        occurred_at_ms=at_ms,
        kind=kind,
        provider=provider,
        user_id=user,
        org_id=org,
        tokens=tokens,
        allowed=allowed and kind.is_decision,
    )


def purchase(
    saga: str,
    state: PurchaseState,
    at_ms: int,
    *,
    user: str = "u1",
    org: str = "",
    tokens: int = 500,
    reason: str = "",
    event_id: str | None = None,
) -> PurchaseFact:
    """One purchase step; the event id defaults to the saga and state (stable, as uuid5)."""
    return PurchaseFact(
        event_id=event_id or f"{saga}:{state.value}",
        occurred_at_ms=at_ms,
        saga_id=saga,
        user_id=user,
        org_id=org,
        provider="openai",
        tokens=tokens,
        state=state,
        reason=reason,
    )


def sourced(facts: Iterable[UsageFact | PurchaseFact], first_offset: int = 0) -> list[SourcedFact]:
    """Facts as one partition of the usage topic delivered them."""
    return [
        SourcedFact("leaky.token.usage", 0, first_offset + i, fact) for i, fact in enumerate(facts)
    ]


USERS = tuple(f"user-{i}" for i in range(8))
ORGS = ("org-a", "org-b", "org-c")
PROVIDERS = ("gemini", "openai", "qwen")
KINDS = (
    (FactKind.CONSUME, 6),
    (FactKind.RESERVE, 2),
    (FactKind.REFUND, 1),
    (FactKind.SETTLE, 1),
    (FactKind.RELEASE, 1),
)


@dataclass(frozen=True)
class History:
    """What was delivered (duplicates included, in order) and the distinct facts."""

    delivered: list[UsageFact]
    facts: list[UsageFact]


def random_history(rng: random.Random, now_ms: int, n: int, days: int = 3) -> History:
    """`n` distinct facts over the `days` before now (and a few just after it), with about
    a fifth delivered twice, some in the same millisecond."""
    kinds = [k for k, weight in KINDS for _ in range(weight)]
    facts: list[UsageFact] = []
    for i in range(n):
        if facts and rng.random() < 0.05:
            at = facts[-1].occurred_at_ms  # same millisecond as the previous event
        else:
            at = now_ms - rng.randrange(days * DAY_MS) + rng.randrange(2 * MINUTE_MS)
        kind = rng.choice(kinds)
        facts.append(
            usage(
                at,
                user=rng.choice(USERS),
                org=rng.choice((*ORGS, "", "")),
                provider=rng.choice(PROVIDERS),
                tokens=rng.choice((0, 1, rng.randrange(1, 2000))),
                allowed=rng.random() < 0.7,
                kind=kind,
                event_id=f"r{i:05d}",
            )
        )
    delivered = list(facts)
    for fact in rng.sample(facts, n // 5):
        delivered.insert(rng.randrange(len(delivered) + 1), fact)
    return History(delivered, facts)


def in_scope(fact: UsageFact, scope: Scope) -> bool:
    if scope.kind is ScopeKind.USER:
        return fact.user_id == scope.id
    if scope.kind is ScopeKind.ORG:
        return fact.org_id == scope.id
    return True


def brute(
    facts: Sequence[UsageFact], scope: Scope, provider: str, start_ms: int, end_ms: int
) -> Totals:
    """Totals.of the facts of `provider` in `scope` with start <= occurred_at < end."""
    return Totals.of(
        f
        for f in facts
        if f.provider == provider and in_scope(f, scope) and start_ms <= f.occurred_at_ms < end_ms
    )
