"""The Cassandra usage store's pure parts: the user-shares blob, its settings' checks and the
write phase's submission and deadline (against a session double)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from cassandra.query import BatchStatement

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import (
    MAX_IN_FLIGHT,
    CassandraUsageStore,
    _shares_into,
    decode_recent,
    decode_shares,
    encode_recent,
    encode_shares,
)
from leaky_tokens.analytics.domain.facts import FactKind, UsageFact
from leaky_tokens.analytics.domain.ports import UsageStoreUnavailableError
from leaky_tokens.analytics.domain.totals import Totals, UserShare
from leaky_tokens.runtime.settings import SettingsError


@pytest.mark.parametrize(
    "shares",
    [
        {},
        {"u1": [10, 1]},
        {"ü-ser": [2**40, 3], "u2": [0, 7], "": [1, 1]},
        {"nul\0inside": [5, 2], "u": [1, 1]},  # the JSON fallback
    ],
)
def test_shares_blob_round_trips(shares: dict[str, list[int]]) -> None:
    assert decode_shares(encode_shares(shares)) == shares


@pytest.mark.parametrize(
    "facts",
    [
        [],
        [UsageFact("e1", 1_700_000_000_123, FactKind.CONSUME, "openai", "u1", "", 7, True)],
        [
            UsageFact(f"e{i}", 2**41 + i, kind, "openai", f"ü{i % 3}", "org", 2**53 - i, i % 2 == 0)
            for i, kind in enumerate([k for k in FactKind if k.is_decision] * 3)
        ],
        [UsageFact("e\0", 5, FactKind.CONSUME, "openai", "u", "o", 1, False)],  # JSON fallback
    ],
)
def test_recent_blob_round_trips(facts: list[UsageFact]) -> None:
    assert decode_recent(encode_recent(facts), "openai") == facts


def test_shares_are_added_into_totals_users() -> None:
    totals = Totals()
    _shares_into(totals, encode_shares({"a": [10, 1], "b": [5, 2]}))
    _shares_into(totals, encode_shares({"b": [1, 1], "c": [7, 1]}))
    _shares_into(totals, encode_shares({"c": [1, 1], "d\0": [2, 1]}))
    _shares_into(totals, None)
    assert totals.users == {
        "a": UserShare(10, 1),
        "b": UserShare(6, 3),
        "c": UserShare(8, 2),
        "d\0": UserShare(2, 1),
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cassandra_keyspace", "bad-name"),
        ("cassandra_keyspace", "1st"),
        ("cassandra_hosts", ()),
        ("cassandra_port", 0),
        ("cassandra_raw_ttl_days", 0),
        ("cassandra_raw_ttl_days", 7301),
        ("cassandra_replication_factor", 0),
        ("cassandra_request_timeout_ms", -1),
        ("cassandra_batch_max_bytes", 0),
        ("cassandra_batch_max_bytes", 50 * 1024 + 1),
        ("cassandra_batch_max_partitions", 0),
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=field):
        CassandraStoreSettings(**{field: value})  # type: ignore[arg-type]


class _Answered:
    """A driver future answered at once (ok) or never (a Cassandra that stopped answering)."""

    def __init__(self, answer: bool) -> None:
        self._answer = answer

    def add_callbacks(self, ok: Callable[[object], None], _err: Callable[[object], None]) -> None:
        if self._answer:
            ok(None)


class _Session:
    def __init__(self, answer_first: int) -> None:
        self.answer_first = answer_first
        self.submitted: list[object] = []
        self.timeouts: list[object] = []

    def execute_async(self, request: object, timeout: object = "unset") -> _Answered:
        self.submitted.append(request)
        self.timeouts.append(timeout)
        return _Answered(len(self.submitted) <= self.answer_first)


def _store(timeout_ms: int) -> CassandraUsageStore:
    return CassandraUsageStore(CassandraStoreSettings(cassandra_request_timeout_ms=timeout_ms))


async def test_a_write_phase_submits_every_request_without_a_driver_timer_per_request() -> None:
    session = _Session(answer_first=10**6)
    await _store(5_000)._run_all(session, list(range(300)))
    assert session.submitted == list(range(300))
    assert set(session.timeouts) == {None}  # one deadline for the phase instead


async def test_a_write_phase_not_answered_in_time_is_unavailable_and_submits_no_more() -> None:
    session = _Session(answer_first=5)  # then silence; 300 requests = 3 waves of 50 ms
    started = time.monotonic()
    with pytest.raises(UsageStoreUnavailableError, match=r"300 requests not done in 0\.15 s"):
        await _store(50)._run_all(session, list(range(300)))
    assert time.monotonic() - started < 5
    # 128 in flight at first, 5 of them answered (each answer submits one more); then none.
    assert len(session.submitted) == MAX_IN_FLIGHT + 5


class _Binder:
    def add_to(self, batch: BatchStatement, params: tuple[object, ...]) -> None:
        batch._add_statement_and_params(True, b"id", list(params))


@pytest.mark.parametrize(
    ("max_bytes", "max_partitions", "sizes", "want"),
    [
        (4_500, 3, [100] * 7, [3, 3, 1]),  # partitions per shared batch
        (1_000, 10, [400] * 5, [2, 2, 1]),  # estimated bytes per shared batch
        (1_000, 10, [400, 1_000, 400], [2]),  # a row at the limit goes alone, unbatched
    ],
)
async def test_shared_batches_keep_to_the_configured_partitions_and_bytes(
    max_bytes: int, max_partitions: int, sizes: list[int], want: list[int]
) -> None:
    store = CassandraUsageStore(
        CassandraStoreSettings(
            cassandra_batch_max_bytes=max_bytes, cassandra_batch_max_partitions=max_partitions
        )
    )
    session = _Session(answer_first=10**6)
    store._session = session
    store._binders = {"provider_insert": _Binder()}  # type: ignore[dict-item]
    # One row per partition (the statement's partition key is its first two values).
    big = {i for i, size in enumerate(sizes) if size >= max_bytes}
    store._prepared = {"provider_insert": _Prepared()}
    writes = [
        ("provider_insert", ("user", f"u{i}", "openai"), size) for i, size in enumerate(sizes)
    ]
    await store._write_all(writes)
    batches = [r for r in session.submitted if isinstance(r, BatchStatement)]
    assert [len(b._statements_and_parameters) for b in batches] == want
    assert len(session.submitted) - len(batches) == len(big)


class _Prepared:
    def bind(self, params: tuple[object, ...]) -> tuple[object, ...]:
        return params
