"""Consume against the real provider stubs, both built by their bootstraps in-process."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import json_format

from leaky.token.v1 import token_pb2 as pb
from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.provider.bootstrap import ProviderSettings
from leaky_tokens.provider.bootstrap import build as build_provider
from leaky_tokens.runtime.membership import InMemoryMembership
from leaky_tokens.runtime.server import start_server
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet, bearer
from tests.support.token_service import POLICY


async def test_consume_returns_the_stub_answer_with_the_callers_credential(
    tmp_path: Path,
) -> None:
    keys, clock = KeySet("leaky-tokens-auth", "leaky-tokens"), FakeClock()

    def monotonic() -> float:
        return clock.now().timestamp()

    provider_settings = ProviderSettings(port=0, metrics_port=0, random_seed=7)
    provider = await build_provider(provider_settings, clock=clock, jwks=keys.fetch)
    provider_server = await start_server(provider.spec, provider_settings, provider.verifier)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    token_settings = TokenSettings(
        port=0, metrics_port=0, provider_target=f"127.0.0.1:{provider_server.port}"
    )
    token = await build_token(
        token_settings,
        clock=clock,
        jwks=keys.fetch,
        monotonic=monotonic,
        store=InMemoryDecisionStore(),
        policy=PolicyFile(policy_path),
        membership=InMemoryMembership(),
    )
    token_server = await start_server(token.spec, token_settings, token.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            got = await stub.Consume(
                pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=12, prompt="hi"),
                metadata=bearer(keys.token(sub="user-1")),
            )
        answer = json_format.MessageToDict(got.provider_response)
        assert answer["provider"] == "openai"
        assert answer["message"] == "Stubbed OpenAI response"
        assert answer["received"] == {"prompt": "hi"}
        assert int(answer["usage"]["totalTokens"]) > 0
        assert (got.used, got.remaining) == (12, 88)
    finally:
        await token_server.stop(0)
        await provider_server.stop(0)
        await token.close()
        await provider.close()
