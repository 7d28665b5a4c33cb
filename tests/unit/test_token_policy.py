"""The policy file: defaults, tiers from roles, org pools, windows, and errors with file:line."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from leaky_tokens.token.adapters.config_files import default_policy_text
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Allowed, Denied, Level, Reason, decide
from leaky_tokens.token.domain.policy import UnknownProviderError
from leaky_tokens.token.domain.policy_parse import PolicyError, parse_policy
from leaky_tokens.token.domain.units import to_ms
from leaky_tokens.token.domain.windows import Period, QuotaWindow

MINIMAL = "providers:\n  openai: {capacity: 2000, leak_rate: 20}\n"


def policy_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(text), "policy.yaml")
    return caught.value


def test_the_shipped_policy_has_the_documented_provider_defaults() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    user = policy.tier_for(["USER"]).plan
    assert user.bucket("openai") == BucketLimit.tokens(2000, 20_000)
    assert user.bucket("qwen") == BucketLimit.tokens(1000, 10_000)
    assert user.bucket("gemini") == BucketLimit.tokens(500, 5_000)
    assert policy.providers["gemini"].leak_rate == Decimal(5)
    assert user.quota_allowance("openai") == 100_000
    assert policy.window == QuotaWindow(Period.DAILY, "UTC")


def test_the_highest_priority_role_wins_and_unknown_roles_get_the_default() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    admin = policy.tier_for(["ROLE_USER", "role_admin", "AUDITOR"])
    assert admin.name == "ADMIN"
    assert admin.plan.bucket("openai") == BucketLimit.tokens(4000, 40_000)
    assert policy.tier_for(["AUDITOR"]).name == "USER"
    assert policy.tier_for([]).name == "USER"


def test_org_pools_have_their_own_plans_and_overrides() -> None:
    policy = parse_policy(
        MINIMAL
        + textwrap.dedent("""
        orgs:
          default: {capacity_multiplier: 10, rate_multiplier: 10, quota_tokens: 1000000}
          overrides:
            acme: {capacity_multiplier: 0.5, rate_multiplier: 1.25, quota_tokens: null}
        """),
        "p.yaml",
    )
    assert policy.org_plan("other").bucket("openai") == BucketLimit.tokens(20_000, 200_000)
    acme = policy.org_plan("acme")
    assert acme.bucket("openai") == BucketLimit.tokens(1000, 25_000)
    assert acme.quota_allowance("openai") is None  # no quota level for acme


def test_multipliers_round_once_at_load_and_rates_keep_three_decimals() -> None:
    policy = parse_policy(
        textwrap.dedent("""
        providers:
          slow: {capacity: 3, leak_rate: 0.125}
        tiers:
          BRONZE: {priority: 1, capacity_multiplier: 0.5, rate_multiplier: 0.333333}
        default_tier: bronze
        """),
        "p.yaml",
    )
    assert policy.default_tier == "BRONZE"
    assert policy.tier_for([]).plan.bucket("slow") == BucketLimit.tokens(2, 42)  # 1.5, 41.67


def test_quota_allowances_per_provider_and_windows_in_a_time_zone() -> None:
    policy = parse_policy(
        MINIMAL
        + "  qwen: {capacity: 10, leak_rate: 1}\n"
        + textwrap.dedent("""
        tiers:
          USER: {priority: 1, quota_tokens: 500, provider_quota_tokens: {qwen: 50}}
        quota: {window: monthly, timezone: Europe/Berlin}
        """),
        "p.yaml",
    )
    plan = policy.tier_for(["USER"]).plan
    assert (plan.quota_allowance("openai"), plan.quota_allowance("qwen")) == (500, 50)
    limit = policy.quota_limit(plan, "qwen", datetime(2026, 3, 31, 23, 30, tzinfo=UTC))
    assert limit is not None
    assert limit.allowance == 50
    assert limit.window_start_ms == int(datetime(2026, 3, 31, 22, tzinfo=UTC).timestamp() * 1000)


def test_an_unknown_key_is_named_with_its_file_and_line() -> None:
    err = policy_error("""
        providers:
          openai: {capacity: 2000, leak_rate: 20}
        tiers:
          USER:
            priority: 10
            capacity_multiplyer: 2
        """)
    assert str(err).startswith("policy.yaml:7: tiers.USER: unknown key 'capacity_multiplyer'")
    assert err.line == 7


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("providers:\n  openai: {capacity: 0, leak_rate: 1}\n", 2, "capacity: 0 must be"),
        ("providers:\n  openai: {capacity: 5, leak_rate: 0.0001}\n", 2, "at most 3 decimals"),
        ("providers:\n  openai: {capacity: '5', leak_rate: 1}\n", 2, "expected a whole number"),
        ("providers:\n  openai: {capacity: 5}\n", 2, "missing required key 'leak_rate'"),
        ("providers: {}\n", 1, "at least one provider"),
        (MINIMAL + "quota: {window: hourly}\n", 3, "'hourly' is not one of"),
        (MINIMAL + "quota: {timezone: Mars/Base}\n", 3, "unknown zone 'Mars/Base'"),
        (MINIMAL + "default_tier: GOLD\n", 3, "no tier 'GOLD'"),
        (
            MINIMAL + "tiers:\n  A: {priority: 1}\n  B: {priority: 1}\n",
            5,
            "priority 1 is also A's",
        ),
        (
            MINIMAL + "tiers:\n  A: {priority: 1, provider_quota_tokens: {qwen: 5}}\n",
            4,
            "unknown provider 'qwen'",
        ),
        (MINIMAL + "providers: {}\n", 3, "duplicate key 'providers'"),
        ("providers: [\n", 2, "invalid YAML"),
        ("", 1, "empty"),
        (
            MINIMAL + "rate_limits:\n  descriptors:\n    - key: k\n      token_bucket: qwen\n",
            6,
            "token_bucket must name a provider",
        ),
    ],
)
def test_bad_policies_are_refused_with_the_line_of_the_mistake(
    text: str, line: int, fragment: str
) -> None:
    err = policy_error(text)
    assert err.line == line, str(err)
    assert fragment in str(err)


def test_the_policy_is_immutable_so_a_reload_is_one_assignment() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    with pytest.raises(AttributeError):
        policy.default_tier = "ADMIN"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.providers["x"] = policy.providers["openai"]  # type: ignore[index]


def test_the_shipped_descriptors_map_requests_and_tokens() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    per_user = policy.rate_limits.match("leaky", [("user_id", "u-1")])
    assert per_user is not None
    assert per_user.limit.requests_per_unit == 200
    tokens = policy.rate_limits.match("leaky", [("provider", "qwen"), ("user_id", "u-1")])
    assert tokens is not None
    assert tokens.limit.token_bucket == "qwen"
    assert tokens.counter_key == "leaky.provider_qwen.user_id_u-1"


def test_a_request_with_an_org_meets_the_user_and_the_org_levels() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    now = datetime(2026, 5, 4, 10, tzinfo=UTC)
    alone = policy.limits_for(["USER"], "openai", None, now)
    assert set(alone.buckets) == {Level.USER_BUCKET}
    assert set(alone.quotas) == {Level.USER_QUOTA}
    limits = policy.limits_for(["USER"], "openai", "org-1", now)
    assert limits.buckets[Level.ORG_BUCKET] == BucketLimit.tokens(20_000, 200_000)
    assert limits.quotas[Level.ORG_QUOTA].allowance == 1_000_000
    assert limits.quotas[Level.USER_QUOTA].window_start_ms == to_ms(
        datetime(2026, 5, 4, tzinfo=UTC)
    )
    first = decide(limits.snapshot({}, {}), 2000, to_ms(now))
    assert isinstance(first, Allowed)
    stored_buckets = {lv: s.state for lv, s in first.snapshot.buckets.items()}
    stored_quotas = {lv: s.state for lv, s in first.snapshot.quotas.items()}
    second = decide(limits.snapshot(stored_buckets, stored_quotas), 1, to_ms(now))
    assert isinstance(second, Denied)
    assert (second.level, second.reason, second.retry_after_ms) == (
        Level.USER_BUCKET,
        Reason.RATE_LIMITED,
        50,
    )


def test_an_unknown_provider_is_an_invalid_argument_naming_the_known_ones() -> None:
    policy = parse_policy(default_policy_text(), "default-policy.yaml")
    with pytest.raises(UnknownProviderError) as caught:
        policy.limits_for(["USER"], "mistral", None, datetime(2026, 5, 4, tzinfo=UTC))
    assert caught.value.violations[0].field == "provider"
    assert "gemini, openai, qwen" in caught.value.message
