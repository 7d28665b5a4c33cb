"""The PromQL name extractor the dashboard and alert checks rely on, and the files it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.promql import (
    Exported,
    PromqlError,
    Selector,
    dashboard_exprs,
    metric_names,
    rule_exprs,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "leaky-overview.json"
RULES = ROOT / "deploy" / "prometheus-rules.yml"

SCRAPE = """\
# HELP leaky_token_decisions Token decisions.
# TYPE leaky_token_decisions counter
leaky_token_decisions_total{outcome="allowed"} 3.0
# HELP leaky_token_store_latency_seconds Store calls.
# TYPE leaky_token_store_latency_seconds histogram
leaky_token_store_latency_seconds_bucket{operation="decide",le="+Inf"} 1.0
leaky_token_store_latency_seconds_count{operation="decide"} 1.0
leaky_token_store_latency_seconds_sum{operation="decide"} 0.001
# HELP leaky_token_store_degraded Degraded.
# TYPE leaky_token_store_degraded gauge
leaky_token_store_degraded{mode="fail_open"} 0.0
# HELP leaky_token_purchases Purchases.
# TYPE leaky_token_purchases counter
# TYPE leaky_token_saga_steps_total counter
# TYPE envoy_http_downstream_rq_xx counter
envoy_http_downstream_rq_xx{envoy_response_code_class="2"} 1
"""


def names(expr: str) -> list[str]:
    return [str(s) for s in metric_names(expr)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", ["up"]),
        (
            'sum by (outcome, level) (rate(leaky_token_decisions_total{outcome="denied"}[1m]))',
            ["leaky_token_decisions_total"],
        ),
        (
            "histogram_quantile(0.99, sum(rate(a_seconds_bucket[$__rate_interval])) by (le))",
            ["a_seconds_bucket"],
        ),
        ("max(a) > 0 and sum(increase(b_total[2m] offset 5m)) == bool 0", ["a", "b_total"]),
        ("x / on (instance) group_left (mode) y", ["x", "y"]),
        ('{__name__=~"leaky_.*_total", code!="OK"}', ['{__name__=~"leaky_.*_total"}']),
        ('{__name__="z"} unless count without (by) (sum)', ["z"]),  # sum: no metric
        ("rate(c_total[5m:30s]) * 1e3 + Inf", ["c_total"]),
        ('label_replace(d, "dst", "$1", "src", "(.*)")', ["d"]),
    ],
)
def test_every_metric_selector_is_found_and_nothing_else(expr: str, expected: list[str]) -> None:
    assert names(expr) == expected


@pytest.mark.parametrize("expr", ["sum(rate(x[1m])", "vector(1)", "a ? b", '{__name__!="a"}'])
def test_what_cannot_be_checked_is_refused_not_passed(expr: str) -> None:
    with pytest.raises(PromqlError):
        metric_names(expr)


def test_a_name_nobody_exports_is_reported() -> None:
    exported = Exported()
    exported.add_text(SCRAPE)
    good = [
        "sum by (outcome) (rate(leaky_token_decisions_total[1m]))",
        "histogram_quantile(0.9, sum by (le) (rate(leaky_token_store_latency_seconds_bucket[1m])))",
        "leaky_token_store_latency_seconds_sum / leaky_token_store_latency_seconds_count",
        "max(leaky_token_store_degraded)",
        'increase(leaky_token_purchases_total{outcome="failed"}[5m])',  # family, no sample yet
        '{__name__=~"leaky_token_.*_total"}',
        "rate(envoy_http_downstream_rq_xx[1m])",  # Envoy's counters go without _total
        "rate(leaky_token_saga_steps_total[1m])",  # TYPE names it with _total, no sample yet
    ]
    assert exported.missing(good) == []
    bad = {
        "rate(leaky_token_no_such_thing_total[5m])": "leaky_token_no_such_thing_total",
        "rate(leaky_token_decisions[5m])": "leaky_token_decisions",  # a counter has _total
        # _bucket of a counter is no histogram series: suffixes are stripped by type only.
        "histogram_quantile(0.9, rate(leaky_token_decisions_bucket[5m]))": (
            "leaky_token_decisions_bucket"
        ),
        "leaky_token_store_degraded_total": "leaky_token_store_degraded_total",
        "leaky_token_store_latency_seconds": "leaky_token_store_latency_seconds",
        '{__name__=~"leaky_auth_.*"}': '{__name__=~"leaky_auth_.*"}',
        "rate(envoy_http_downstream_rq_xx_total[1m])": "envoy_http_downstream_rq_xx_total",
        "leaky_token_saga_steps_total_total": "leaky_token_saga_steps_total_total",
    }
    for expr, name in bad.items():
        assert exported.missing([expr]) == [f"{name} in {expr}"]
    assert not exported.has(Selector(name="leaky_token_purchases_created"))


def test_the_shipped_dashboard_and_rules_parse_and_name_metrics() -> None:
    board, rules = dashboard_exprs(DASHBOARD), rule_exprs(RULES)
    assert len(board) >= 20
    assert len(rules) >= 8
    found = {s.name for expr in (*board, *rules) for s in metric_names(expr)}
    for needed in (
        "leaky_token_decisions_total",
        "leaky_token_store_latency_seconds_bucket",
        "leaky_token_store_degraded",
        "leaky_token_events_relay_lag_seconds",
        "leaky_token_events_relay_pending",
        "leaky_token_purchases_total",
        "leaky_analytics_projection_lag_seconds",
        "leaky_analytics_projection_stalled",
    ):
        assert needed in found
