"""The Python client against a real in-process gRPC server whose servicers follow a script:
deadlines, retries of idempotent calls only, error mapping, credentials and reservations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from leaky.auth.v1 import auth_pb2
from leaky.token.v1 import limits_pb2, token_pb2
from leaky_tokens.client import (
    DeadlineExceeded,
    InvalidArgument,
    LeakyClient,
    ProviderUnavailable,
    RateLimited,
    Reservation,
    ReservationClosed,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from leaky_tokens.runtime import errors
from tests.support.scripted_grpc import Script, answer, fail, serving

USER = "6c1f1b0e-0000-4000-8000-000000000001"


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def target(script: Script) -> Iterator[str]:
    with serving(script) as address:
        yield address


@dataclass
class Sleeps:
    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(target: str, sleeps: Sleeps) -> Iterator[LeakyClient]:
    with LeakyClient(target, timeout=timedelta(seconds=5), sleep=sleeps) as made:
        made.use_token("a.jwt.token", user_id=USER)
        yield made


UNAVAILABLE = errors.UnavailableError("store away", reason="STORE_UNAVAILABLE")
QUOTA = token_pb2.Quota(user_id=USER, provider="openai", window_allowance=100)


def test_a_read_is_retried_on_unavailable_with_capped_backoff(
    client: LeakyClient, script: Script, sleeps: Sleeps
) -> None:
    script.steps["GetQuota"] = [fail(UNAVAILABLE), fail(UNAVAILABLE), answer(QUOTA)]
    assert client.get_quota("openai") == QUOTA
    assert len(script.calls("GetQuota")) == 3
    assert len(sleeps.waits) == 2
    assert 0 <= sleeps.waits[0] <= 0.1  # full jitter under initial_backoff, then doubled
    assert 0 <= sleeps.waits[1] <= 0.2


def test_retries_stop_after_max_attempts(target: str, script: Script, sleeps: Sleeps) -> None:
    script.steps["GetQuota"] = [fail(UNAVAILABLE)]
    policy = RetryPolicy(max_attempts=2)
    with LeakyClient(target, retry=policy, sleep=sleeps) as client:
        client.use_token("t", user_id=USER)
        with pytest.raises(Unavailable) as info:
            client.get_quota("openai")
    assert info.value.reason == "STORE_UNAVAILABLE"
    assert len(script.calls("GetQuota")) == 2


def test_consume_without_an_idempotency_key_is_never_retried(
    client: LeakyClient, script: Script, sleeps: Sleeps
) -> None:
    script.steps["Consume"] = [fail(UNAVAILABLE), answer(token_pb2.ConsumeResponse(allowed=True))]
    with pytest.raises(Unavailable):
        client.consume("openai", 10)
    assert len(script.calls("Consume")) == 1
    assert sleeps.waits == []


def test_consume_and_reserve_with_an_idempotency_key_are_retried(
    client: LeakyClient, script: Script
) -> None:
    script.steps["Consume"] = [fail(UNAVAILABLE), answer(token_pb2.ConsumeResponse(allowed=True))]
    assert client.consume("openai", 10, idempotency_key="k-1").allowed
    keys = [request.idempotency_key for request, _, _ in script.calls("Consume")]
    assert keys == ["k-1", "k-1"]  # the same key again: the server answers a repeat once
    held = token_pb2.ReserveResponse(reservation=token_pb2.Reservation(reservation_id="rsv_1"))
    script.steps["Reserve"] = [fail(UNAVAILABLE), answer(held)]
    assert client.reserve("openai", 10, idempotency_key="k-2") == held
    assert len(script.calls("Reserve")) == 2
    script.steps["Purchase"] = [fail(UNAVAILABLE), answer(token_pb2.TokenPurchase(saga_id="s"))]
    with pytest.raises(Unavailable):  # a purchase without a key: never twice
        client.purchase("openai", 10)
    assert len(script.calls("Purchase")) == 1


def test_provider_unavailable_is_not_retried_even_with_a_key(
    client: LeakyClient, script: Script
) -> None:
    gone = errors.UnavailableError("provider down", reason="PROVIDER_UNAVAILABLE")
    script.steps["Consume"] = [fail(gone), answer(token_pb2.ConsumeResponse(allowed=True))]
    with pytest.raises(ProviderUnavailable):
        client.consume("openai", 10, idempotency_key="k")
    assert len(script.calls("Consume")) == 1


def test_an_in_flight_key_waits_the_servers_retry_info(
    client: LeakyClient, script: Script, sleeps: Sleeps
) -> None:
    # IDEMPOTENCY_KEY_IN_FLIGHT is UNAVAILABLE with RetryInfo: the wait is the server's.
    busy = errors.UnavailableError("decided elsewhere", reason="IDEMPOTENCY_KEY_IN_FLIGHT")
    busy.details = (error_details_pb2.RetryInfo(retry_delay={"nanos": 250_000_000}),)
    script.steps["Consume"] = [fail(busy), answer(token_pb2.ConsumeResponse(allowed=True))]
    assert client.consume("openai", 10, idempotency_key="k").allowed
    assert sleeps.waits == [0.25]


def test_a_denial_is_rate_limited_with_retry_after_limits_and_trailers(
    client: LeakyClient, script: Script
) -> None:
    denied = errors.ResourceExhaustedError(
        "rate limited at user_bucket",
        retry_after_seconds=1.5,
        reason="RATE_LIMITED",
        metadata={"level": "user_bucket", "provider": "openai"},
    )
    bucket = limits_pb2.LimitStatus(
        level=limits_pb2.LIMIT_LEVEL_USER_BUCKET, code=limits_pb2.LIMIT_CODE_OVER_LIMIT, limit=2000
    )
    denied.details = (limits_pb2.LimitDecision(decision_id="d-1", limits=[bucket]),)
    denied.headers = {"x-ratelimit-limit": "2000"}
    script.steps["Consume"] = [fail(denied)]
    with pytest.raises(RateLimited) as info:
        client.consume("openai", 500, idempotency_key="k")
    error = info.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error.reason, error.metadata["level"]) == ("RATE_LIMITED", "user_bucket")
    assert error.retry_after == timedelta(seconds=1.5)
    assert error.limits is not None
    assert error.limits.decision_id == "d-1"
    assert error.limits.limits[0].limit == 2000
    assert error.trailers["retry-after"] == "2"
    assert error.trailers["x-ratelimit-limit"] == "2000"
    assert len(script.calls("Consume")) == 1  # a decision, not a failure: never retried


def test_bad_input_carries_the_field_violations(client: LeakyClient, script: Script) -> None:
    bad = errors.InvalidArgumentError([errors.FieldViolation("tokens", "must be positive")])
    script.steps["Consume"] = [fail(bad)]
    with pytest.raises(InvalidArgument) as info:
        client.consume("openai", 0)
    assert [(v.field, v.description) for v in info.value.field_violations] == [
        ("tokens", "must be positive")
    ]


def test_every_call_has_a_deadline_and_one_past_it_is_deadline_exceeded(
    target: str, script: Script
) -> None:
    script.steps["GetQuota"] = [answer(QUOTA)]
    release = threading.Event()

    def stuck(_request: Any, _context: grpc.ServicerContext) -> Any:
        release.wait(10)
        return token_pb2.ConsumeResponse(allowed=True)

    script.steps["Consume"] = [stuck]
    with LeakyClient(target, timeout=timedelta(seconds=7)) as client:
        client.use_token("t", user_id=USER)
        client.get_quota("openai")
        client.get_quota("openai", timeout=timedelta(seconds=2))
        try:
            with pytest.raises(DeadlineExceeded):
                client.consume("openai", 1, timeout=timedelta(milliseconds=200))
        finally:
            release.set()
    (_, _, remaining), (_, _, shorter) = script.calls("GetQuota")
    assert remaining is not None
    # The server saw the client's default deadline, then a call's own (grpc-timeout rounds
    # up a little on the wire).
    assert 3 < remaining <= 7.5
    assert shorter is not None
    assert 0 < shorter <= 2.5


def test_bearer_token_and_api_key_go_out_as_metadata(
    target: str, script: Script, client: LeakyClient
) -> None:
    script.steps["GetQuota"] = [answer(QUOTA)]
    client.get_quota("openai")
    (_, metadata, _), *_ = script.calls("GetQuota")
    assert metadata["authorization"] == "Bearer a.jwt.token"
    owner = auth_pb2.ValidateApiKeyResponse(user_id=USER, api_key_id="key-1")
    script.steps["ValidateApiKey"] = [answer(owner)]
    with LeakyClient(target) as keyed:
        assert keyed.use_api_key("lt_secret").api_key_id == "key-1"
        assert keyed.user_id == USER
        keyed.get_quota("openai")
    *_, (request, metadata, _) = script.calls("GetQuota")
    assert metadata["x-api-key"] == "lt_secret"
    assert "authorization" not in metadata
    assert request.user_id == USER


def login_answer(token: str, expires: datetime) -> auth_pb2.LoginResponse:
    answer = auth_pb2.LoginResponse(user_id=USER, username="alice", token=token)
    answer.expires_at.FromDatetime(expires)
    return answer


def test_a_token_near_its_expiry_is_renewed_by_logging_in_again(
    target: str, script: Script
) -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    clock = [now]
    script.steps["Login"] = [
        answer(login_answer("first", now + timedelta(minutes=15))),
        answer(login_answer("second", now + timedelta(minutes=30))),
    ]
    script.steps["GetQuota"] = [answer(QUOTA)]
    with LeakyClient(target, clock=lambda: clock[0]) as client:
        client.login("alice", "correct horse")
        client.get_quota("openai")
        clock[0] = now + timedelta(minutes=14, seconds=45)  # inside the 30 s margin
        client.get_quota("openai")
    tokens = [m["authorization"] for _, m, _ in script.calls("GetQuota")]
    assert tokens == ["Bearer first", "Bearer second"]
    logins = script.calls("Login")
    assert [(r.username, r.password) for r, _, _ in logins] == [("alice", "correct horse")] * 2
    assert "correct horse" not in repr(client.__dict__)


def test_a_refused_token_logs_in_again_once_even_for_a_consume(target: str, script: Script) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    script.steps["Login"] = [
        answer(login_answer("old", later)),
        answer(login_answer("new", later)),
    ]
    expired = errors.UnauthenticatedError("token expired", reason="TOKEN_EXPIRED")
    script.steps["Consume"] = [fail(expired), answer(token_pb2.ConsumeResponse(allowed=True))]
    with LeakyClient(target) as client:
        client.login("alice", "correct horse")
        assert client.consume("openai", 1).allowed  # refused before it ran: safe to repeat
    tokens = [m["authorization"] for _, m, _ in script.calls("Consume")]
    assert tokens == ["Bearer old", "Bearer new"]
    script.steps["Consume"] = [fail(expired)]
    with LeakyClient(target) as client:
        client.login("alice", "correct horse")
        with pytest.raises(Unauthenticated):  # still refused after one new login: raised
            client.consume("openai", 1)


def held(rid: str = "rsv_1", tokens: int = 800) -> token_pb2.ReserveResponse:
    reservation = token_pb2.Reservation(reservation_id=rid, reserved_tokens=tokens)
    return token_pb2.ReserveResponse(reservation=reservation)


def test_a_reservation_settles_at_actual_on_success_and_at_the_estimate_when_unset(
    client: LeakyClient, script: Script
) -> None:
    script.steps["Reserve"] = [answer(held())]
    script.steps["Settle"] = [answer(token_pb2.SettleResponse(refunded_tokens=300))]
    with client.reservation("openai", 800) as r:
        assert r.reservation_id == "rsv_1"
        r.actual = 500
    assert r.settled is not None
    assert r.settled.refunded_tokens == 300
    with client.reservation("openai", 800):
        pass
    settles = [(q.reservation_id, q.actual_tokens) for q, _, _ in script.calls("Settle")]
    assert settles == [("rsv_1", 500), ("rsv_1", 800)]
    assert script.calls("Release") == []


def test_a_reservation_is_released_when_the_block_raises(
    client: LeakyClient, script: Script
) -> None:
    script.steps["Reserve"] = [answer(held())]
    script.steps["Release"] = [answer(token_pb2.ReleaseResponse(released_tokens=800))]

    class LlmDown(Exception):
        pass

    def use(r: Reservation) -> None:
        r.actual = 10
        raise LlmDown

    with pytest.raises(LlmDown), client.reservation("openai", 800) as r:
        use(r)
    assert r.released is not None
    assert r.released.released_tokens == 800
    assert [q.reservation_id for q, _, _ in script.calls("Release")] == ["rsv_1"]
    assert script.calls("Settle") == []
    # A release that fails too is noted on the block's exception, which still propagates.
    settled = errors.FailedPreconditionError("settled", reason="RESERVATION_SETTLED")
    script.steps["Release"] = [fail(settled)]
    with pytest.raises(LlmDown) as info, client.reservation("openai", 800):
        raise LlmDown
    assert "releasing rsv_1 failed too" in "".join(info.value.__notes__)


def test_settle_and_release_are_retried_and_a_closed_reservation_is_typed(
    client: LeakyClient, script: Script
) -> None:
    script.steps["Settle"] = [fail(UNAVAILABLE), answer(token_pb2.SettleResponse())]
    client.settle("rsv_1", 5)
    assert len(script.calls("Settle")) == 2
    released = errors.FailedPreconditionError("released", reason="RESERVATION_RELEASED")
    script.steps["Settle"] = [fail(released)]
    with pytest.raises(ReservationClosed) as info:
        client.settle("rsv_1", 5)
    assert info.value.reason == "RESERVATION_RELEASED"
