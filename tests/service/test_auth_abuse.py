"""Login throttling and the hashing bound through a real grpc.aio server and stub."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from leaky.auth.v1 import auth_pb2 as pb
from leaky.auth.v1 import auth_pb2_grpc
from leaky_tokens.auth.adapters.bounded_password_hasher import BoundedPasswordHasher
from leaky_tokens.auth.adapters.in_memory_throttle_store import InMemoryThrottleStore
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore
from leaky_tokens.auth.bootstrap import AuthSettings
from leaky_tokens.auth.bootstrap import build as build_auth
from leaky_tokens.auth.domain.audit import client_address_var
from leaky_tokens.auth.domain.registration_throttle import RegistrationRule, RegistrationThrottle
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.auth.domain.throttle import LoginThrottle, ThrottlePolicy, ThrottleRule
from leaky_tokens.auth.servicer import PUBLIC_METHODS, SERVICE_NAME, AuthServicer
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import ServiceSpec, start_server
from leaky_tokens.runtime.system import SystemRandomness
from tests.conftest import FAST_HASHER, fresh_store
from tests.support.fakes import FakeClock

USERNAME_RULE = ThrottleRule(
    free_failures=2, base_delay=timedelta(seconds=5), lockout_after=4, lockout=timedelta(minutes=1)
)
ADDRESS_RULE = ThrottleRule(free_failures=3, base_delay=timedelta(seconds=7), lockout_after=50)
LOOSE = ThrottleRule(free_failures=1000, lockout_after=10_000)
WRONG = "wrong password"


def _fake_hash(password: str) -> str:
    return "fake$" + hashlib.sha256(password.encode()).hexdigest()


class GatedHasher:
    """Fast fake hashing whose verifications can be held open, and counted."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.verifications = 0
        self.running = 0
        self.entered = asyncio.Event()  # set once a verification is under way
        self.changed = asyncio.Condition()  # notified when `running` changes
        self.hashes = 0

    async def hash(self, password: str) -> str:
        self.hashes += 1
        return _fake_hash(password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self.verifications += 1
        self.running += 1
        self.entered.set()
        async with self.changed:
            self.changed.notify_all()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return password_hash == _fake_hash(password)

    def needs_rehash(self, password_hash: str) -> bool:
        return False

    async def until_running(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.running == count), 10)


@dataclass
class Auth:
    stub: auth_pb2_grpc.AuthServiceAsyncStub
    hasher: GatedHasher
    bounded: BoundedPasswordHasher
    clock: FakeClock
    app: AuthApp


