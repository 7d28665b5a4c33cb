"""A running `leaky up` exports the token service's decision and relay metrics on /metrics."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.e2e.test_token_consume import bearer
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(gateway: Gateway) -> Samples:
    """Every sample on the token service's /metrics, by sample name."""
    url = f"http://127.0.0.1:{gateway.metrics_ports['token']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_token_metrics_show_a_consume_through_envoy_and_its_relayed_event(
    gateway: Gateway,
) -> None:
    user = register(gateway)
    body = {"userId": user["userId"], "provider": "openai", "tokens": 5}
    status, _, answer = call(gateway, "POST", "/api/v1/tokens/consume", body, bearer(user))
    assert status in (200, 503), answer  # 503: a provider stub down refunds, still a decision
    outcome = "allowed" if status == 200 else "refunded"

    def counted() -> Samples | None:
        found = scrape(gateway)
        relayed = sum(v for _, v in found.get("leaky_token_events_relayed_total", []))
        return found if relayed >= 1 else None

    found = wait_until(counted, 10, what="the consume's event is relayed")
    assert found is not None
    consumes = [
        (labels, value)
        for labels, value in found["leaky_token_decisions_total"]
        if labels["rpc"] == "consume" and labels["provider"] == "openai"
    ]
    assert any(labels["outcome"] == outcome and value >= 1 for labels, value in consumes)
    latency = found["leaky_token_store_latency_seconds_count"]
    assert any(labels["operation"] == "decide" and value >= 1 for labels, value in latency)
    assert "leaky_token_events_relay_pending" in found
    assert "leaky_token_events_relay_lag_seconds" in found
    values = {v for samples in found.values() for labels, _ in samples for v in labels.values()}
    assert user["userId"] not in values  # no per-user series by default
    assert "leaky_token_tenant_tokens" not in found
