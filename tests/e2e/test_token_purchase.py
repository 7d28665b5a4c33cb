"""Purchases over HTTP through Envoy on the embedded mesh: the saga runs in the token service."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def test_a_purchase_starts_completes_and_tops_up_the_balance(gateway: Gateway) -> None:
    buyer, other = register(gateway), register(gateway)
    auth = {"authorization": f"Bearer {buyer['token']}"}
    body = {"userId": buyer["userId"], "provider": "openai", "tokens": 300}
    keyed = {**auth, "idempotency-key": "top-up-1"}
    status, _, started = call(gateway, "POST", "/api/v1/tokens/purchase", body, keyed)
    assert status == 200, started
    assert started["status"] == "PURCHASE_STATUS_STARTED"
    assert started["idempotencyKey"] == "top-up-1"
    saga_id = started["sagaId"]

    def completed() -> dict[str, object] | None:
        status, _, seen = call(gateway, "GET", f"/api/v1/tokens/purchase/{saga_id}", None, auth)
        assert status == 200, seen
        return seen if seen["status"] == "PURCHASE_STATUS_COMPLETED" else None

    wait_until(completed, 30, what="the purchase completed")
    quota_path = f"/api/v1/tokens/quota?userId={buyer['userId']}&provider=openai"
    status, _, quota = call(gateway, "GET", quota_path, None, auth)
    assert status == 200, quota
    assert quota["purchasedBalance"] == "300"
    # The same key again: the same purchase, nothing bought twice.
    status, _, again = call(gateway, "POST", "/api/v1/tokens/purchase", body, keyed)
    assert (status, again["sagaId"]) == (200, saga_id)
    # The same key with another payload: 409 with a JSON message.
    changed = {**body, "tokens": 301}
    status, _, refused = call(gateway, "POST", "/api/v1/tokens/purchase", changed, keyed)
    assert status == 409, refused
    assert "different purchase" in refused["message"]
    status, _, page = call(gateway, "GET", "/api/v1/tokens/purchases?pageSize=5", None, auth)
    assert status == 200, page
    assert [p["sagaId"] for p in page["purchases"]] == [saga_id]
    status, _, quota = call(gateway, "GET", quota_path, None, auth)
    assert quota["purchasedBalance"] == "300"
    # Someone else asking for it learns nothing, not even that it exists.
    theirs = {"authorization": f"Bearer {other['token']}"}
    status, _, hidden = call(gateway, "GET", f"/api/v1/tokens/purchase/{saga_id}", None, theirs)
    assert status == 404, hidden


def test_bad_purchase_input_is_400_with_field_violations(gateway: Gateway) -> None:
    buyer = register(gateway)
    auth = {"authorization": f"Bearer {buyer['token']}"}
    body = {"userId": buyer["userId"], "provider": "openai", "tokens": 0}
    status, _, answer = call(gateway, "POST", "/api/v1/tokens/purchase", body, auth)
    assert status == 400, answer
    assert "tokens" in str(answer)
