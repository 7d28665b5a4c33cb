"""Analytics the way users call it, through Envoy on the embedded mesh: consume, then see the
usage in Report, Usage, the series and the provider comparison; a purchase in the purchase
history; who may read what; bad input. The token service's event log is tailed into the
analytics service's SQLite store (ADR 0038), so answers are polled with a bound, never timed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.e2e.test_token_consume import bearer, consume, create_org
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

# gemini's bucket holds 500 tokens leaking 5/s (the shipped policy): 200 + 200 fit, 300 more
# does not until a minute of leaking has passed.
PROVIDER = "gemini"


def get(gateway: Gateway, path: str, user: dict[str, Any]) -> tuple[int, Any]:
    status, _, body = call(gateway, "GET", path, None, bearer(user))
    return status, body


def poll(
    gateway: Gateway, path: str, user: dict[str, Any], done: Callable[[Any], bool], what: str
) -> Any:
    """GET path as user until done(body) holds (a bound on waiting, never an assertion on
    how long it took); the last body."""

    def seen() -> Any:
        status, body = get(gateway, path, user)
        assert status == 200, body
        return body if done(body) else None

    return wait_until(seen, 30, what=what)


def reasons(body: dict[str, Any]) -> list[str]:
    return [d["reason"] for d in body.get("details", []) if "reason" in d]


def violated_fields(body: dict[str, Any]) -> list[str]:
    return [
        v["field"]
        for d in body.get("details", [])
        if d.get("@type", "").endswith("BadRequest")
        for v in d.get("fieldViolations", [])
    ]


def admin(gateway: Gateway) -> dict[str, Any]:
    """A new user made ADMIN with the operator command (`leaky auth grant-role`) on the mesh's
    auth database, then logged in again so their token carries the role."""
    user = register(gateway)
    granted = subprocess.run(
        [
            sys.executable,
            "-m",
            "leaky_tokens",
            "auth",
            "grant-role",
            "--username",
            user["username"],
        ],
        env={**os.environ, "LEAKY_DATA_DIR": str(gateway.data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert granted.returncode == 0, granted.stderr
    body = {"username": user["username"], "password": user["password"]}
    status, _, login = call(gateway, "POST", "/api/v1/auth/login", body)
    assert status == 200, login
    assert "ADMIN" in login["roles"]
    return {**user, **login}


@pytest.fixture(scope="module")
def org_usage(gateway: Gateway) -> dict[str, Any]:
    """Two members of a fresh org consume for it through Envoy: A 200 and 200 allowed, then
    300 denied (429); B 100 allowed; A 50 on qwen. The org scope holds exactly these."""
    a, b = register(gateway), register(gateway)
    org = create_org(gateway, a, b)
    statuses = []
    for user, tokens, provider in (
        (a, 200, PROVIDER),
        (a, 200, PROVIDER),
        (a, 300, PROVIDER),
        (b, 100, PROVIDER),
        (a, 50, "qwen"),
    ):
        status, _, answer = consume(gateway, user, tokens, provider=provider, org=org)
        statuses.append(status)
        if status == 200:
            assert answer["allowed"] is True, answer
        else:  # a denial is an error body (tests/e2e/test_token_consume.py)
            assert reasons(answer) == ["RATE_LIMITED"], answer
    assert statuses == [200, 200, 429, 200, 200]
    return {"a": a, "b": b, "org": org}


def test_report_through_envoy_shows_exactly_the_orgs_consumes(
    gateway: Gateway, org_usage: dict[str, Any]
) -> None:
    a, b, org = org_usage["a"], org_usage["b"], org_usage["org"]
    path = f"/api/v1/analytics/report?provider={PROVIDER}&orgId={org}"
    report = poll(
        gateway, path, b, lambda r: r.get("totalEvents") == "4", "the report shows the 4 events"
    )
    assert report["provider"] == PROVIDER
    assert report["orgId"] == org
    assert report.get("userId", "") == ""
    # int64 fields are JSON strings (proto3 JSON), as elsewhere in the API.
    assert (report["totalEvents"], report["allowedEvents"], report["deniedEvents"]) == (
        "4",
        "3",
        "1",
    )
    assert report["totalTokens"] == "800"
    assert (report["allowedTokens"], report["deniedTokens"]) == ("500", "300")
    assert report["averageTokensPerEvent"] == 200.0
    assert report["uniqueUsers"] == "2"
    assert report["topUsers"] == [
        {"userId": a["userId"], "totalTokens": "700", "events": "3"},
        {"userId": b["userId"], "totalTokens": "100", "events": "1"},
    ]
    assert report["sampleLimit"] == 5000
    assert report["windowStart"] < report["windowEnd"]
    # A's own scope: A's three events only, read by A.
    mine = f"/api/v1/analytics/report?provider={PROVIDER}&userId={a['userId']}"
    status, own = get(gateway, mine, a)
    assert status == 200, own
    assert (own["totalEvents"], own["totalTokens"], own["userId"]) == ("3", "700", a["userId"])
    # No scope: a user reads their own usage.
    status, implicit = get(gateway, f"/api/v1/analytics/report?provider={PROVIDER}", b)
    assert status == 200, implicit
    assert (implicit["totalEvents"], implicit["userId"]) == ("1", b["userId"])


def test_usage_lists_the_events_newest_first_with_their_ids(
    gateway: Gateway, org_usage: dict[str, Any]
) -> None:
    a, b, org = org_usage["a"], org_usage["b"], org_usage["org"]
    path = f"/api/v1/analytics/usage?provider={PROVIDER}&orgId={org}"
    usage = poll(gateway, path, a, lambda u: u.get("count") == 4, "usage lists the 4 events")
    items = usage["items"]
    assert [(i["userId"], i["tokens"], i.get("allowed", False)) for i in items] == [
        (b["userId"], "100", True),
        (a["userId"], "300", False),
        (a["userId"], "200", True),
        (a["userId"], "200", True),
    ]
    assert all(i["orgId"] == org and i["key"]["provider"] == PROVIDER for i in items)
    stamps = [i["key"]["timestamp"] for i in items]
    assert stamps == sorted(stamps, reverse=True)
    ids = [i["eventId"] for i in items]
    assert all(ids)
    assert len(set(ids)) == 4
    status, limited = get(gateway, f"{path}&limit=2", a)
    assert status == 200, limited
    assert [i["eventId"] for i in limited["items"]] == ids[:2]


def test_a_minute_series_and_the_provider_comparison(
    gateway: Gateway, org_usage: dict[str, Any]
) -> None:
    org = org_usage["org"]
    # The report first: once it shows every event, the rollups the series reads hold them.
    report = f"/api/v1/analytics/report?provider=qwen&orgId={org}"
    poll(gateway, report, org_usage["a"], lambda r: r.get("totalEvents") == "1", "qwen usage")
    path = f"/api/v1/analytics/series?provider={PROVIDER}&resolution=RESOLUTION_MINUTE&orgId={org}"
    status, series = get(gateway, path, org_usage["a"])
    assert status == 200, series
    assert (series["provider"], series["resolution"], series["orgId"]) == (
        PROVIDER,
        "RESOLUTION_MINUTE",
        org,
    )
    points = series["points"]
    assert len(points) == 61  # the current minute and the 60 before it, zeros included
    starts = [p["start"] for p in points]
    assert starts == sorted(starts)
    assert all(s.endswith(":00Z") for s in starts)
    totals = [p.get("totals", {}) for p in points]
    assert sum(int(t.get("events", "0")) for t in totals) == 4
    assert sum(int(t.get("tokens", "0")) for t in totals) == 800
    assert sum(int(t.get("deniedEvents", "0")) for t in totals) == 1
    status, compared = get(gateway, f"/api/v1/analytics/providers?orgId={org}", org_usage["b"])
    assert status == 200, compared
    assert [(p["provider"], p["totals"]["tokens"]) for p in compared["providers"]] == [
        (PROVIDER, "800"),
        ("qwen", "50"),
    ]
    shares = [p["tokenShare"] for p in compared["providers"]]
    assert shares == pytest.approx([800 / 850, 50 / 850])
    assert compared["orgId"] == org


def test_a_purchase_through_envoy_shows_completed_in_the_purchase_history(
    gateway: Gateway,
) -> None:
    buyer = register(gateway)
    body = {"userId": buyer["userId"], "provider": PROVIDER, "tokens": 250}
    headers = {**bearer(buyer), "idempotency-key": f"analytics-{uuid.uuid4().hex[:8]}"}
    status, _, started = call(gateway, "POST", "/api/v1/tokens/purchase", body, headers)
    assert status == 200, started
    saga_id = started["sagaId"]

    def completed(history: Any) -> bool:
        purchases = history.get("purchases", [])
        return bool(purchases) and purchases[0]["status"] == "PURCHASE_STATUS_COMPLETED"

    path = f"/api/v1/analytics/purchases?userId={buyer['userId']}"
    history = poll(gateway, path, buyer, completed, "the purchase history shows it COMPLETED")
    (purchase,) = history["purchases"]
    assert purchase["sagaId"] == saga_id
    assert (purchase["userId"], purchase["provider"], purchase["tokens"]) == (
        buyer["userId"],
        PROVIDER,
        "250",
    )
    assert (history["completedPurchases"], history["completedTokens"]) == ("1", "250")
    # Someone else cannot read it.
    other = register(gateway)
    status, refused = get(gateway, path, other)
    assert status == 403, refused
    assert reasons(refused) == ["NOT_YOUR_USER_ID"]


def test_scoping_through_envoy(gateway: Gateway, org_usage: dict[str, Any]) -> None:
    a, b, org = org_usage["a"], org_usage["b"], org_usage["org"]
    stranger = register(gateway)
    # B is in A's org but cannot read A's own usage.
    status, refused = get(
        gateway, f"/api/v1/analytics/usage?provider={PROVIDER}&userId={a['userId']}", b
    )
    assert status == 403, refused
    assert reasons(refused) == ["NOT_YOUR_USER_ID"]
    assert refused["message"]
    # A non-member cannot read the org, on any query.
    for query in (
        f"report?provider={PROVIDER}&orgId={org}",
        f"usage?provider={PROVIDER}&orgId={org}",
        f"series?provider={PROVIDER}&resolution=RESOLUTION_MINUTE&orgId={org}",
        f"providers?orgId={org}",
        f"purchases?orgId={org}",
        f"anomalies?provider={PROVIDER}&orgId={org}",
    ):
        status, refused = get(gateway, f"/api/v1/analytics/{query}", stranger)
        assert status == 403, (query, refused)
        assert reasons(refused) == ["NOT_ORG_MEMBER"], query
    # Without a token: 401.
    status, _, anonymous = call(gateway, "GET", f"/api/v1/analytics/report?provider={PROVIDER}")
    assert status == 401, anonymous
    # An ADMIN reads A's usage, the org, and everything.
    root = admin(gateway)
    status, theirs = get(
        gateway, f"/api/v1/analytics/report?provider={PROVIDER}&userId={a['userId']}", root
    )
    assert status == 200, theirs
    assert (theirs["userId"], theirs["totalEvents"]) == (a["userId"], "3")
    status, orgs = get(gateway, f"/api/v1/analytics/report?provider={PROVIDER}&orgId={org}", root)
    assert status == 200, orgs
    assert orgs["totalEvents"] == "4"
    status, everything = get(gateway, f"/api/v1/analytics/report?provider={PROVIDER}", root)
    assert status == 200, everything
    assert everything.get("userId", "") == everything.get("orgId", "") == ""
    assert int(everything["totalEvents"]) >= 4
    assert int(everything["uniqueUsers"]) >= 2


def test_a_removed_member_loses_the_org_and_their_token_does_not_keep_it(
    gateway: Gateway,
) -> None:
    """Membership is asked of auth (ADR 0037), not read from the JWT: a member added after
    their token was minted reads the org, and once removed is refused with the same token
    (within the membership cache's few seconds: polled with a bound)."""
    owner, member = register(gateway), register(gateway)
    org = create_org(gateway, owner, member)  # member's token predates the membership
    path = f"/api/v1/analytics/report?provider={PROVIDER}&orgId={org}"
    status, report = get(gateway, path, member)
    assert status == 200, report
    assert report["orgId"] == org
    removed, _, answer = call(
        gateway,
        "DELETE",
        f"/api/v1/auth/orgs/{org}/members/{member['userId']}",
        None,
        bearer(owner),
    )
    assert removed == 200, answer

    def refused() -> Any:
        status, body = get(gateway, path, member)
        assert status in (200, 403), body
        return body if status == 403 else None

    body = wait_until(refused, 30, what="the removed member is refused the org")
    assert reasons(body) == ["NOT_ORG_MEMBER"]
    status, still = get(gateway, path, owner)
    assert status == 200, still


def test_bad_input_is_400_with_a_json_body_naming_the_field(gateway: Gateway) -> None:
    user = register(gateway)
    for query, field in (
        ("report", "provider"),
        ("usage", "provider"),
        ("report?provider=Not%20Lower", "provider"),
        (f"series?provider={PROVIDER}", "resolution"),
        (f"report?provider={PROVIDER}&userId={user['userId']}&orgId=x", "orgId"),
    ):
        status, refused = get(gateway, f"/api/v1/analytics/{query}", user)
        assert status == 400, (query, refused)
        assert violated_fields(refused) == [field], (query, refused)
        assert refused["message"]
