"""Over-admission: two token-service processes on the stack's Redis, 64 concurrent gRPC clients
on the same user and org keys; the admitted total never exceeds what the policy allows, and
every decision reaches the stack's Kafka as one usage event (after de-duplication)."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from redis.asyncio import Redis

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky.events.v1.events_pb2 import TokenUsageRecorded
from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.bootstrap import AuthSettings
from leaky_tokens.auth.bootstrap import build as build_auth
from leaky_tokens.provider.bootstrap import ProviderSettings
from leaky_tokens.provider.bootstrap import build as build_provider
from leaky_tokens.runtime.server import start_server
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters import event_codec
from tests.support.fakes import FakePasswordHasher
from tests.support.grpc_errors import reason
from tests.support.net import serving_port
from tests.support.stack import component
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RLS_CONFIG = ROOT / "tests" / "fixtures" / "rls-bench-leaky.yaml"  # api_key: 10 per minute
# openai: each user's bucket holds 200 tokens leaking 10/s, the org's (multiplier 1.5) 300
# leaking 15/s, so both levels bind; quotas far above anything the run can take.
USER_CAPACITY, USER_LEAK, ORG_CAPACITY, ORG_LEAK = 200, 10, 300, 15
POLICY = textwrap.dedent(
    f"""\
    providers:
      openai: {{capacity: {USER_CAPACITY}, leak_rate: {USER_LEAK}}}
    tiers:
      USER: {{priority: 10, capacity_multiplier: 1, rate_multiplier: 1, quota_tokens: 10000000}}
    default_tier: USER
    orgs:
      default: {{capacity_multiplier: 1.5, rate_multiplier: 1.5, quota_tokens: 10000000}}
    quota: {{window: daily, timezone: UTC}}
    """
)
CLIENTS, CALLS, TOKENS = 64, 6, 10
RLS_LIMIT, RLS_CALLS = 10, 4  # per client
LIMITED = "RESOURCE_EXHAUSTED/RATE_LIMITED"


@dataclass(frozen=True)
class User:
    user_id: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass(frozen=True)
class Mesh:
    """Auth and provider (in this process), two token processes, one org of two users."""

    tokens: list[str]  # the token processes' addresses
    alice: User
    bob: User
    org_id: str
    kafka: str  # bootstrap address
    topic: str  # where the processes' relay publishes usage events (this test's own)


@asynccontextmanager
async def peers() -> AsyncIterator[tuple[str, str, auth_pb2_grpc.AuthServiceAsyncStub]]:
    """The real auth (in-memory store, real RSA keys) and provider stub services on free ports:
    the token processes fetch JWKS and check membership with this auth, and call this provider.
    """
    auth_settings = AuthSettings(port=0, metrics_port=0)
    auth = await build_auth(auth_settings, store=InMemoryAuthStore(), hasher=FakePasswordHasher())
    auth_server = await start_server(auth.spec, auth_settings, auth.verifier)
    auth_target = f"127.0.0.1:{auth_server.port}"
    provider_settings = ProviderSettings(port=0, metrics_port=0, auth_target=auth_target)
    provider = await build_provider(provider_settings)
    provider_server = await start_server(provider.spec, provider_settings, provider.verifier)
    try:
        async with grpc.aio.insecure_channel(auth_target) as channel:
            yield (
                auth_target,
                f"127.0.0.1:{provider_server.port}",
                auth_pb2_grpc.AuthServiceStub(channel),
            )
    finally:
        await provider_server.stop(0)
        await provider.close()
        await auth_server.stop(0)
        await auth.close()


async def register(stub: auth_pb2_grpc.AuthServiceAsyncStub, name: str) -> User:
    answer = await stub.Register(
        auth_pb2.RegisterRequest(
            username=f"{name}{uuid.uuid4().hex[:6]}",
            email=f"{name}-{uuid.uuid4().hex[:6]}@example.com",
            password="correct horse battery",
        )
    )
    return User(answer.user_id, answer.token)


@contextmanager
def token_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m leaky_tokens.token` on a port of its own choosing; yields its address."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "leaky_tokens.token"],
            env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"127.0.0.1:{serving_port(process, log, timeout=60)}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
async def mesh(stack: Stack, tmp_path: Path) -> AsyncIterator[Mesh]:
    redis, kafka = component(stack, "redis"), component(stack, "kafka")
    assert isinstance(redis, RedisComponent)
    assert isinstance(kafka, Kafka)
    prefix = f"oa{uuid.uuid4().hex[:8]}"  # both processes share it; other tests never meet it
    topic = f"leaky.usage.test.{prefix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    async with peers() as (auth_target, provider_target, auth):
        alice, bob = await register(auth, "alice"), await register(auth, "bob")
        created = await auth.CreateOrganization(
            auth_pb2.CreateOrganizationRequest(name=f"acme-{prefix}"), metadata=alice.metadata
        )
        org_id = created.organization.id
        await auth.AddOrganizationMember(
            auth_pb2.AddOrganizationMemberRequest(org_id=org_id, user_id=bob.user_id),
            metadata=alice.metadata,
        )
        env = {
            "LEAKY_TOKEN_PORT": "0",
            "LEAKY_TOKEN_METRICS_PORT": "0",
            "LEAKY_TOKEN_AUTH_TARGET": auth_target,
            "LEAKY_TOKEN_PROVIDER_TARGET": provider_target,
            "LEAKY_TOKEN_POLICY_FILE": str(policy),
            "LEAKY_TOKEN_RLS_CONFIG": str(RLS_CONFIG),
            "LEAKY_TOKEN_STORE_BACKEND": "redis",
            "LEAKY_TOKEN_STORE_REDIS_URL": redis.url,
            "LEAKY_TOKEN_STORE_KEY_PREFIX": prefix,
            "LEAKY_TOKEN_STORE_TIMEOUT_MS": "5000",  # a loaded CI box: slow, not degraded
            "LEAKY_TOKEN_PROVIDER_TIMEOUT_SECONDS": "10",  # likewise: no refund for slowness
            "LEAKY_TOKEN_SHUTDOWN_DELAY_SECONDS": "0",
            # One relay (the lease holder of the two) publishes both processes' events.
            "LEAKY_TOKEN_EVENTS_BUS": "kafka",
            "LEAKY_TOKEN_EVENTS_KAFKA_BOOTSTRAP": kafka.address,
            "LEAKY_TOKEN_EVENTS_USAGE_TOPIC": topic,
            "LEAKY_TOKEN_EVENTS_POLL_MS": "20",
        }
        try:
            with ExitStack() as processes:
                # Started one after the other: in a thread, so auth keeps answering meanwhile.
                addresses = [
                    await asyncio.to_thread(
                        processes.enter_context, token_process(env, tmp_path / f"token{i}.log")
                    )
                    for i in range(2)
                ]
                yield Mesh(addresses, alice, bob, org_id, kafka.address, topic)
        finally:
            client = Redis.from_url(redis.url)
            async for key in client.scan_iter(match=f"{prefix}*"):
                await client.delete(key)
            await client.aclose()


async def test_two_token_processes_never_admit_more_than_the_buckets_allow(mesh: Mesh) -> None:
    # Client i consumes as alice (even i) or bob (odd i) in the org, through process
    # (i // 2) % 2: each user's share and the org's bucket are contended from both processes.
    users = (mesh.alice, mesh.bob)
    admitted: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(address) for address in mesh.tokens]
    try:
        stubs = [token_pb2_grpc.TokenServiceStub(c) for c in channels]
        # Warm each process's key set and membership cache (no debit) so the clients start
        # together.
        for stub, user in itertools.product(stubs, users):
            org = token_pb2.GetOrgQuotaRequest(org_id=mesh.org_id, provider="openai")
            await stub.GetOrgQuota(org, metadata=user.metadata, timeout=60)

        async def client(i: int) -> None:
            user, stub = users[i % 2], stubs[(i // 2) % 2]
            request = token_pb2.ConsumeRequest(
                user_id=user.user_id, org_id=mesh.org_id, provider="openai", tokens=TOKENS
            )
            for _ in range(CALLS):
                try:
                    await stub.Consume(request, metadata=user.metadata, timeout=60)
                except grpc.aio.AioRpcError as error:
                    denied[f"{error.code().name}/{reason(error)}"] += 1
                else:
                    admitted[user.user_id] += TOKENS

        before = time.time()  # the processes decide on this same wall clock
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        elapsed = time.time() - before
    finally:
        for channel in channels:
            await channel.close(None)
    alice, bob = admitted[mesh.alice.user_id], admitted[mesh.bob.user_id]
    # Every decision's clock reading lies in [before, before + elapsed]: a bucket, full at the
    # start, admits at most its capacity plus its leak over that span (10 ms added for the
    # readings' rounding, generously). An upper bound, never a timing assertion.
    span = elapsed + 0.01
    assert alice <= USER_CAPACITY + USER_LEAK * span, (alice, elapsed)
    assert bob <= USER_CAPACITY + USER_LEAK * span, (bob, elapsed)
    assert alice + bob <= ORG_CAPACITY + ORG_LEAK * span, (alice, bob, elapsed)
    assert alice > 0, "nothing was admitted"
    assert bob > 0, "nothing was admitted"
    assert denied[LIMITED] > 0, "no request was refused: the test proved nothing"
    # Any other failure is a broken run, not a denial: it must not pass quietly.
    assert set(denied) == {LIMITED}, denied
    # Every decision, allowed or denied, arrives once after de-duplication by event_id, and the
    # events add up to what the clients saw.
    usage = await usage_events(mesh, CLIENTS * CALLS)
    assert len(usage) == CLIENTS * CALLS
    for user_id, tokens in ((mesh.alice.user_id, alice), (mesh.bob.user_id, bob)):
        mine = [u for u in usage if u.user_id == user_id and u.allowed]
        assert sum(u.tokens for u in mine) == tokens
    assert sum(not u.allowed for u in usage) == denied[LIMITED]
    assert {u.org_id for u in usage} == {mesh.org_id}


async def usage_events(mesh: Mesh, expected: int) -> list[TokenUsageRecorded]:
    """The TokenUsageRecorded events on the topic, de-duplicated by event_id, once `expected`
    of them arrived (a bound on waiting; a shortfall fails naming the count)."""
    consumer = AIOKafkaConsumer(
        mesh.topic, bootstrap_servers=mesh.kafka, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: dict[str, TokenUsageRecorded] = {}
    try:

        async def arrived() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for message in records:
                    envelope = event_codec.decode(message.value)
                    if envelope.WhichOneof("event") == "token_usage_recorded":
                        found.setdefault(envelope.event_id, envelope.token_usage_recorded)
            return len(found) >= expected

        await eventually(arrived, 120, what=f"{expected} usage events in {mesh.topic}")
        # Anything past the expected count (an event too many) shows up in a last read.
        await arrived()
    finally:
        await consumer.stop()
    return list(found.values())


async def test_should_rate_limit_across_two_processes_counts_one_window(mesh: Mesh) -> None:
    key = uuid.uuid4().hex[:10]  # a descriptor no other run counts
    request = rls_pb2.RateLimitRequest(domain="leaky")
    request.descriptors.add().entries.add(key="api_key", value=key)
    codes: Counter[int] = Counter()
    channels = [grpc.aio.insecure_channel(address) for address in mesh.tokens]
    try:
        stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]

        async def client(i: int) -> None:
            for _ in range(RLS_CALLS):
                answer = await stubs[i % 2].ShouldRateLimit(request, timeout=60)
                codes[answer.overall_code] += 1

        before = time.time()
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        after = time.time()
    finally:
        for channel in channels:
            await channel.close(None)
    # Minute windows are epoch-aligned: the run touched every window between its two ends.
    windows = math.floor(after / 60) - math.floor(before / 60) + 1
    ok, over = codes[rls_pb2.RateLimitResponse.OK], codes[rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert ok + over == CLIENTS * RLS_CALLS, codes
    assert ok <= RLS_LIMIT * windows, (ok, windows)
    assert ok >= RLS_LIMIT  # the first window's allowance was given out
    assert over > 0
