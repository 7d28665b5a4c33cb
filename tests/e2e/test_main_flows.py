"""The main flows the way users call them, one suite over every transport and both targets.

Register, log in, create and list an API key, consume with it (X-Api-Key, resolved by
Envoy's ext_authz), consume with the JWT until 429, read the quota, buy tokens
until the purchase is COMPLETED, then see the consumes in the analytics report: over HTTP/JSON
(urllib), over grpcurl by reflection and by the descriptor set Envoy's transcoder loads
(envoy/leaky.pb), and over the Python client (leaky_tokens.client, the generated stubs), each
through Envoy's one port on `leaky up` (embedded) and on `leaky up --stack` (the native
stack's Envoy, Redis, PostgreSQL, Kafka, Cassandra). Each transport asserts its own status
codes, bodies and headers (HTTP headers, gRPC trailers, typed exceptions); the driver asserts
what every transport must agree on. One user per flow, shared by its steps; the shipped
policy's gemini bucket (500 tokens, 5/s) makes the third 200-token consume the 429.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest

from leaky.token.v1 import limits_pb2, token_pb2
from leaky_tokens.client import AsyncLeakyClient, LeakyClient, RateLimited, Unauthenticated
from leaky_tokens.stack.orchestrator import Stack
from tests.e2e.conftest import Gateway, leaky_up
from tests.e2e.test_gateway import call
from tests.e2e.test_stack_mesh import saga_env
from tests.support.stack import component
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "envoy" / "leaky.pb"
PROVIDER, CAPACITY, CHUNK = "gemini", 500, 200
PASSWORD = "correct horse"
COMPLETED = "PURCHASE_STATUS_COMPLETED"


@dataclass
class User:
    username: str
    user_id: str = ""
    token: str = ""


@dataclass
class Decision:
    """One consume as the driver compares it: allowed, or the denial's ErrorInfo reason."""

    allowed: bool
    reason: str = ""


class Transport(Protocol):
    """The flow's steps; each implementation checks its own wire (codes, bodies, headers)."""

    def register(self, user: User) -> None: ...
    def login(self, user: User) -> None: ...
    def create_api_key(self, user: User) -> tuple[str, str]: ...
    def list_api_keys(self, user: User) -> list[str]: ...
    def consume(self, user: User, tokens: int) -> Decision: ...
    def consume_with_api_key(self, user: User, api_key: str, tokens: int) -> None: ...
    def quota(self, user: User) -> dict[str, int]: ...
    def purchase(self, user: User, tokens: int, key: str) -> str: ...
    def purchase_status(self, user: User, saga_id: str) -> str: ...
    def report(self, user: User) -> dict[str, int]: ...


def counts(body: dict[str, Any], *names: str) -> dict[str, int]:
    """int64 fields of a JSON body by their snake_case names, whichever naming the body uses
    (proto3 JSON names, or the proto's own as grpcurl prints by reflection); absent is 0."""
    out = {}
    for name in names:
        camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
        out[name] = int(body.get(camel, body.get(name, 0)))
    return out


def pick(body: dict[str, Any], name: str) -> Any:
    camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
    return body[camel] if camel in body else body[name]


QUOTA_FIELDS = ("window_allowance", "window_used", "purchased_balance", "remaining_tokens")
REPORT_FIELDS = (
    "total_events",
    "allowed_events",
    "denied_events",
    "allowed_tokens",
    "denied_tokens",
)


