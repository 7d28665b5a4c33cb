"""Store-side views of snapshots: the levels of a request, states leaked to a clock reading."""

from __future__ import annotations

from dataclasses import replace

from leaky_tokens.token.domain import bucket, quota
from leaky_tokens.token.domain.decision import Level, Snapshot
from leaky_tokens.token.domain.policy import LevelLimits


def levels_of(limits: LevelLimits) -> tuple[Level, ...]:
    """The levels of a request, in evaluation order (as events list them)."""
    return tuple(lv for lv in Level if lv in limits.buckets or lv in limits.quotas)


def current(snap: Snapshot, now_ms: int) -> Snapshot:
    """Stored states leaked and rolled to `now_ms`, as GetQuota shows them."""
    buckets = {
        lv: replace(s, state=bucket.leak(s.limit, s.state, now_ms))
        for lv, s in snap.buckets.items()
    }
    quotas = {lv: replace(q, state=quota.roll(q.limit, q.state)) for lv, q in snap.quotas.items()}
    return Snapshot(buckets, quotas)