async def serve(
    tmp_path: Path,
    policy: ThrottlePolicy,
    concurrency: int = 4,
    queue: int = 4,
    per_client: int = 0,
    registrations: RegistrationRule | None = None,
) -> AsyncIterator[Auth]:
    # Starts now: the tokens it issues are checked by the interceptor against real time.
    clock = FakeClock(datetime.now(UTC))
    store: SqlAuthStore = await fresh_store(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    hasher = GatedHasher()
    bounded = BoundedPasswordHasher(
        hasher,
        concurrency=concurrency,
        queue=queue,
        per_client=per_client,
        client=client_address_var.get,  # as the bootstrap does, minus the /64 keying
    )
    throttle_store = InMemoryThrottleStore()
    app = AuthApp(
        store=store,
        hasher=bounded,
        crypto=RsaTokenCrypto(),
        clock=clock,
        randomness=SystemRandomness(),
        policy=AuthPolicy(),
        throttle=LoginThrottle(throttle_store, clock, policy),
        registrations=RegistrationThrottle(throttle_store, clock, registrations)
        if registrations
        else None,
    )
    await app.ensure_signing_key()
    servicer = AuthServicer(app)

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)

    settings = AuthSettings(port=0, metrics_port=0)
    spec = ServiceSpec("auth", (SERVICE_NAME,), register, PUBLIC_METHODS)
    verifier = JwtVerifier(app.jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    server = await start_server(spec, settings, verifier)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield Auth(auth_pb2_grpc.AuthServiceStub(channel), hasher, bounded, clock, app)
    await channel.close(grace=None)
    await server.stop(0)
    await store.close()


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[Auth]:
    async for running in serve(tmp_path, ThrottlePolicy(USERNAME_RULE, LOOSE)):
        yield running


@pytest.fixture
async def auth_by_address(tmp_path: Path) -> AsyncIterator[Auth]:
    async for running in serve(tmp_path, ThrottlePolicy(LOOSE, ADDRESS_RULE)):
        yield running


@pytest.fixture
async def small_queue(tmp_path: Path) -> AsyncIterator[Auth]:
    async for running in serve(tmp_path, ThrottlePolicy(LOOSE, LOOSE), concurrency=2, queue=3):
        yield running


async def register(auth: Auth, name: str = "alice", address: str | None = None) -> None:
    metadata = (("x-leaky-client-address", address),) if address else None
    await auth.stub.Register(
        pb.RegisterRequest(username=name, email=f"{name}@example.com", password="correct horse"),
        metadata=metadata,
    )


async def login(
    auth: Auth, name: str, password: str = WRONG, address: str | None = None
) -> grpc.aio.AioRpcError | pb.LoginResponse:
    metadata = (("x-leaky-client-address", address),) if address else None
    try:
        response: pb.LoginResponse = await auth.stub.Login(
            pb.LoginRequest(username=name, password=password), metadata=metadata
        )
    except grpc.aio.AioRpcError as error:
        return error
    return response


def error_of(result: object) -> grpc.aio.AioRpcError:
    assert isinstance(result, grpc.aio.AioRpcError), result
    return result


def answer(result: object) -> dict[str, Any]:
    """Everything a client sees of a failed call: code, message, details, retry-after."""
    error = error_of(result)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an AioRpcError is a Call
    assert status is not None
    seen: dict[str, Any] = {"code": error.code(), "message": error.details()}
    for item in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if item.Is(cls.DESCRIPTOR):
                message = cls()
                item.Unpack(message)
                seen[cls.DESCRIPTOR.name] = message
    seen["retry-after"] = trailer(error, "retry-after")
    return seen


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    metadata: Any = error.trailing_metadata() or ()  # grpc-stubs types it loosely
    found = [value for name, value in metadata if name == key]
    return str(found[0]) if found else None


async def test_throttled_login_is_resource_exhausted_with_retry_info_and_retry_after(
    auth: Auth,
) -> None:
    await register(auth)
    for _ in range(USERNAME_RULE.free_failures):
        assert error_of(await login(auth, "alice")).code() == grpc.StatusCode.UNAUTHENTICATED
    seen = answer(await login(auth, "alice"))
    assert seen["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert seen["ErrorInfo"].reason == "LOGIN_THROTTLED"
    assert seen["ErrorInfo"].domain == "leaky-tokens"
    assert seen["RetryInfo"].retry_delay.seconds == 5
    assert seen["retry-after"] == "5"
    # The request id rides in the trailers of an error (so it stays trailers-only).
    throttled = error_of(await login(auth, "alice"))
    assert trailer(throttled, "x-request-id")


async def test_even_the_right_password_waits_until_the_delay_has_passed(auth: Auth) -> None:
    await register(auth)
    for _ in range(USERNAME_RULE.free_failures):
        await login(auth, "alice")
    throttled = await login(auth, "alice", "correct horse")
    assert error_of(throttled).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    auth.clock.advance(seconds=5)
    assert isinstance(await login(auth, "alice", "correct horse"), pb.LoginResponse)
    # The success reset the counter: the free failures are available again.
    for _ in range(USERNAME_RULE.free_failures):
        assert error_of(await login(auth, "alice")).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_lockout_is_answered_with_its_remaining_time(auth: Auth) -> None:
    await register(auth)
    for _ in range(USERNAME_RULE.lockout_after):
        auth.clock.advance(seconds=30)  # past every doubling wait
        await login(auth, "alice")
    seen = answer(await login(auth, "alice", "correct horse"))
    assert seen["ErrorInfo"].reason == "LOGIN_THROTTLED"
    assert seen["retry-after"] == "60"
    auth.clock.advance(minutes=1)
    assert isinstance(await login(auth, "alice", "correct horse"), pb.LoginResponse)


async def test_unknown_and_known_usernames_get_the_same_answers_at_the_same_cost(
    auth: Auth,
) -> None:
    await register(auth, "alice")
    transcripts = []
    for name in ("alice", "nobody"):
        before = auth.hasher.verifications
        answers = [answer(await login(auth, name)) for _ in range(USERNAME_RULE.free_failures + 2)]
        transcripts.append((answers, auth.hasher.verifications - before))
    assert transcripts[0] == transcripts[1]
    answers, hashes = transcripts[0]
    assert [a["code"] for a in answers] == [grpc.StatusCode.UNAUTHENTICATED] * 2 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ] * 2
    assert hashes == USERNAME_RULE.free_failures  # one verification per judged attempt


async def test_the_client_address_comes_from_envoys_header(auth_by_address: Auth) -> None:
    auth = auth_by_address
    for i in range(ADDRESS_RULE.free_failures):
        await login(auth, f"user{i}", address="203.0.113.9")
    seen = answer(await login(auth, "someone", address="203.0.113.9"))
    assert seen["ErrorInfo"].reason == "LOGIN_THROTTLED"
    assert seen["retry-after"] == "7"
    other = await login(auth, "someone", address="198.51.100.1")
    assert error_of(other).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_the_header_the_grpc_peer_is_the_address(auth_by_address: Auth) -> None:
    auth = auth_by_address
    for i in range(ADDRESS_RULE.free_failures):
        await login(auth, f"user{i}")
    assert error_of(await login(auth, "x")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A header that is not an address is ignored, not trusted as a new identity.
    seen = answer(await login(auth, "x", address="not-an-ip"))
    assert seen["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_flood_beyond_the_hashing_bound_is_refused_at_once(small_queue: Auth) -> None:
    auth = small_queue
    await register(auth)
    auth.hasher.gate.clear()  # hold every verification open: the slots and queue fill up
    flood = [asyncio.create_task(login(auth, f"user{i}")) for i in range(20)]
    bound = 2 + 3
    pending = set(flood)
    while len(flood) - len(pending) < len(flood) - bound:
        done, pending = await asyncio.wait(pending, timeout=10, return_when="FIRST_COMPLETED")
        assert done, "refusals did not come while the hashes were held"
    # Every call beyond the bound was answered while the admitted ones were still hashing.
    assert auth.hasher.running == 2
    assert auth.bounded.admitted == bound
    refused = [answer(t.result()) for t in flood if t.done()]
    assert {a["code"] for a in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {a["ErrorInfo"].reason for a in refused} == {"PASSWORD_HASHING_BUSY"}
    assert all(a["RetryInfo"].retry_delay.seconds == 1 for a in refused)
    assert all(a["retry-after"] == "1" for a in refused)
    auth.hasher.gate.set()
    admitted = await asyncio.gather(*pending)
    assert [error_of(r).code() for r in admitted] == [grpc.StatusCode.UNAUTHENTICATED] * bound
    assert auth.hasher.verifications == bound
    assert isinstance(await login(auth, "alice", "correct horse"), pb.LoginResponse)


async def test_a_refusal_for_load_does_not_count_as_a_failed_login(tmp_path: Path) -> None:
    strict = ThrottlePolicy(ThrottleRule(free_failures=1, lockout_after=5), LOOSE)
    async for auth in serve(tmp_path, strict, concurrency=1, queue=0):
        await register(auth)
        auth.hasher.gate.clear()
        held = asyncio.create_task(login(auth, "bob"))
        await asyncio.wait_for(auth.hasher.entered.wait(), timeout=10)
        busy = answer(await login(auth, "alice", "correct horse"))
        assert busy["ErrorInfo"].reason == "PASSWORD_HASHING_BUSY"
        auth.hasher.gate.set()
        await held
        assert isinstance(await login(auth, "alice", "correct horse"), pb.LoginResponse)


async def test_the_bootstrap_wires_throttling_into_the_service(tmp_path: Path) -> None:
    settings = AuthSettings(
        port=0,
        metrics_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}",
        argon2_time_cost=FAST_HASHER["time_cost"],
        argon2_memory_kib=FAST_HASHER["memory_kib"],
        login_free_failures=1,
        login_lockout_failures=3,
        login_base_delay_seconds=30,
    )
    components = await build_auth(settings)
    server = await start_server(components.spec, settings, components.verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        request = pb.LoginRequest(username="mallory", password="guess")
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await stub.Login(request)
        assert first.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as second:
            await stub.Login(request)
        assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert trailer(second.value, "retry-after") == "30"
    await server.stop(0)
    await components.close()


async def test_one_address_cannot_occupy_the_hasher(tmp_path: Path) -> None:
    async for auth in serve(tmp_path, ThrottlePolicy(LOOSE, LOOSE), 4, 4, per_client=2):
        await register(auth, "alice", address="198.51.100.1")
        auth.hasher.gate.clear()  # hold every verification open
        flood = [
            asyncio.create_task(login(auth, f"user{i}", address="203.0.113.9")) for i in range(10)
        ]
        pending = set(flood)
        while len(pending) > 2:
            done, pending = await asyncio.wait(pending, timeout=10, return_when="FIRST_COMPLETED")
            assert done, "the flood's extra calls were not refused while its hashes were held"
        # The flood holds its cap of 2 and nothing more; the other 8 were refused at once.
        assert auth.bounded.admitted_for("203.0.113.9") == 2
        refused = [answer(t.result()) for t in flood if t.done()]
        assert len(refused) == 8
        assert {a["ErrorInfo"].reason for a in refused} == {"PASSWORD_HASHING_BUSY"}
        assert all(a["RetryInfo"].retry_delay.seconds == 1 for a in refused)
        # Another client's login goes straight to a free slot, not behind the flood.
        other = asyncio.create_task(login(auth, "alice", "correct horse", "198.51.100.1"))
        await auth.hasher.until_running(3)
        assert (auth.bounded.running, auth.bounded.queued) == (3, 0)
        auth.hasher.gate.set()
        assert isinstance(await other, pb.LoginResponse)
        await asyncio.gather(*pending)
        assert auth.bounded.admitted == 0


async def test_unknown_and_known_usernames_cost_the_same_under_the_per_address_cap(
    tmp_path: Path,
) -> None:
    async for auth in serve(tmp_path, ThrottlePolicy(LOOSE, LOOSE), 4, 4, per_client=1):
        await register(auth, "alice")
        transcripts = []
        for name in ("alice", "nobody"):
            auth.hasher.gate.clear()
            held = asyncio.create_task(login(auth, name, address="203.0.113.9"))
            await asyncio.wait_for(auth.hasher.entered.wait(), timeout=10)
            second = answer(await login(auth, name, address="203.0.113.9"))
            auth.hasher.gate.set()
            transcripts.append((answer(await held), second))
            auth.hasher.entered.clear()
        assert transcripts[0] == transcripts[1]
        assert transcripts[0][1]["ErrorInfo"].reason == "PASSWORD_HASHING_BUSY"


async def test_registrations_have_a_budget_per_address(tmp_path: Path) -> None:
    rule = RegistrationRule(budget=3, window=timedelta(hours=1))
    async for auth in serve(tmp_path, ThrottlePolicy(LOOSE, LOOSE), registrations=rule):
        auth.clock.advance(minutes=10)
        for i in range(3):
            await register(auth, f"user{i}", address="203.0.113.9")
        hashes = auth.hasher.hashes
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await register(auth, "user3", address="203.0.113.9")
        seen = answer(refused.value)
        assert seen["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert seen["ErrorInfo"].reason == "REGISTRATION_THROTTLED"
        assert seen["RetryInfo"].retry_delay.seconds == 3600
        assert seen["retry-after"] == "3600"
        assert auth.hasher.hashes == hashes  # refused before any hashing
        # Other addresses keep their own budget, and logins are untouched.
        await register(auth, "user4", address="198.51.100.1")
        welcome = await login(auth, "user0", "correct horse", "203.0.113.9")
        assert isinstance(welcome, pb.LoginResponse)
        auth.clock.advance(hours=1)
        await register(auth, "user5", address="203.0.113.9")


async def test_a_throttled_registration_is_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rule = RegistrationRule(budget=1, window=timedelta(minutes=5))
    async for auth in serve(tmp_path, ThrottlePolicy(LOOSE, LOOSE), registrations=rule):
        await register(auth, "user0", address="203.0.113.9")
        with caplog.at_level("INFO", logger="leaky.audit"):
            for name in ("user1", "user2", "user3"):
                with pytest.raises(grpc.aio.AioRpcError):
                    await register(auth, name, address="203.0.113.9")
        # Once per address and window, not once per refusal.
        lines = [r for r in caplog.records if getattr(r, "event", "") == "register.throttled"]
        assert [getattr(r, "client", "") for r in lines] == ["203.0.113.9"]


async def test_the_bootstrap_wires_the_registration_budget(tmp_path: Path) -> None:
    settings = AuthSettings(
        port=0,
        metrics_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}",
        argon2_time_cost=FAST_HASHER["time_cost"],
        argon2_memory_kib=FAST_HASHER["memory_kib"],
        register_per_address=1,
    )
    components = await build_auth(settings)
    server = await start_server(components.spec, settings, components.verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        requests = [
            pb.RegisterRequest(username=name, email=f"{name}@example.com", password="correct horse")
            for name in ("first", "second")
        ]
        await stub.Register(requests[0])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Register(requests[1])
        assert answer(refused.value)["ErrorInfo"].reason == "REGISTRATION_THROTTLED"
    await server.stop(0)
    await components.close()