class Http:
    """HTTP/JSON through Envoy's transcoder, with urllib."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _call(
        self, method: str, path: str, body: object = None, user: User | None = None, **more: str
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"authorization": f"Bearer {user.token}"} if user else {}
        status, head, answer = call(self.gateway, method, path, body, {**headers, **more})
        assert head["content-type"].startswith("application/json"), head
        assert head.get("x-request-id"), head
        return status, head, answer

    def register(self, user: User) -> None:
        body = {"username": user.username, "email": f"{user.username}@example.com"}
        status, _, answer = self._call(
            "POST", "/api/v1/auth/register", {**body, "password": PASSWORD}
        )
        assert status == 200, answer
        assert (answer["username"], answer["roles"]) == (user.username, ["USER"])
        assert answer["expiresAt"].endswith("Z")
        user.user_id, user.token = answer["userId"], answer["token"]

    def login(self, user: User) -> None:
        body = {"username": user.username, "password": PASSWORD}
        status, _, answer = self._call("POST", "/api/v1/auth/login", body)
        assert status == 200, answer
        assert answer["userId"] == user.user_id
        user.token = answer["token"]
        wrong = {**body, "password": "not the password"}
        status, _, refused = self._call("POST", "/api/v1/auth/login", wrong)
        assert status == 401, refused
        assert [d["reason"] for d in refused["details"] if "reason" in d] == ["INVALID_CREDENTIALS"]

    def create_api_key(self, user: User) -> tuple[str, str]:
        body = {"userId": user.user_id, "name": "flows"}
        status, _, created = self._call("POST", "/api/v1/auth/api-keys", body, user)
        assert status == 200, created
        assert created["apiKey"].startswith("lt_")
        return created["id"], created["apiKey"]

    def list_api_keys(self, user: User) -> list[str]:
        path = f"/api/v1/auth/api-keys?userId={user.user_id}"
        status, _, listed = self._call("GET", path, None, user)
        assert status == 200, listed
        assert all("apiKey" not in k for k in listed["apiKeys"])  # never the secret again
        return [k["id"] for k in listed["apiKeys"]]

    def consume(self, user: User, tokens: int) -> Decision:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens, "prompt": "hi"}
        status, head, answer = self._call("POST", "/api/v1/tokens/consume", body, user)
        assert head["x-ratelimit-limit"] == str(CAPACITY), head  # on allowed answers too
        assert f'"{PROVIDER}/user-bucket";q={CAPACITY}' in head["ratelimit-policy"]
        if status == 200:
            assert answer["allowed"] is True
            assert answer["providerResponse"]["provider"] == PROVIDER
            return Decision(True)
        assert status == 429, answer
        assert int(head["retry-after"]) >= 1
        assert int(head["x-ratelimit-remaining"]) < tokens
        assert head["ratelimit"].startswith(f'"{PROVIDER}/user-bucket";r=')
        (reason,) = [d["reason"] for d in answer["details"] if "reason" in d]
        (retry,) = [d for d in answer["details"] if d["@type"].endswith("RetryInfo")]
        assert float(retry["retryDelay"].rstrip("s")) > 0
        return Decision(False, reason)

    def consume_with_api_key(self, user: User, api_key: str, tokens: int) -> None:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens}
        path = "/api/v1/tokens/consume"
        status, head, answer = self._call("POST", path, body, None, **{"x-api-key": api_key})
        assert status == 200, answer
        assert answer["allowed"] is True
        assert head["x-ratelimit-remaining"] == str(CAPACITY - tokens), head  # the user's bucket
        status, head, refused = self._call("POST", path, body, None, **{"x-api-key": api_key + "x"})
        assert status == 401, refused
        assert head["www-authenticate"].startswith("ApiKey"), head

    def quota(self, user: User) -> dict[str, int]:
        path = f"/api/v1/tokens/quota?userId={user.user_id}&provider={PROVIDER}"
        status, _, quota = self._call("GET", path, None, user)
        assert status == 200, quota
        assert (quota["userId"], quota["tier"]) == (user.user_id, "USER")
        return counts(quota, *QUOTA_FIELDS)

    def purchase(self, user: User, tokens: int, key: str) -> str:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens}
        status, _, started = self._call(
            "POST", "/api/v1/tokens/purchase", body, user, **{"idempotency-key": key}
        )
        assert status == 200, started
        assert (started["status"], started["idempotencyKey"]) == ("PURCHASE_STATUS_STARTED", key)
        return str(started["sagaId"])

    def purchase_status(self, user: User, saga_id: str) -> str:
        status, _, seen = self._call("GET", f"/api/v1/tokens/purchase/{saga_id}", None, user)
        assert status == 200, seen
        return str(seen["status"])

    def report(self, user: User) -> dict[str, int]:
        path = f"/api/v1/analytics/report?provider={PROVIDER}&userId={user.user_id}"
        status, _, report = self._call("GET", path, None, user)
        if status == 503:  # the stack's Envoy may not route to a just-registered service yet
            return {}
        assert status == 200, report
        return counts(report, *REPORT_FIELDS)


@dataclass
class GrpcurlAnswer:
    code: int  # the gRPC status code (grpcurl exits with 64 + code)
    body: dict[str, Any]  # the response, or the error status with its details
    headers: dict[str, str]  # response headers (initial metadata)
    trailers: dict[str, str]


class Grpcurl:
    """Native gRPC through Envoy with grpcurl, by reflection (the catalog behind the gateway)
    or by the descriptor set (-protoset envoy/leaky.pb)."""

    def __init__(self, gateway: Gateway, binary: Path, protoset: bool) -> None:
        self.gateway, self.binary = gateway, binary
        self.source = ["-protoset", str(DESCRIPTOR_SET)] if protoset else []

    def rpc(
        self, method: str, body: dict[str, Any], user: User | None = None, api_key: str = ""
    ) -> GrpcurlAnswer:
        sent = ["-H", f"authorization: Bearer {user.token}"] if user else []
        sent += ["-H", f"x-api-key: {api_key}"] if api_key else []
        done = subprocess.run(
            [
                str(self.binary),
                *("-plaintext", "-v", "-format-error", *self.source, *sent),
                *("-d", json.dumps(body), self.gateway.grpc, method),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        code = 0 if done.returncode == 0 else done.returncode - 64
        assert 0 <= code <= 16, done.stderr
        out = done.stdout

        def block(title: str, end: str) -> dict[str, str]:
            if title not in out:
                return {}
            text = out.split(title, 1)[1].split(end, 1)[0]
            return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

        headers = block("Response headers received:\n", "\n\n")
        trailers = block("Response trailers received:\n", "\nSent ")
        if code == 0:
            text = out.split("Response contents:\n", 1)[1].split("\n\nResponse trailers", 1)[0]
        else:
            text = done.stderr
        assert trailers.get("x-request-id"), out  # Envoy's, on every answer
        return GrpcurlAnswer(code, json.loads(text), headers, trailers)

    def register(self, user: User) -> None:
        body = {"username": user.username, "email": f"{user.username}@example.com"}
        answer = self.rpc("leaky.auth.v1.AuthService/Register", {**body, "password": PASSWORD})
        assert answer.code == 0, answer
        assert pick(answer.body, "roles") == ["USER"]
        user.user_id, user.token = pick(answer.body, "user_id"), answer.body["token"]

    def login(self, user: User) -> None:
        body = {"username": user.username, "password": PASSWORD}
        answer = self.rpc("leaky.auth.v1.AuthService/Login", body)
        assert answer.code == 0, answer
        assert pick(answer.body, "user_id") == user.user_id
        user.token = answer.body["token"]
        refused = self.rpc("leaky.auth.v1.AuthService/Login", {**body, "password": "nope nope"})
        assert refused.code == 16, refused  # UNAUTHENTICATED
        assert refused.body["details"][0]["reason"] == "INVALID_CREDENTIALS"

    def create_api_key(self, user: User) -> tuple[str, str]:
        body = {"userId": user.user_id, "name": "flows"}
        answer = self.rpc("leaky.auth.v1.AuthService/CreateApiKey", body, user)
        assert answer.code == 0, answer
        secret = pick(answer.body, "api_key")
        assert secret.startswith("lt_")
        return answer.body["id"], secret

    def list_api_keys(self, user: User) -> list[str]:
        answer = self.rpc("leaky.auth.v1.AuthService/ListApiKeys", {"userId": user.user_id}, user)
        assert answer.code == 0, answer
        return [k["id"] for k in pick(answer.body, "api_keys")]

    def consume(self, user: User, tokens: int) -> Decision:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens}
        answer = self.rpc("leaky.token.v1.TokenService/Consume", body, user)
        # The rate-limit fields travel as gRPC metadata on both outcomes: response headers on
        # an answer, trailers (trailers-only) on a denial.
        if answer.code == 0:
            assert answer.headers["x-ratelimit-limit"] == str(CAPACITY), answer
            assert answer.body["allowed"] is True
            levels = [s["level"] for s in answer.body["limits"]]
            assert "LIMIT_LEVEL_USER_BUCKET" in levels
            return Decision(True)
        assert answer.code == 8, answer  # RESOURCE_EXHAUSTED
        assert int(answer.trailers["retry-after"]) >= 1
        assert answer.trailers["x-ratelimit-limit"] == str(CAPACITY)
        details = answer.body["details"]
        (reason,) = [d["reason"] for d in details if "reason" in d]
        (decision,) = [d for d in details if d["@type"].endswith("LimitDecision")]
        bucket = next(s for s in decision["limits"] if s["level"] == "LIMIT_LEVEL_USER_BUCKET")
        assert bucket["code"] == "LIMIT_CODE_OVER_LIMIT"
        return Decision(False, reason)

    def consume_with_api_key(self, user: User, api_key: str, tokens: int) -> None:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens}
        answer = self.rpc("leaky.token.v1.TokenService/Consume", body, api_key=api_key)
        assert answer.code == 0, answer
        assert answer.body["allowed"] is True
        assert int(answer.body["remaining"]) == CAPACITY - tokens  # the key's owner's bucket
        assert answer.headers["x-ratelimit-remaining"] == str(CAPACITY - tokens), answer

    def quota(self, user: User) -> dict[str, int]:
        body = {"userId": user.user_id, "provider": PROVIDER}
        answer = self.rpc("leaky.token.v1.TokenService/GetQuota", body, user)
        assert answer.code == 0, answer
        assert answer.body["tier"] == "USER"
        return counts(answer.body, *QUOTA_FIELDS)

    def purchase(self, user: User, tokens: int, key: str) -> str:
        body = {"userId": user.user_id, "provider": PROVIDER, "tokens": tokens}
        answer = self.rpc(
            "leaky.token.v1.TokenService/Purchase", {**body, "idempotencyKey": key}, user
        )
        assert answer.code == 0, answer
        assert answer.body["status"] == "PURCHASE_STATUS_STARTED"
        return str(pick(answer.body, "saga_id"))

    def purchase_status(self, user: User, saga_id: str) -> str:
        answer = self.rpc("leaky.token.v1.TokenService/GetPurchase", {"sagaId": saga_id}, user)
        assert answer.code == 0, answer
        return str(answer.body["status"])

    def report(self, user: User) -> dict[str, int]:
        body = {"provider": PROVIDER, "userId": user.user_id}
        answer = self.rpc("leaky.analytics.v1.AnalyticsService/GetReport", body, user)
        if answer.code == 14:  # UNAVAILABLE: not routed yet on the stack
            return {}
        assert answer.code == 0, answer
        return counts(answer.body, *REPORT_FIELDS)


class Client:
    """The Python client over the generated stubs, one per user, through Envoy's port."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.clients: dict[str, LeakyClient] = {}

    def of(self, user: User) -> LeakyClient:
        return self.clients[user.username]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def register(self, user: User) -> None:
        client = self.clients[user.username] = LeakyClient(self.gateway.grpc)
        answer = client.register(user.username, f"{user.username}@example.com", PASSWORD)
        assert list(answer.roles) == ["USER"]
        assert answer.expires_at.seconds > 0
        user.user_id, user.token = answer.user_id, answer.token
        assert client.user_id == user.user_id

    def login(self, user: User) -> None:
        client = self.of(user)
        answer = client.login(user.username, PASSWORD)
        assert answer.user_id == user.user_id
        assert client.token == answer.token
        user.token = answer.token

    def create_api_key(self, user: User) -> tuple[str, str]:
        created = self.of(user).create_api_key("flows")
        assert created.api_key.startswith("lt_")
        assert created.user_id == user.user_id
        return created.id, created.api_key

    def list_api_keys(self, user: User) -> list[str]:
        return [k.id for k in self.of(user).list_api_keys().api_keys]

    def consume(self, user: User, tokens: int) -> Decision:
        denied: RateLimited | None = None
        try:
            answer = self.of(user).consume(PROVIDER, tokens, prompt="hi")
        except RateLimited as error:
            denied = error
        if denied is None:
            assert answer.allowed
            assert answer.decision_id
            assert answer.provider_response["provider"] == PROVIDER
            return Decision(True)
        assert denied.retry_after is not None
        assert denied.retry_after > timedelta(0)
        assert int(denied.trailers["retry-after"]) >= 1
        assert denied.trailers["x-ratelimit-limit"] == str(CAPACITY)
        assert denied.metadata["provider"] == PROVIDER
        assert denied.limits is not None
        over = [s for s in denied.limits.limits if s.code == limits_pb2.LIMIT_CODE_OVER_LIMIT]
        assert [s.level for s in over] == [limits_pb2.LIMIT_LEVEL_USER_BUCKET]
        return Decision(False, denied.reason)

    def consume_with_api_key(self, user: User, api_key: str, tokens: int) -> None:
        keyed = self.clients[f"{user.username}/key"] = LeakyClient(self.gateway.grpc)
        owner = keyed.use_api_key(api_key)
        assert owner.user_id == keyed.user_id == user.user_id
        answer = keyed.consume(PROVIDER, tokens)
        assert answer.allowed
        assert answer.remaining == CAPACITY - tokens  # the key's owner's bucket
        with LeakyClient(self.gateway.grpc) as wrong, pytest.raises(Unauthenticated) as refused:
            wrong.use_api_key(api_key + "x")
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED

    def quota(self, user: User) -> dict[str, int]:
        quota = self.of(user).get_quota(PROVIDER)
        assert (quota.user_id, quota.tier) == (user.user_id, "USER")
        return {name: int(getattr(quota, name)) for name in QUOTA_FIELDS}

    def purchase(self, user: User, tokens: int, key: str) -> str:
        started = self.of(user).purchase(PROVIDER, tokens, idempotency_key=key)
        assert started.status == token_pb2.PURCHASE_STATUS_STARTED
        return started.saga_id

    def purchase_status(self, user: User, saga_id: str) -> str:
        # wait_for_purchase is the client's own poll; the driver's wait bounds it too.
        seen = self.of(user).wait_for_purchase(saga_id, timeout=timedelta(seconds=60))
        return token_pb2.PurchaseStatus.Name(seen.status)

    def report(self, user: User) -> dict[str, int]:
        report = self.of(user).get_report(PROVIDER, user_id=user.user_id)
        return {name: int(getattr(report, name)) for name in REPORT_FIELDS}


