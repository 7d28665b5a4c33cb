"""Every metric the Grafana dashboard and the alert rules query is exported by a running mesh.

The names come from every PromQL expression of deploy/grafana/dashboards/leaky-overview.json
and deploy/prometheus-rules.yml (tests/support/promql.py); the exports from the live /metrics
of every service of `leaky up` and its Envoy's /stats/prometheus. The projection's families
come from the analytics service, which runs the embedded projection with the worker's metric
families (the worker's own /metrics is checked in tests/e2e/test_stack_mesh.py).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import Gateway
from tests.support.promql import Exported, dashboard_exprs, metric_names, rule_exprs

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "leaky-overview.json"
RULES = ROOT / "deploy" / "prometheus-rules.yml"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def mesh_exports(gateway: Gateway) -> tuple[Exported, list[str]]:
    """What the mesh's processes export, and which endpoints were scraped."""
    exported, scraped = Exported(), []
    for slug, port in gateway.metrics_ports.items():
        exported.add_text(scrape(f"http://127.0.0.1:{port}/metrics"))
        scraped.append(slug)
    assert gateway.admin_port, "the mesh's own Envoy admin is needed for the gateway panel"
    exported.add_text(scrape(f"http://127.0.0.1:{gateway.admin_port}/stats/prometheus"))
    scraped.append("envoy")
    return exported, scraped


def test_every_dashboard_and_alert_metric_is_exported(gateway: Gateway) -> None:
    exported, scraped = mesh_exports(gateway)
    assert {"auth", "token", "analytics", "provider", "envoy"} <= set(scraped)
    exprs = [*dashboard_exprs(DASHBOARD), *rule_exprs(RULES)]
    assert exported.missing(exprs) == []
    # Each area of the operators' view has a panel on a live family.
    used = {s.name for expr in dashboard_exprs(DASHBOARD) for s in metric_names(expr)}
    for area in (
        "leaky_token_decisions_total",  # decisions by outcome
        "leaky_token_store_latency_seconds_bucket",  # latency
        "leaky_token_store_degraded",  # degraded mode
        "leaky_token_events_relay_lag_seconds",  # event relay lag
        "leaky_analytics_projection_lag_seconds",  # projection lag
        "leaky_token_purchases_total",  # saga outcomes
    ):
        assert area in used
