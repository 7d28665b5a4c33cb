"""The Cassandra usage store's pure parts: the user-shares blob and its settings' checks."""

from __future__ import annotations

import pytest

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import (
    _shares_into,
    decode_recent,
    decode_shares,
    encode_recent,
    encode_shares,
)
from leaky_tokens.analytics.domain.facts import FactKind, UsageFact
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
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=field):
        CassandraStoreSettings(**{field: value})  # type: ignore[arg-type]