def run_flow(flow: Transport) -> None:
    """Every step in order with one new user; what every transport must agree on."""
    user = User(f"f{uuid.uuid4().hex[:10]}")
    flow.register(user)
    registered_token = user.token
    flow.login(user)
    assert user.token
    assert user.token != registered_token  # a fresh token (its own jti)
    key_id, secret = flow.create_api_key(user)
    assert flow.list_api_keys(user) == [key_id]
    # With the API key instead of the JWT (Envoy's ext_authz): the same user's bucket.
    flow.consume_with_api_key(user, secret, CHUNK)

    decisions = [Decision(True)]
    for _ in range(3):  # 200 + 200 fit the 500-token bucket; the third 200 does not
        decisions.append(flow.consume(user, CHUNK))
        if not decisions[-1].allowed:
            break
    assert decisions == [Decision(True), Decision(True), Decision(False, "RATE_LIMITED")]

    quota = flow.quota(user)
    assert quota["window_used"] == 2 * CHUNK  # the denied consume debited nothing
    assert quota["purchased_balance"] == 0
    assert quota["remaining_tokens"] == quota["window_allowance"] - 2 * CHUNK

    saga_id = flow.purchase(user, 70, f"flows-{uuid.uuid4().hex[:8]}")

    def finished() -> str:
        status = flow.purchase_status(user, saga_id)
        return status if status in (COMPLETED, "PURCHASE_STATUS_FAILED") else ""

    assert wait_until(finished, 60, what="the purchase finishes", interval=0.2) == COMPLETED
    assert flow.quota(user)["purchased_balance"] == 70

    def reported() -> dict[str, int] | None:
        report = flow.report(user)
        return report if report.get("total_events") == 3 else None

    report = wait_until(reported, 60, what="the report shows the 3 consumes", interval=0.3)
    assert report is not None
    assert (report["allowed_events"], report["denied_events"]) == (2, 1)
    assert (report["allowed_tokens"], report["denied_tokens"]) == (2 * CHUNK, CHUNK)


