"""Composition root of the provider stubs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from leaky.provider.v1 import provider_pb2_grpc
from leaky_tokens.provider.adapters.seeded_randomness import SeededRandomness
from leaky_tokens.provider.domain.chat import ChatStub
from leaky_tokens.provider.domain.profiles import Profile, ProfileError, profiles
from leaky_tokens.provider.ports import Sleep, StubRandomness
from leaky_tokens.provider.servicer import PROVIDER_SERVICE, PUBLIC_METHODS, ProviderServicer
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.runtime.system import SystemClock

ENV_PREFIX = "LEAKY_PROVIDER"


@dataclass(frozen=True)
class ProviderSettings(PeerSettings):
    """Provider stub settings (LEAKY_PROVIDER_<FIELD>)."""

    port: int = field(default=50054, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9104, metadata=doc("Prometheus /metrics port; 0 disables."))
    providers: tuple[str, ...] = field(
        default=("openai", "qwen", "gemini"),
        metadata=doc("Provider names answered at /api/v1/{provider}/chat; others get 404."),
    )
    latency_ms: float = field(
        default=0.0, metadata=doc("Every answer waits this long (keep it under Envoy's 15 s).")
    )
    jitter_ms: float = field(
        default=0.0, metadata=doc("Plus a uniform random extra wait in [0, this).")
    )
    error_rate: float = field(
        default=0.0,
        metadata=doc("Fraction (0..1) of calls answered UNAVAILABLE (HTTP 503), after the wait."),
    )
    completion_tokens: int = field(
        default=3,
        metadata=doc(
            'Completion size in tokens; 3 gives the original\'s "Stubbed OpenAI response".'
        ),
    )
    completion_ratio: float = field(
        default=0.0, metadata=doc("Plus this many completion tokens per prompt token.")
    )
    overrides: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Per-provider values, e.g. qwen.latency_ms=200,gemini.error_rate=0.5 (fields: "
            "latency_ms, jitter_ms, error_rate, completion_tokens, completion_ratio)."
        ),
    )
    random_seed: int | None = field(
        default=None,
        metadata=doc("Seed of jitter, failure and id draws (a reproducible run); empty = random."),
    )

    def __post_init__(self) -> None:
        self.chat_profiles()  # a bad value stops `load` with one clear line, before serving

    def chat_profiles(self) -> dict[str, Profile]:
        """One profile per provider; SettingsError naming the variable when one is bad."""
        defaults = Profile(
            name="default",
            latency_ms=self.latency_ms,
            jitter_ms=self.jitter_ms,
            error_rate=self.error_rate,
            completion_tokens=self.completion_tokens,
            completion_ratio=self.completion_ratio,
        )
        try:
            return dict(profiles(self.providers, defaults, self.overrides))
        except ProfileError as error:
            raise SettingsError(f"{ENV_PREFIX}_* tuning: {error}") from None


async def build(
    settings: ProviderSettings,
    *,
    clock: Clock | None = None,
    randomness: StubRandomness | None = None,
    sleep: Sleep | None = None,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> PeerComponents:
    """Wire the provider stubs; collaborators default to the real ones.

    `clock` stamps replies, `randomness` draws ids, jitter and failures (default: seeded by
    `settings.random_seed`), `sleep` waits the latency (default asyncio.sleep), `jwks`
    fetches the auth service's signing keys (default: gRPC to `settings.auth_target`) and
    `monotonic` ages the cached key set.
    """
    stub = ChatStub(
        settings.chat_profiles(),
        clock=clock or SystemClock(),
        randomness=randomness or SeededRandomness(settings.random_seed),
        sleep=sleep or asyncio.sleep,
    )
    servicer = ProviderServicer(stub)

    def register(server: grpc.aio.Server) -> None:
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)

    spec = ServiceSpec("provider", (PROVIDER_SERVICE.full_name,), register, PUBLIC_METHODS)
    return peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
