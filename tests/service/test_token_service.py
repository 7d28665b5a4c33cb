"""The token service through a real stub: consume, denials with every detail, refunds, orgs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from leaky.token.v1 import limits_pb2 as lpb
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.domain import access
from leaky_tokens.token.domain.ports import Subject
from tests.support.grpc_errors import reason, trailers, unpack, violations
from tests.support.token_service import TokenHarness, limit_decision, token_service


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[TokenHarness]:
    async with token_service(tmp_path) as harness:
        yield harness


def consume(user: str = "user-1", tokens: int = 10, **extra: object) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(user_id=user, provider="openai", tokens=tokens, **extra)  # type: ignore[arg-type]


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_consume_debits_every_level_and_returns_the_provider_answer(
    svc: TokenHarness,
) -> None:
    call = svc.stub.Consume(consume(tokens=30, prompt="hi"), metadata=svc.auth())
    got = await call
    assert (got.allowed, got.capacity, got.used, got.remaining) == (True, 100, 30, 70)
    sent = {k: str(v) for k, v in (await call.initial_metadata()) or ()}
    assert (sent["x-ratelimit-limit"], sent["x-ratelimit-remaining"]) == ("100", "70")
    assert sent["ratelimit"].startswith('"openai/user-bucket";r=70;t=30')
    assert sent["x-request-id"]
    assert got.provider_response["message"] == "Stubbed OpenAI response"
    answer = json_format.MessageToDict(got.provider_response)
    assert answer["received"] == {"prompt": "hi"}
    levels = {s.level: s for s in got.limits}
    assert levels[lpb.LIMIT_LEVEL_USER_BUCKET].remaining == 70
    assert levels[lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW].remaining == 120
    assert levels[lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW].unit == lpb.LIMIT_UNIT_DAY
    assert levels[lpb.LIMIT_LEVEL_USER_PURCHASED].remaining == 0
    assert got.decision_id
    assert not got.replayed
    # The provider saw the caller's own credential, forwarded.
    assert svc.provider.credentials[-1] == dict(svc.auth())["authorization"]


async def test_consume_until_rate_limited_carries_every_detail_and_header(
    svc: TokenHarness,
) -> None:
    await svc.stub.Consume(consume(tokens=60), metadata=svc.auth())
    error = await refused(svc.stub.Consume(consume(tokens=60), metadata=svc.auth()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "RATE_LIMITED"
    retry = unpack(error, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToMilliseconds() == 20_000
    decision = limit_decision(error)
    bucket = next(s for s in decision.limits if s.level == lpb.LIMIT_LEVEL_USER_BUCKET)
    assert bucket.code == lpb.LIMIT_CODE_OVER_LIMIT
    assert (bucket.limit, bucket.remaining) == (100, 40)
    assert bucket.retry_after.ToMilliseconds() == 20_000
    assert bucket.reset_after.ToMilliseconds() == 60_000  # 60 tokens drain in 60 s
    assert bucket.window.ToMilliseconds() == 100_000
    window = next(s for s in decision.limits if s.level == lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW)
    assert window.code == lpb.LIMIT_CODE_OK
    headers = trailers(error)
    assert headers["retry-after"] == "20"
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("100", "40")
    assert headers["x-ratelimit-reset"] == "60"
    assert headers["ratelimit-policy"].startswith('"openai/user-bucket";q=100;w=100, ')
    assert headers["ratelimit"].startswith('"openai/user-bucket";r=40;t=60, ')
    assert '"openai/user-quota";q=150;w=86400' in headers["ratelimit-policy"]
    # Waiting what RetryInfo said is enough.
    svc.clock.advance(seconds=20)
    await svc.stub.Consume(consume(tokens=60), metadata=svc.auth())


async def test_request_larger_than_the_bucket_can_never_pass(svc: TokenHarness) -> None:
    error = await refused(svc.stub.Consume(consume(tokens=101), metadata=svc.auth()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "REQUEST_EXCEEDS_CAPACITY"
    assert unpack(error, error_details_pb2.RetryInfo) is None
    assert "retry-after" not in trailers(error)


async def test_out_of_quota_is_quota_exhausted_until_the_window_resets(svc: TokenHarness) -> None:
    await svc.stub.Consume(consume(tokens=100), metadata=svc.auth())
    svc.clock.advance(seconds=100)  # the bucket drained; the day's quota did not
    error = await refused(svc.stub.Consume(consume(tokens=100), metadata=svc.auth()))
    assert reason(error) == "QUOTA_EXHAUSTED"
    retry = unpack(error, error_details_pb2.RetryInfo)
    assert retry is not None  # the next day's allowance covers it
    window = next(
        s for s in limit_decision(error).limits if s.level == lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW
    )
    assert window.code == lpb.LIMIT_CODE_OVER_LIMIT


async def test_a_failed_provider_call_refunds_every_debit(svc: TokenHarness) -> None:
    svc.provider.fail = grpc.StatusCode.UNAVAILABLE
    error = await refused(svc.stub.Consume(consume(tokens=100), metadata=svc.auth()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(error) == "PROVIDER_UNAVAILABLE"
    assert svc.provider.calls == 3  # retried on UNAVAILABLE, then given up
    quota = await svc.stub.GetQuota(
        pb.GetQuotaRequest(user_id="user-1", provider="openai"), metadata=svc.auth()
    )
    assert (quota.window_used, quota.window_remaining) == (0, 150)
    svc.provider.fail = None
    got = await svc.stub.Consume(consume(tokens=100), metadata=svc.auth())  # the bucket is empty
    assert got.remaining == 0


async def test_a_refused_credential_is_not_retried(svc: TokenHarness) -> None:
    svc.provider.fail = grpc.StatusCode.PERMISSION_DENIED
    error = await refused(svc.stub.Consume(consume(), metadata=svc.auth()))
    assert reason(error) == "PROVIDER_UNAVAILABLE"
    assert svc.provider.calls == 1


async def test_the_circuit_opens_after_repeated_failures(tmp_path: Path) -> None:
    async with token_service(tmp_path, provider_breaker_failures=2, provider_attempts=1) as svc:
        svc.provider.fail = grpc.StatusCode.UNAVAILABLE
        for _ in range(2):
            await refused(svc.stub.Consume(consume(), metadata=svc.auth()))
        svc.provider.fail = None
        error = await refused(svc.stub.Consume(consume(), metadata=svc.auth()))
        assert reason(error) == "PROVIDER_UNAVAILABLE"
        assert "circuit is open" in (error.details() or "")
        assert svc.provider.calls == 2  # the open circuit did not call
        svc.clock.advance(seconds=10)  # the reset time: one trial call goes out and succeeds
        await svc.stub.Consume(consume(), metadata=svc.auth())
        assert svc.provider.calls == 3


async def test_a_non_member_is_refused_and_a_member_charges_the_org(svc: TokenHarness) -> None:
    request = consume(org_id="org-9")
    error = await refused(svc.stub.Consume(request, metadata=svc.auth()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(error) == "NOT_ORG_MEMBER"
    svc.members.members["user-1"] = {"org-9"}
    got = await svc.stub.Consume(request, metadata=svc.auth())
    levels = {s.level for s in got.limits}
    assert {lpb.LIMIT_LEVEL_ORG_BUCKET, lpb.LIMIT_LEVEL_ORG_QUOTA_WINDOW} <= levels
    org = await svc.stub.GetOrgQuota(
        pb.GetOrgQuotaRequest(org_id="org-9", provider="openai"), metadata=svc.auth()
    )
    assert (org.org_id, org.window_allowance, org.window_used) == ("org-9", 10_000, 10)
    svc.members.members["user-1"] = set()  # removed: refused at once (no cache here)
    error = await refused(svc.stub.Consume(request, metadata=svc.auth()))
    assert reason(error) == "NOT_ORG_MEMBER"
    error = await refused(
        svc.stub.GetOrgQuota(
            pb.GetOrgQuotaRequest(org_id="org-9", provider="openai"), metadata=svc.auth()
        )
    )
    assert reason(error) == "NOT_ORG_MEMBER"


async def test_only_admin_acts_for_another_user(svc: TokenHarness) -> None:
    error = await refused(svc.stub.Consume(consume(user="user-2"), metadata=svc.auth("user-1")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = svc.auth("admin-1", "ADMIN")
    got = await svc.stub.Consume(consume(user="user-2", tokens=40), metadata=admin)
    assert got.capacity == 100  # user-2's bucket, at the default tier (not ADMIN's doubled one)
    quota = await svc.stub.GetQuota(
        pb.GetQuotaRequest(user_id="user-2", provider="openai"), metadata=svc.auth("user-2")
    )
    assert quota.window_used == 40
    error = await refused(
        svc.stub.GetQuota(
            pb.GetQuotaRequest(user_id="user-2", provider="openai"), metadata=svc.auth("user-1")
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_input_names_each_field(svc: TokenHarness) -> None:
    bad = pb.ConsumeRequest(user_id="user-1", provider="nope", tokens=0, idempotency_key="k" * 101)
    error = await refused(svc.stub.Consume(bad, metadata=svc.auth()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["provider", "tokens", "idempotencyKey"]
    error = await refused(svc.stub.Consume(pb.ConsumeRequest(), metadata=svc.auth()))
    assert violations(error) == ["userId", "provider", "tokens"]


async def test_ids_with_control_characters_are_bad_input_even_for_admin(
    svc: TokenHarness,
) -> None:
    """ADMIN passes no membership check, so such an id used to reach the store, whose keys
    separate fields with \\x1e: INTERNAL (HTTP 500; found by schemathesis as ADMIN)."""
    admin = svc.auth("admin-1", "ADMIN")
    bad_org = pb.GetOrgQuotaRequest(org_id="o\x1ex", provider="qwen")
    error = await refused(svc.stub.GetOrgQuota(bad_org, metadata=admin))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["orgId"]
    error = await refused(svc.stub.Consume(consume(user="u\x1fx"), metadata=admin))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["userId"]
    # A reservation id naming such a subject is not one this service made: NOT_FOUND.
    forged = access.reservation_id("id", Subject("u\x1ex", "openai", None))
    error = await refused(
        svc.stub.Release(pb.ReleaseRequest(reservation_id=forged), metadata=admin)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_the_same_idempotency_key_debits_once(svc: TokenHarness) -> None:
    first = await svc.stub.Consume(consume(tokens=25, idempotency_key="k1"), metadata=svc.auth())
    again = await svc.stub.Consume(consume(tokens=25, idempotency_key="k1"), metadata=svc.auth())
    assert again.replayed
    assert again.decision_id == first.decision_id
    assert svc.provider.calls == 1
    header = (*svc.auth(), ("idempotency-key", "k1"))
    by_header = await svc.stub.Consume(consume(tokens=25), metadata=header)
    assert by_header.replayed
    quota = await svc.stub.GetQuota(
        pb.GetQuotaRequest(user_id="user-1", provider="openai"), metadata=svc.auth()
    )
    assert quota.window_used == 25


async def test_an_idempotency_key_reused_for_another_request_is_already_exists(
    svc: TokenHarness,
) -> None:
    await svc.stub.Consume(consume(tokens=25, idempotency_key="k2"), metadata=svc.auth())
    error = await refused(
        svc.stub.Consume(consume(tokens=30, idempotency_key="k2"), metadata=svc.auth())
    )
    assert (error.code(), reason(error)) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_a_retry_after_a_failed_provider_call_is_decided_afresh(svc: TokenHarness) -> None:
    svc.provider.fail = grpc.StatusCode.UNAVAILABLE
    keyed = consume(tokens=25, idempotency_key="k-retry")
    first = await refused(svc.stub.Consume(keyed, metadata=svc.auth()))
    assert reason(first) == "PROVIDER_UNAVAILABLE"
    svc.provider.fail = None
    # The refund forgot the key: the retry calls the provider and answers with its reply,
    # not a replay of a decision that served nothing.
    retry = await svc.stub.Consume(keyed, metadata=svc.auth())
    assert not retry.replayed
    assert retry.provider_response["message"] == "Stubbed OpenAI response"
    again = await svc.stub.Consume(keyed, metadata=svc.auth())
    assert (again.replayed, again.decision_id) == (True, retry.decision_id)
    quota = await svc.stub.GetQuota(
        pb.GetQuotaRequest(user_id="user-1", provider="openai"), metadata=svc.auth()
    )
    assert quota.window_used == 25  # debited once: the refunded attempt gave its debit back


async def test_a_retry_after_a_denial_is_decided_afresh(svc: TokenHarness) -> None:
    await svc.stub.Consume(consume(tokens=90), metadata=svc.auth())
    keyed = consume(tokens=30, idempotency_key="k-wait")
    error = await refused(svc.stub.Consume(keyed, metadata=svc.auth()))
    assert reason(error) == "RATE_LIMITED"
    svc.clock.advance(seconds=20)  # as Retry-After said
    got = await svc.stub.Consume(keyed, metadata=svc.auth())
    assert (got.allowed, got.replayed) == (True, False)


async def test_an_idempotency_key_reused_for_another_provider_is_refused(
    svc: TokenHarness,
) -> None:
    await svc.stub.Consume(consume(tokens=25, idempotency_key="k-p"), metadata=svc.auth())
    other = pb.ConsumeRequest(user_id="user-1", provider="qwen", tokens=25, idempotency_key="k-p")
    error = await refused(svc.stub.Consume(other, metadata=svc.auth()))
    assert (error.code(), reason(error)) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert "provider 'openai', not 'qwen'" in (error.details() or "")
    assert svc.provider.calls == 1  # nothing decided, nothing served for the reuse
    reserve = pb.ReserveRequest(user_id="user-1", provider="openai", tokens=5, idempotency_key="r")
    await svc.stub.Reserve(reserve, metadata=svc.auth())
    reserve.provider = "qwen"
    error = await refused(svc.stub.Reserve(reserve, metadata=svc.auth()))
    assert reason(error) == "IDEMPOTENCY_KEY_REUSED"
