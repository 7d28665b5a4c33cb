"""Metric families the dashboard and alert rules use that no process of the test mesh runs yet.

The analytics projection worker (issue 9 §1) exports these; until the mesh the e2e tests start
runs it, the dashboard check (tests/e2e/test_dashboard_metrics.py) takes them from here.
Once the worker runs in that mesh with a /metrics port, scrape it instead and empty this.
"""

from __future__ import annotations

# family name -> Prometheus type (a counter's series is <family>_total).
PROJECTION_WORKER: dict[str, str] = {
    "leaky_analytics_projection_lag_seconds": "gauge",  # label topic
    "leaky_analytics_projected_facts": "counter",  # label topic
    "leaky_analytics_dead_letters": "counter",  # label topic
    "leaky_analytics_projection_stalled": "gauge",
}
