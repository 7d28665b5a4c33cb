"""envoyproxy/ratelimit's config files, read unchanged, and its descriptor matching rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Unit(StrEnum):
    """The units envoyproxy/ratelimit accepts (upper-cased in the file, as it does)."""

    SECOND = "SECOND"
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


# envoyproxy/ratelimit's UnitToDivider: a month is 30 days and a year 365, epoch-aligned.
UNIT_SECONDS: Mapping[Unit, int] = MappingProxyType(
    {
        Unit.SECOND: 1,
        Unit.MINUTE: 60,
        Unit.HOUR: 3600,
        Unit.DAY: 86400,
        Unit.WEEK: 7 * 86400,
        Unit.MONTH: 30 * 86400,
        Unit.YEAR: 365 * 86400,
    }
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One rule: `requests_per_unit` per `unit`, or unlimited; names for `replaces`.

    `token_bucket` (policy files only) names a provider: hits on this descriptor are LLM
    tokens charged to that provider's bucket of the subject in the descriptor's value.
    """

    full_key: str
    requests_per_unit: int = 0
    unit: Unit | None = None
    unlimited: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    shadow_mode: bool = False
    quota_mode: bool = False
    detailed_metric: bool = False
    token_bucket: str = ""


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    """One level of the descriptor tree; children keyed "key" or "key_value" as upstream."""

    children: Mapping[str, DescriptorNode] = field(default_factory=dict)
    wildcards: tuple[tuple[str, tuple[str, ...]], ...] = ()
    limit: RateLimit | None = None
    share_threshold: bool = False
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LimitMatch:
    """The rule a descriptor matched and the counter it hits (shared for share_threshold)."""

    limit: RateLimit
    counter_key: str
    metadata: Mapping[str, Any] | None = None


def wildcard_match(parts: Sequence[str], value: str) -> bool:
    """Whether `value` matches a pattern split on "*" (each * matches zero or more chars)."""
    if len(parts) == 1:
        return parts[0] == value
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]):
        return False
    if len(value) < sum(len(p) for p in parts):
        return False
    rest = value[len(parts[0]) : len(value) - len(parts[-1])]
    for part in parts[1:-1]:
        at = rest.find(part)
        if at < 0:
            return False
        rest = rest[at + len(part) :]
    return True


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Descriptor trees by domain, with envoyproxy/ratelimit's lookup."""

    domains: Mapping[str, DescriptorNode] = field(default_factory=dict)

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> LimitMatch | None:
        """The limit for one descriptor, or None.

        As upstream: at each level the key_value entry is tried first, then wildcard values in
        file order, then the key alone (any value); no backtracking; a limit applies only when
        it sits at the depth of the descriptor's last entry.
        """
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        found: RateLimit | None = None
        found_node: DescriptorNode | None = None
        counter = [domain]
        for i, (key, value) in enumerate(entries):
            final = f"{key}_{value}"
            nxt = node.children.get(final)
            part = final if value else key
            if nxt is None:
                for pattern, parts in node.wildcards:
                    if wildcard_match(parts, final):
                        nxt = node.children[pattern]
                        part = pattern if nxt.share_threshold else final
                        break
            if nxt is None:
                nxt = node.children.get(key)
            counter.append(part)
            if nxt is not None and nxt.limit is not None and i == len(entries) - 1:
                found, found_node = nxt.limit, nxt
            if nxt is None or not nxt.children:
                break
            node = nxt
        if found is None or found_node is None:
            return None
        return LimitMatch(found, ".".join(counter), found_node.metadata)


def apply_replaces(matches: Sequence[LimitMatch | None]) -> tuple[LimitMatch | None, ...]:
    """Drop every matched limit whose name another matched limit `replaces` (as upstream)."""
    replaced = {name for m in matches if m is not None for name in m.limit.replaces}
    return tuple(
        None if m is not None and m.limit.name and m.limit.name in replaced else m for m in matches
    )
