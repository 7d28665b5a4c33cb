"""count_step's invariants: never past an enforced limit, all or nothing, shadow counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leaky_tokens.token.domain.rate_counter import CounterHit, count_step, window_start

MINUTE = 60_000
KEYS = ("a", "b", "c")
hit = st.builds(
    CounterHit,
    key=st.sampled_from(KEYS),
    limit=st.just(5),
    window_ms=st.just(MINUTE),
    hits=st.integers(0, 4),
    enforced=st.booleans(),
)
requests = st.lists(st.lists(hit, min_size=1, max_size=4), max_size=40)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(requests, st.integers(0, 10**13))
def test_enforced_counters_never_pass_their_limit_and_refusals_count_nothing(
    batch: list[list[CounterHit]], now_ms: int
) -> None:
    stored: dict[tuple[str, int], int] = {}
    shadowed: set[str] = set()  # keys some shadow hit counted on: those may pass the limit
    for hits in batch:
        before = dict(stored)
        step = count_step(hits, stored, now_ms)
        if step.admitted:
            for h, r in zip(hits, step.hits, strict=True):
                stored[(h.key, window_start(h, now_ms))] = r.after.count
                if not h.enforced:
                    shadowed.add(h.key)
        assert step.admitted == all(
            r.within for h, r in zip(hits, step.hits, strict=True) if h.enforced
        )
        if not step.admitted:
            assert stored == before
        for h, r in zip(hits, step.hits, strict=True):
            assert 0 <= r.remaining <= h.limit
            assert 0 < r.reset_after_ms <= MINUTE
    for (key, _), count in stored.items():
        if key not in shadowed:
            assert count <= 5


@PROPERTY
@given(st.integers(1, 20), st.integers(0, 10**13))
def test_an_enforced_counter_admits_exactly_its_limit(n: int, now_ms: int) -> None:
    stored: dict[tuple[str, int], int] = {}
    admitted = 0
    for _ in range(n):
        h = CounterHit("k", 7, MINUTE, 1)
        step = count_step([h], stored, now_ms)
        if step.admitted:
            admitted += 1
            stored[("k", window_start(h, now_ms))] = step.hits[0].after.count
    assert admitted == min(n, 7)
