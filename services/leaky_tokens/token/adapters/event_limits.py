"""A denial's levels in a usage event: the domain's statuses <-> leaky.token.v1.LimitStatus."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration

from leaky.token.v1 import limits_pb2
from leaky_tokens.token.domain.decision import BUCKET_LEVELS, Level, LevelStatus, Limiting, Reason
from leaky_tokens.token.domain.ports import UsageEvent

# A quota level's debit or status is recorded against its window: the store's event does not
# split window from purchased balance (ADR 0024, 0031).
LEVELS = {
    Level.USER_BUCKET: limits_pb2.LIMIT_LEVEL_USER_BUCKET,
    Level.ORG_BUCKET: limits_pb2.LIMIT_LEVEL_ORG_BUCKET,
    Level.USER_QUOTA: limits_pb2.LIMIT_LEVEL_USER_QUOTA_WINDOW,
    Level.ORG_QUOTA: limits_pb2.LIMIT_LEVEL_ORG_QUOTA_WINDOW,
}
_BACK = {wire: level for level, wire in LEVELS.items()}
_NAMES = {  # as the RPC's LimitStatus names them (mapping.py)
    Level.USER_BUCKET: "user-bucket",
    Level.ORG_BUCKET: "org-bucket",
    Level.USER_QUOTA: "user-quota",
    Level.ORG_QUOTA: "org-quota",
}


def _duration(ms: int) -> Duration:
    out = Duration()
    out.FromMilliseconds(ms)
    return out


def limit_statuses(event: UsageEvent) -> list[limits_pb2.LimitStatus]:
    """A denial's levels as LimitStatus: OVER_LIMIT (and the wait) where a level refused."""
    waits = {x.level: x.wait_ms for x in event.limiting}
    out = []
    over, ok = limits_pb2.LIMIT_CODE_OVER_LIMIT, limits_pb2.LIMIT_CODE_OK
    for st in event.statuses:
        status = limits_pb2.LimitStatus(
            level=LEVELS[st.level],
            name=f"{event.provider}/{_NAMES[st.level]}",
            code=over if st.level in waits else ok,
            limit=st.limit,
            remaining=st.remaining,
            reset_after=_duration(st.reset_after_ms),
        )
        if (wait := waits.get(st.level)) is not None:
            status.retry_after.CopyFrom(_duration(wait))
        out.append(status)
    return out


def statuses_back(
    found: Iterable[limits_pb2.LimitStatus],
) -> tuple[tuple[LevelStatus, ...], tuple[Limiting, ...]]:
    """The domain's statuses and refusals back from `limit_statuses` (the inverse)."""
    statuses, limiting = [], []
    for st in found:
        level = _BACK[st.level]
        statuses.append(LevelStatus(level, st.limit, st.remaining, st.reset_after.ToMilliseconds()))
        if st.code != limits_pb2.LIMIT_CODE_OVER_LIMIT:
            continue
        wait = st.retry_after.ToMilliseconds() if st.HasField("retry_after") else None
        # A bucket that no wait helps is one the request is larger than (ADR 0018).
        if level not in BUCKET_LEVELS:
            why = Reason.QUOTA_EXHAUSTED
        else:
            why = Reason.RATE_LIMITED if wait is not None else Reason.REQUEST_EXCEEDS_CAPACITY
        limiting.append(Limiting(level, why, wait))
    return tuple(statuses), tuple(limiting)
