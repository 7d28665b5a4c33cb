"""What the Lua scripts take and return: level specs, stored records, stream entries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from leaky_tokens.token.adapters.key_layout import SEP, KeyLayout
from leaky_tokens.token.adapters.snapshots import levels_of
from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.decision import (
    BucketSlot,
    Denied,
    Level,
    LevelStatus,
    Limiting,
    QuotaSlot,
    Snapshot,
    decide,
)
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import EventKind, Subject, UsageEvent
from leaky_tokens.token.domain.quota import QuotaLimit, QuotaState

_SPEC = 5  # fields per level spec: name, key, three limit numbers
_STATE = 3  # fields per level state
_LEVELS = {lv.value: lv for lv in Level}  # a dict lookup is cheaper than Level(name)


class StoreInconsistencyError(RuntimeError):
    """The Lua port and the domain disagreed on a verdict: a bug, never a client error."""


def who(subject: Subject) -> str:
    """The subject as scripts store and compare it (owner checks, events)."""
    return SEP.join((subject.tenant, subject.user_id, subject.org_id or "", subject.provider))


def subject_of(text: str | bytes) -> Subject:
    """The subject back from `who`."""
    _tenant, user, org, provider = _text(text).split(SEP)
    return Subject(user, provider, org or None)


def level_spec(layout: KeyLayout, base: str, subject: Subject, limits: LevelLimits) -> str:
    """The levels of a request for a script: name, key and limits, in evaluation order."""
    fields: list[str] = []
    for lv in levels_of(limits):
        key = layout.level_key(base, lv, subject)
        if lv in limits.buckets:
            b = limits.buckets[lv]
            fields += [lv.value, key, str(b.capacity), str(b.leak_per_ms), str(b.scale)]
        else:
            q = limits.quotas[lv]
            fields += [
                lv.value,
                key,
                str(q.allowance),
                str(q.window_start_ms),
                str(q.window_end_ms),
            ]
    return SEP.join(fields)


def snapshot(spec: list[str], states: list[str]) -> Snapshot:
    """Pair the limits of a spec with the states a script read."""
    buckets: dict[Level, BucketSlot] = {}
    quotas: dict[Level, QuotaSlot] = {}
    for i in range(len(spec) // _SPEC):
        name, _key, a, b, c = spec[_SPEC * i : _SPEC * i + _SPEC]
        s1, s2, s3 = (int(x) for x in states[_STATE * i : _STATE * i + _STATE])
        lv = _LEVELS[name]
        if name.endswith("bucket"):
            buckets[lv] = BucketSlot(BucketLimit(int(a), int(b), int(c)), BucketState(s1, s2))
        else:
            quotas[lv] = QuotaSlot(QuotaLimit(int(a), int(b), int(c)), QuotaState(s1, s2, s3))
    return Snapshot(buckets, quotas)


def restated(limits: Snapshot, states: list[str]) -> Snapshot:
    """The limits of `limits` (levels in evaluation order) with the states a script read."""
    buckets, quotas, i = {}, {}, 0
    for lv in Level:
        s1, s2, s3 = (int(x) for x in states[_STATE * i : _STATE * i + _STATE] or ("0",) * 3)
        if lv in limits.buckets:
            buckets[lv] = BucketSlot(limits.buckets[lv].limit, BucketState(s1, s2))
        elif lv in limits.quotas:
            quotas[lv] = QuotaSlot(limits.quotas[lv].limit, QuotaState(s1, s2, s3))
        else:
            continue
        i += 1
    return Snapshot(buckets, quotas)


@dataclass(frozen=True, slots=True)
class Record:
    """A decision or reservation as its script stored it: the inputs and the states it read."""

    allowed: bool
    now_ms: int
    tokens: int
    ttl_ms: int
    before: Snapshot


def record(text: str | bytes) -> Record:
    """Parse a stored record (verdict, now, tokens, ttl, level specs, states)."""
    fields = _text(text).split(SEP)
    rest = fields[4:]
    count = len(rest) // (_SPEC + _STATE)
    spec, states = rest[: _SPEC * count], rest[_SPEC * count :]
    before = snapshot(spec, states)
    return Record(fields[0] == "1", int(fields[1]), int(fields[2]), int(fields[3]), before)


def spec_fields(spec: str) -> list[str]:
    """The fields of a level spec string."""
    return spec.split(SEP) if spec else []


def states_fields(text: str | bytes) -> list[str]:
    """The fields of a states string."""
    raw = _text(text)
    return raw.split(SEP) if raw else []


def overage(text: str | bytes) -> Mapping[Level, int]:
    """`user_bucket=3,org_quota=1` as a mapping."""
    found = {}
    for part in _text(text).split(","):
        if part:
            name, value = part.split("=")
            found[Level(name)] = int(value)
    return MappingProxyType(found)


def event(fields: Mapping[bytes, bytes]) -> UsageEvent:
    """A usage event from its stream entry.

    A denial's entry carries the decision's record; the domain's `decide` replayed on it gives
    every level's status, exactly as the in-memory store records them (no arithmetic in Lua).
    """
    get = {k.decode(): v.decode() for k, v in fields.items()}
    tenant, user, org, provider = get["who"].split(SEP)
    levels = tuple(Level(x) for x in get["lv"].split(",") if x)
    statuses: tuple[LevelStatus, ...] = ()
    limiting: tuple[Limiting, ...] = ()
    if "rec" in get:
        rec = record(get["rec"])
        denied = decide(rec.before, rec.tokens, rec.now_ms)
        if not isinstance(denied, Denied):
            raise StoreInconsistencyError("a denial's record replays as allowed")
        statuses, limiting = denied.statuses, denied.limiting
    return UsageEvent(
        event_id=get["id"],
        kind=EventKind(get["kind"]),
        occurred_at_ms=int(get["at"]),
        tenant=tenant,
        user_id=user,
        org_id=org or None,
        provider=provider,
        tokens=int(get["tok"]),
        causation_id=get["cause"],
        levels=levels,
        reason=get["why"] or None,
        overage=overage(get["over"]),
        statuses=statuses,
        limiting=limiting,
        estimate=int(get.get("est", 0)),
        expires_at_ms=int(get.get("exp", 0)),
        granted_by=get.get("by", ""),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
