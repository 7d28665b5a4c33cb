"""envoyproxy/ratelimit config files read unchanged, its matching rules, fixed-window counts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from leaky_tokens.token.adapters.config_files import (
    load_rate_limit_directory,
    load_rate_limit_files,
)
from leaky_tokens.token.domain.request_window import WindowCount, hit
from leaky_tokens.token.domain.rls_config import LimitMatch, RateLimitConfig, Unit, apply_replaces
from leaky_tokens.token.domain.rls_parse import parse_rate_limit_files
from leaky_tokens.token.domain.yaml_nodes import PolicyError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "rls-bench-leaky.yaml"
BENCH = Path(__file__).parents[3] / "shared" / "bench" / "rls-bench" / "runtime" / "ratelimit"
BENCH_CONFIG = BENCH / "config" / "leaky.yaml"


def config(text: str, merge: bool = False) -> RateLimitConfig:
    return parse_rate_limit_files([("test.yaml", textwrap.dedent(text))], merge_domains=merge)


def limit_of(cfg: RateLimitConfig, domain: str, *entries: tuple[str, str]) -> LimitMatch:
    found = cfg.match(domain, list(entries))
    assert found is not None, entries
    return found


def assert_bench_limits(cfg: RateLimitConfig) -> None:
    user = limit_of(cfg, "leaky", ("user_id", "anyone"))
    assert (user.limit.unit, user.limit.requests_per_unit) == (Unit.SECOND, 1_000_000_000)
    key = limit_of(cfg, "leaky", ("api_key", "k-1"))
    assert (key.limit.unit, key.limit.requests_per_unit) == (Unit.MINUTE, 10)
    assert cfg.match("leaky", [("other", "x")]) is None
    assert cfg.match("elsewhere", [("user_id", "x")]) is None


def test_the_rls_bench_config_loads_unchanged_from_the_fixture() -> None:
    assert_bench_limits(load_rate_limit_files([FIXTURE]))


@pytest.mark.skipif(not BENCH_CONFIG.exists(), reason="the shared rls-bench tree is not here")
def test_the_rls_bench_config_loads_from_its_own_directory() -> None:
    assert_bench_limits(load_rate_limit_directory(BENCH_CONFIG.parent))


MESSAGING = """
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
"""


def test_nested_descriptors_match_at_their_own_depth_only() -> None:
    cfg = config(MESSAGING)
    nested = limit_of(cfg, "messaging", ("message_type", "marketing"), ("to_number", "206"))
    assert nested.limit.requests_per_unit == 5
    assert nested.counter_key == "messaging.message_type_marketing.to_number_206"
    assert limit_of(cfg, "messaging", ("to_number", "206")).limit.requests_per_unit == 100
    assert cfg.match("messaging", [("message_type", "marketing")]) is None  # a placeholder
    assert cfg.match("messaging", [("to_number", "1"), ("extra", "x")]) is None  # too deep


def test_values_written_as_numbers_or_left_empty_read_as_upstream_reads_them() -> None:
    cfg = config("""
        domain: phones
        descriptors:
          - key: to_number
            value: 2061234567
            rate_limit: {unit: day, requests_per_unit: 1}
          - key: from_number
            value:
            rate_limit: {unit: day, requests_per_unit: 2}
        """)
    assert limit_of(cfg, "phones", ("to_number", "2061234567")).limit.requests_per_unit == 1
    assert cfg.match("phones", [("to_number", "1")]) is None
    assert limit_of(cfg, "phones", ("from_number", "1")).limit.requests_per_unit == 2


def test_key_and_value_is_tried_before_the_key_alone() -> None:
    cfg = config(MESSAGING)
    assert limit_of(cfg, "messaging", ("remote_address", "50.0.0.5")).limit.requests_per_unit == 0
    assert limit_of(cfg, "messaging", ("remote_address", "1.2.3.4")).limit.requests_per_unit == 10


def test_wildcards_match_and_share_threshold_shares_one_counter() -> None:
    cfg = config("""
        domain: files
        descriptors:
          - key: files
            value: files/*
            share_threshold: true
            rate_limit: {unit: hour, requests_per_unit: 10}
          - key: path
            value: /api/*/action
            rate_limit: {unit: minute, requests_per_unit: 20}
        """)
    a = limit_of(cfg, "files", ("files", "files/a.pdf"))
    b = limit_of(cfg, "files", ("files", "files/b.csv"))
    assert a.counter_key == b.counter_key == "files.files_files/*"
    own = limit_of(cfg, "files", ("path", "/api/7/action"))
    assert own.counter_key == "files.path_/api/7/action"
    assert cfg.match("files", [("path", "/api/7/other")]) is None


def test_unlimited_shadow_mode_and_replaces_are_kept() -> None:
    cfg = config("""
        domain: example7
        descriptors:
          - key: ldap
            rate_limit: {unlimited: true}
          - key: key_1
            value: value_1
            descriptors:
              - key: user
                rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
                shadow_mode: true
          - key: key_2
            value: value_2
            descriptors:
              - key: user
                rate_limit:
                  replaces: [{name: specific_limit}]
                  requests_per_unit: 10
                  unit: second
        """)
    assert limit_of(cfg, "example7", ("ldap", "x")).limit.unlimited
    specific = cfg.match("example7", [("key_1", "value_1"), ("user", "bk")])
    general = cfg.match("example7", [("key_2", "value_2"), ("user", "bk")])
    assert specific is not None
    assert specific.limit.shadow_mode
    assert apply_replaces([specific, general]) == (None, general)
    assert apply_replaces([specific]) == (specific,)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight}\n", 4, "unit"),
        ("domain: d\ndescriptors:\n  - key: a\n    ratelimit: {unit: second}\n", 4, "'ratelimit'"),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: hour}\n",
            4,
            "should not specify rate limit unit when unlimited",
        ),
        ("domain: d\ndescriptors:\n  - key: a\n  - key: a\n", 4, "duplicate descriptor"),
        ("domain: ''\n", 1, "empty domain"),
        ("descriptors: []\n", 1, "missing required key 'domain'"),
        (
            "domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n",
            3,
            "share_threshold needs a wildcard",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    token_bucket: openai\n",
            4,
            "unknown key 'token_bucket'",  # our extension is for policy files only
        ),
    ],
)
def test_bad_configs_name_the_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        config(text)
    assert caught.value.line == line, str(caught.value)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith(f"test.yaml:{line}: ")


def test_a_domain_in_two_files_needs_merging() -> None:
    first = ("a.yaml", "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n")
    second = ("b.yaml", "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: hour}\n")
    with pytest.raises(PolicyError, match=r"^b\.yaml:1: duplicate domain 'd'"):
        parse_rate_limit_files([first, second])
    merged = parse_rate_limit_files([first, second], merge_domains=True)
    assert limit_of(merged, "d", ("b", "1")).limit.unit is Unit.HOUR


def test_fixed_windows_count_hits_and_refuse_without_counting() -> None:
    rule = limit_of(config(MESSAGING), "messaging", ("remote_address", "1.2.3.4")).limit
    now = 1_780_000_000_250  # 250 ms into a second
    first = hit(rule, WindowCount(), 7, now)
    assert (first.within, first.remaining, first.reset_after_ms) == (True, 3, 750)
    over = hit(rule, first.after, 4, now + 1)
    assert (over.within, over.after) == (False, first.after)  # refused hits are not counted
    assert hit(rule, first.after, 10, now + 750).within  # the next second starts afresh
    back = hit(rule, first.after, 3, now - 1000)  # a clock gone back keeps the newer window
    assert (back.within, back.after.count) == (True, 10)