TRANSPORTS: dict[str, Callable[[Gateway, Path], Any]] = {
    "http": lambda gateway, _grpcurl: Http(gateway),
    "grpcurl-reflection": lambda gateway, binary: Grpcurl(gateway, binary, protoset=False),
    "grpcurl-protoset": lambda gateway, binary: Grpcurl(gateway, binary, protoset=True),
    "python-client": lambda gateway, _grpcurl: Client(gateway),
}


@pytest.fixture(scope="module")
def stack_target(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`leaky up --stack` behind the stack's Envoy, with this run's own topics and groups."""
    root = tmp_path_factory.mktemp("flows-stack")
    with leaky_up(
        ["--stack"],
        root,
        f"http://{component(stack, 'envoy').address}",
        ("/api/v1/tokens/status", "/oauth2/jwks", "/api/v1/analytics/health"),
        env=saga_env(root),
    ) as running:
        yield running


@pytest.fixture(scope="module", params=["embedded", "stack"])
def target(request: pytest.FixtureRequest) -> Gateway:
    name = "gateway" if request.param == "embedded" else "stack_target"
    found: Gateway = request.getfixturevalue(name)
    return found


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_main_flow(target: Gateway, transport: str, grpcurl: Path) -> None:
    flow = TRANSPORTS[transport](target, grpcurl)
    try:
        run_flow(flow)
    finally:
        if isinstance(flow, Client):
            flow.close()


def readme_python_example() -> str:
    """The README's Python client example (the first python block of its section)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python client\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_python_client_example_prints_what_it_says(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example as written, for a new user standing in for alice (the README's curl lines
    registered alice), on the embedded mesh's port instead of 8080."""
    example = readme_python_example()
    name = f"r{uuid.uuid4().hex[:10]}"
    with LeakyClient(gateway.grpc) as client:
        client.register(name, f"{name}@example.com", PASSWORD)
    code = example.replace('"alice"', f'"{name}"').replace('"127.0.0.1:8080"', repr(gateway.grpc))
    assert code != example
    # What each print shows is its comment, up to a colon (after which the README explains).
    expected = [
        line.split("# ", 1)[1].split(":")[0].strip()
        for line in example.splitlines()
        if "print(" in line
    ]
    assert len(expected) == 5
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (our own README)
    assert capsys.readouterr().out.splitlines() == expected


async def test_the_async_client_through_envoy(gateway: Gateway) -> None:
    """AsyncLeakyClient (grpc.aio) on the embedded mesh: a 429 decoded from Envoy's trailers,
    a reservation settled and one released."""
    name = f"a{uuid.uuid4().hex[:10]}"
    async with AsyncLeakyClient(gateway.grpc) as client:
        await client.register(name, f"{name}@example.com", PASSWORD)
        async with client.reservation(PROVIDER, 300) as held:
            held.actual = 100
        assert held.settled is not None
        assert held.settled.refunded_tokens == 200
        with pytest.raises(LookupError):
            async with client.reservation(PROVIDER, 300) as dropped:
                raise LookupError("the LLM call failed")
        assert dropped.released is not None
        assert dropped.released.released_tokens == 300
        assert (await client.consume(PROVIDER, 350)).allowed  # 100 settled + 350 of 500
        with pytest.raises(RateLimited) as denied:
            await client.consume(PROVIDER, CHUNK)
        assert denied.value.trailers["x-ratelimit-limit"] == str(CAPACITY)
        assert denied.value.retry_after is not None
        quota = await client.get_quota(PROVIDER)
        assert quota.window_used == 450
