"""The token service built by its bootstrap on 127.0.0.1:0 with fakes at its edges."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from leaky.provider.v1 import provider_pb2, provider_pb2_grpc
from leaky.token.v1 import limits_pb2, token_pb2_grpc
from leaky_tokens.runtime.membership import InMemoryMembership
from leaky_tokens.runtime.server import start_server
from leaky_tokens.token.adapters.event_bus import EventBus
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.bootstrap import TokenComponents, TokenSettings, build
from leaky_tokens.token.domain.ports import DecisionStore
from leaky_tokens.token.domain.saga_ports import PaymentGateway
from tests.support.fakes import FakeClock
from tests.support.grpc_errors import unpack
from tests.support.jwks import KeySet, bearer

# Small numbers so a test reaches every limit in a few calls: a 100-token bucket leaking
# 1 token/s, 150 tokens a day for USER.
POLICY = textwrap.dedent(
    """\
    providers:
      openai: {capacity: 100, leak_rate: 1}
      qwen: {capacity: 1000, leak_rate: 10}
    tiers:
      USER: {priority: 10, capacity_multiplier: 1, rate_multiplier: 1, quota_tokens: 150}
      ADMIN: {priority: 100, capacity_multiplier: 2, rate_multiplier: 2, quota_tokens: 1000}
    default_tier: USER
    orgs:
      default: {capacity_multiplier: 10, rate_multiplier: 10, quota_tokens: 10000}
    quota: {window: daily, timezone: UTC}
    """
)


class FakeProvider(provider_pb2_grpc.ProviderServiceServicer):
    """leaky.provider.v1 Chat as the stubs answer it; can be told to fail with a code."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: grpc.StatusCode | None = None
        self.credentials: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, calls wait for it (in-flight tests)
        self.entered = asyncio.Event()

    async def Chat(
        self, request: provider_pb2.ChatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> provider_pb2.ChatResponse:
        self.calls += 1
        self.credentials.append(dict(context.invocation_metadata() or ()).get("authorization", ""))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            await context.abort(self.fail, "the provider is down")
        reply = provider_pb2.ChatResponse(
            id=f"chat-{self.calls}", provider=request.provider, message="Stubbed OpenAI response"
        )
        reply.received.update({"prompt": request.prompt})
        reply.usage.prompt_tokens, reply.usage.completion_tokens = 3, 7
        reply.usage.total_tokens = 10
        return reply


@dataclass
class TokenHarness:
    """A running token service and its fakes."""

    stub: token_pb2_grpc.TokenServiceAsyncStub
    keys: KeySet
    clock: FakeClock
    members: InMemoryMembership
    provider: FakeProvider
    store: InMemoryDecisionStore | None  # None: the bootstrap built it from the settings
    components: TokenComponents
    policy_path: Path
    metrics: CollectorRegistry  # what the server's /metrics exports
    channel: grpc.aio.Channel  # to the server, for other services' stubs (ShouldRateLimit)

    def sample(self, name: str, **labels: str) -> float | None:
        """One series' value on /metrics (None: no such series)."""
        return self.metrics.get_sample_value(name, labels)

    def auth(self, user: str = "user-1", *roles: str) -> tuple[tuple[str, str], ...]:
        """Metadata of a caller with `roles` (USER when none)."""
        return bearer(self.keys.token(sub=user, roles=list(roles or ("USER",))))


@asynccontextmanager
async def token_service(
    tmp: Path,
    *,
    bus: EventBus | None = None,
    store: DecisionStore | None = None,
    policy: str = POLICY,
    payment: PaymentGateway | None = None,
    clock: FakeClock | None = None,
    **settings: Any,
) -> AsyncIterator[TokenHarness]:
    """The token service (its bootstrap) against a fake provider served in-process; `store`
    replaces the in-memory store (e.g. one wrapped in the failure policy), `policy` the
    policy file's text, `payment` the saga's stub payment, `clock` the fake clock (one that
    follows the wall clock, when another process shares its database); the token database
    is a SQLite file in `tmp` unless `database_url` says otherwise."""
    keys, clock = KeySet("leaky-tokens-auth", "leaky-tokens"), clock or FakeClock()
    policy_path = tmp / "policy.yaml"
    policy_path.write_text(policy)
    fake = FakeProvider()
    provider_server = grpc.aio.server()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(fake, provider_server)
    provider_port = provider_server.add_insecure_port("127.0.0.1:0")
    await provider_server.start()
    settings.setdefault("database_url", f"sqlite+aiosqlite:///{tmp / 'token.db'}")
    settings.setdefault("saga_payment_latency_ms", 0)
    config = TokenSettings(
        port=0,
        metrics_port=0,
        provider_target=f"127.0.0.1:{provider_port}",
        provider_backoff_seconds=0.001,
        provider_backoff_max_seconds=0.002,
        **settings,
    )
    members = InMemoryMembership()
    # With a store_backend setting the bootstrap builds the store itself (Redis tests).
    memory = None if "store_backend" in settings or store is not None else InMemoryDecisionStore()
    components = await build(
        config,
        clock=clock,
        jwks=keys.fetch,
        monotonic=lambda: clock.now().timestamp(),
        store=store if store is not None else memory,
        policy=PolicyFile(policy_path),
        membership=members,
        bus=bus,
        payment=payment,
    )
    server = await start_server(components.spec, config, components.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield TokenHarness(
                token_pb2_grpc.TokenServiceStub(channel),
                keys,
                clock,
                members,
                fake,
                memory,
                components,
                policy_path,
                server.metrics,
                channel,
            )
    finally:
        await server.stop(0)
        await components.close()
        await provider_server.stop(0)


def limit_decision(error: grpc.aio.AioRpcError) -> limits_pb2.LimitDecision:
    """The LimitDecision detail of a denial."""
    found = unpack(error, limits_pb2.LimitDecision)
    assert found is not None
    return found  # type: ignore[no-any-return]


def redis_settings(redis_url: str) -> dict[str, Any]:
    """Token settings for the stack's Redis: a key prefix of its own (sessions sharing a
    stack never meet) and a store timeout a loaded machine does not trip."""
    return {
        "store_backend": "redis",
        "store_redis_url": redis_url,
        "store_key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "store_timeout_ms": 2000,
    }
