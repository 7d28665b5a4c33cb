"""ShouldRateLimit's decision: descriptors -> limits (config, replaces, overrides) -> statuses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.token.domain.decision import Allowed, Denied, LevelStatus
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep
from leaky_tokens.token.domain.request_window import window_ms
from leaky_tokens.token.domain.rls_config import (
    RateLimit,
    RateLimitConfig,
    Unit,
    apply_replaces,
)
from leaky_tokens.token.domain.rls_tokens import TokenCharge, limiting_level

UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One request descriptor: its entries, its hits, and Envoy's optional limit override."""

    entries: tuple[tuple[str, str], ...]
    hits: int = 1
    override: tuple[int, Unit] | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    """What a descriptor meets: nothing, an unlimited rule, a counted rule or a token bucket."""

    limit: RateLimit | None
    hit: CounterHit | None = None
    charge: TokenCharge | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """One descriptor's answer (upstream's DescriptorStatus, before the wire)."""

    over: bool
    limit: RateLimit | None = None  # current_limit; None when no counted rule applied
    remaining: int = 0
    reset_after_ms: int = 0
    shadowed: bool = False  # over its limit in shadow mode, answered OK
    tokens: LevelStatus | None = None  # a token_bucket rule: the level it reports


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer: overall over or not, per-descriptor statuses, the status headers describe."""

    over: bool
    statuses: tuple[Status, ...]
    headline: Status | None


def plan(config: RateLimitConfig, domain: str, descriptors: Sequence[Descriptor]) -> list[Planned]:
    """Match every descriptor as upstream does, then drop the rules others `replace`.

    A request-side override (Envoy's `limit` on the descriptor) replaces the configured rule,
    counted on the descriptor's own entries, as upstream does. Unlimited rules and token
    buckets count no requests.
    """
    matches = apply_replaces([config.match(domain, d.entries) for d in descriptors])
    out: list[Planned] = []
    for i, (d, m) in enumerate(zip(descriptors, matches, strict=True)):
        if d.override is not None:
            rpu, unit = d.override
            key = ".".join([domain, *(f"{k}_{v}" for k, v in d.entries)])
            limit = RateLimit(key, rpu, unit)
            out.append(Planned(limit, CounterHit(key, rpu, window_ms(limit), d.hits)))
        elif m is None:
            out.append(Planned(None))
        elif m.limit.token_bucket:
            # The leaf entry's value names the user (the rule sits at the last entry).
            user = d.entries[-1][1]
            if not user or "\x1e" in user or "\x1f" in user:
                where = f"descriptors[{i}].entries[{len(d.entries) - 1}].value"
                raise InvalidArgumentError([FieldViolation(where, "a user id, not empty")])
            charge = TokenCharge(m.limit.token_bucket, user, d.hits)
            out.append(Planned(m.limit, charge=charge))
        elif m.limit.unlimited:
            out.append(Planned(m.limit))
        else:
            lim = m.limit
            hit = CounterHit(m.counter_key, lim.requests_per_unit, window_ms(lim), d.hits)
            if lim.shadow_mode or lim.quota_mode:
                hit = CounterHit(hit.key, hit.limit, hit.window_ms, hit.hits, enforced=False)
            out.append(Planned(lim, hit))
    return out


def counted(planned: Sequence[Planned]) -> list[CounterHit]:
    """The counter hits of a plan, in order (what the store counts in one step)."""
    return [p.hit for p in planned if p.hit is not None]


def charges(planned: Sequence[Planned]) -> dict[int, TokenCharge]:
    """The token charges of a plan, by descriptor position."""
    return {i: p.charge for i, p in enumerate(planned) if p.charge is not None}


def verdict(
    planned: Sequence[Planned],
    step: CountStep,
    tokens: Mapping[int, Allowed | Denied] | None = None,
) -> Verdict:
    """Statuses as upstream answers them; the headline is the first over-limit descriptor,
    else the one with the least remaining (what its X-RateLimit-* headers describe).

    quota_mode rules refuse only when every quota-mode descriptor of the request is over,
    as upstream; shadow_mode rules are counted and reported with remaining 0, but answer OK.
    A token descriptor left out of `tokens` (not charged: the request was already refused)
    reports no limit.
    """
    tokens = tokens or {}
    results = iter(step.hits)
    statuses: list[Status] = []
    quota_total = quota_over = 0
    over = False
    for i, p in enumerate(planned):
        if i in tokens:
            result = tokens[i]
            level = limiting_level(result)
            denied = isinstance(result, Denied)
            shadow = p.limit is not None and p.limit.shadow_mode
            over = over or (denied and not shadow)
            # Denied: when it fits again (retry_after), else when the level is fully reset.
            reset_ms = level.reset_after_ms
            if isinstance(result, Denied) and result.retry_after_ms is not None:
                reset_ms = result.retry_after_ms
            remaining = min(level.remaining, UINT32_MAX)
            code_over, shadowed = denied and not shadow, denied and shadow
            statuses.append(Status(code_over, p.limit, remaining, reset_ms, shadowed, level))
            continue
        if p.hit is None or p.limit is None:
            unlimited = p.limit is not None and p.limit.unlimited
            statuses.append(Status(False, remaining=UINT32_MAX if unlimited else 0))
            continue
        r = next(results)
        lim = p.limit
        beyond = not r.within
        remaining = min(r.remaining, UINT32_MAX)
        if lim.quota_mode:
            quota_total += 1
            quota_over += beyond
        elif beyond and not lim.shadow_mode:
            over = True
        shadowed = beyond and lim.shadow_mode
        code_over = beyond and not lim.shadow_mode
        statuses.append(Status(code_over, lim, remaining, r.reset_after_ms, shadowed))
    if quota_total and quota_total == quota_over:
        over = True
    limited = [
        s
        for s in statuses
        if s.limit is not None and (s.tokens is not None or s.limit.unit is not None)
    ]
    headline = next((s for s in limited if s.over), None)
    if headline is None and limited:
        headline = min(limited, key=lambda s: s.remaining)
    return Verdict(over, tuple(statuses), headline)
