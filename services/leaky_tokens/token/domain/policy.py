"""The token policy as immutable values: providers, tiers from roles, org plans, windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.decision import BucketSlot, Level, QuotaSlot, Snapshot
from leaky_tokens.token.domain.quota import QuotaLimit, QuotaState
from leaky_tokens.token.domain.rls_config import RateLimitConfig
from leaky_tokens.token.domain.units import MILLI
from leaky_tokens.token.domain.windows import QuotaWindow, window_bounds


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider's base bucket: `capacity` tokens leaking `rate_milli` / 1000 tokens a second."""

    name: str
    capacity: int
    rate_milli: int

    @property
    def leak_rate(self) -> Decimal:
        """Tokens per second, exactly as written in the policy."""
        return Decimal(self.rate_milli) / MILLI


def scaled(value: int, multiplier: Decimal) -> int:
    """`value * multiplier` rounded half up, at least 1: the only rounding, done at load."""
    return max(1, int((value * multiplier).to_integral_value(ROUND_HALF_UP)))


@dataclass(frozen=True, slots=True)
class Plan:
    """Multipliers over the providers' buckets and quota allowances (tokens per window).

    `quota_tokens` applies to every provider unless `provider_quota_tokens` names it; None
    means no quota level at all (only the bucket limits the subject). `buckets` holds the
    effective bucket of every provider, computed once when the policy is loaded.
    """

    name: str
    capacity_multiplier: Decimal
    rate_multiplier: Decimal
    quota_tokens: int | None
    provider_quota_tokens: Mapping[str, int | None]
    buckets: Mapping[str, BucketLimit]

    def bucket(self, provider: str) -> BucketLimit:
        """The effective bucket for `provider` (KeyError for an unknown provider)."""
        return self.buckets[provider]

    def quota_allowance(self, provider: str) -> int | None:
        """Tokens per window for `provider`, or None when no quota applies."""
        return self.provider_quota_tokens.get(provider, self.quota_tokens)


@dataclass(frozen=True, slots=True)
class Tier:
    """A plan chosen by a JWT role; the matching role with the highest `priority` wins."""

    name: str
    priority: int
    plan: Plan


def role_name(role: str) -> str:
    """A role as tiers are keyed: upper case, without Spring's `ROLE_` prefix."""
    upper = role.strip().upper()
    return upper.removeprefix("ROLE_")


class UnknownProviderError(InvalidArgumentError):
    """The request names a provider the policy does not define."""

    reason = "UNKNOWN_PROVIDER"

    def __init__(self, provider: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known))
        super().__init__([FieldViolation("provider", f"unknown provider '{provider}' ({names})")])
        self.provider = provider


@dataclass(frozen=True, slots=True)
class LevelLimits:
    """The limit of every level that applies to one request; the store loads their states."""

    buckets: Mapping[Level, BucketLimit]
    quotas: Mapping[Level, QuotaLimit]

    def snapshot(
        self,
        bucket_states: Mapping[Level, BucketState],
        quota_states: Mapping[Level, QuotaState],
    ) -> Snapshot:
        """Pair limits with stored states; a level with no stored state starts fresh."""
        return Snapshot(
            {
                lv: BucketSlot(lim, bucket_states.get(lv, BucketState()))
                for lv, lim in self.buckets.items()
            },
            {
                lv: QuotaSlot(lim, quota_states.get(lv, QuotaState()))
                for lv, lim in self.quotas.items()
            },
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the token service decides by; replacing it is one reference assignment.

    Values are immutable, so a decision in flight keeps the policy it started with while a
    reload swaps in the next one.
    """

    source: str
    providers: Mapping[str, Provider]
    tiers: Mapping[str, Tier]
    default_tier: str
    org_default: Plan
    org_plans: Mapping[str, Plan]
    window: QuotaWindow
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    domain: str = "leaky"

    def tier_for(self, roles: Iterable[str]) -> Tier:
        """The tier of the highest-priority role that has one, else the default tier."""
        found = [self.tiers[n] for n in map(role_name, roles) if n in self.tiers]
        if not found:
            return self.tiers[self.default_tier]
        return max(found, key=lambda t: t.priority)

    def org_plan(self, org_id: str) -> Plan:
        """The plan of an organization: its override, else the default org plan."""
        return self.org_plans.get(org_id, self.org_default)

    def limits_for(
        self, roles: Iterable[str], provider: str, org_id: str | None, now: datetime
    ) -> LevelLimits:
        """Every level one request meets: the user's tier, and the org's plan with an org id."""
        if provider not in self.providers:
            raise UnknownProviderError(provider, self.providers)
        plans = [(Level.USER_BUCKET, Level.USER_QUOTA, self.tier_for(roles).plan)]
        if org_id:
            plans.append((Level.ORG_BUCKET, Level.ORG_QUOTA, self.org_plan(org_id)))
        buckets: dict[Level, BucketLimit] = {}
        quotas: dict[Level, QuotaLimit] = {}
        for bucket_level, quota_level, plan in plans:
            buckets[bucket_level] = plan.bucket(provider)
            limit = self.quota_limit(plan, provider, now)
            if limit is not None:
                quotas[quota_level] = limit
        return LevelLimits(buckets, quotas)

    def quota_limit(self, plan: Plan, provider: str, now: datetime) -> QuotaLimit | None:
        """The quota level of `plan` for `provider` in the window holding `now`, if any."""
        allowance = plan.quota_allowance(provider)
        if allowance is None:
            return None
        bounds = window_bounds(self.window, now)
        return QuotaLimit(allowance, bounds.start_ms, bounds.end_ms)
