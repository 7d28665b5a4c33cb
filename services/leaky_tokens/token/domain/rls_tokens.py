"""Token limits through Envoy descriptors: a `token_bucket` rule charges the decision store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from leaky_tokens.token.domain.decision import Allowed, Denied, LevelStatus
from leaky_tokens.token.domain.policy import Policy
from leaky_tokens.token.domain.ports import DecisionRequest, DecisionStore, Subject


@dataclass(frozen=True, slots=True)
class TokenCharge:
    """`tokens` LLM tokens for `provider`, charged to the user named by the descriptor."""

    provider: str
    user_id: str
    tokens: int


def limiting_level(result: Allowed | Denied) -> LevelStatus:
    """The level a descriptor status reports: the limiting one if denied, else the tightest."""
    if isinstance(result, Denied):
        return next(s for s in result.statuses if s.level is result.level)
    return min(result.statuses, key=lambda s: s.remaining)


class TokenDescriptors:
    """Charges token descriptors to the user's levels, as a Consume would.

    Envoy sends no verified identity, so the user is the descriptor's value and the tier is
    the policy's default tier (no roles), without an org (ADR 0025). Envoy never refunds, so
    decisions keep no refund record (`refundable=False`).
    """

    def __init__(
        self, store: DecisionStore, policy: Callable[[], Policy], new_id: Callable[[], str]
    ) -> None:
        self._store = store
        self._policy = policy
        self._new_id = new_id

    async def charge(
        self, charges: Mapping[int, TokenCharge], now_ms: int
    ) -> dict[int, Allowed | Denied]:
        """Decide every charge (each in its own atomic step, concurrently), by position."""
        policy = self._policy()
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        order: Sequence[int] = list(charges)
        asks = []
        for i in order:
            c = charges[i]
            limits = policy.limits_for((), c.provider, None, now)
            subject = Subject(c.user_id, c.provider)
            req = DecisionRequest(
                self._new_id(), subject, limits, c.tokens, now_ms, refundable=False
            )
            asks.append(self._store.decide(req))
        outcomes = await asyncio.gather(*asks)
        return {i: o.result for i, o in zip(order, outcomes, strict=True)}
