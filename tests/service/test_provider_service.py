"""The provider stubs over a real gRPC server: replies, latency, failures, auth, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from leaky.provider.v1 import provider_pb2 as pb
from leaky.provider.v1 import provider_pb2_grpc
from leaky_tokens.provider.bootstrap import ProviderSettings, build
from leaky_tokens.provider.domain.completion import count_tokens
from leaky_tokens.runtime.server import start_server
from leaky_tokens.runtime.settings import SettingsError, load
from tests.support.exits import run_module
from tests.support.fakes import FakeClock, RecordingSleep, ScriptedRandomness
from tests.support.jwks import KeySet, bearer

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Stub = provider_pb2_grpc.ProviderServiceAsyncStub


@asynccontextmanager
async def provider(
    settings: ProviderSettings,
    *,
    randomness: ScriptedRandomness | None = None,
    sleep: RecordingSleep | None = None,
    clock: FakeClock | None = None,
) -> AsyncIterator[tuple[Stub, Callable[[], tuple[tuple[str, str], ...]]]]:
    """A started provider service and a function giving fresh credentials for it."""
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    built = await build(
        settings,
        clock=clock or FakeClock(),
        randomness=randomness,
        sleep=sleep or RecordingSleep(),
        jwks=keys.fetch,
    )
    server = await start_server(built.spec, settings, built.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            chat: Stub = provider_pb2_grpc.ProviderServiceStub(channel)
            yield chat, lambda: bearer(keys.token())
    finally:
        await server.stop(0)
        await built.close()


def settings(**values: object) -> ProviderSettings:
    return ProviderSettings(port=0, metrics_port=0, **values)  # type: ignore[arg-type]


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """The ErrorInfo and the BadRequest field names of an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an AioRpcError is a Call
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    fields: list[str] = []
    for detail in status.details:
        if detail.Unpack(info):
            continue
        if detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return info, fields


async def test_chat_answers_in_the_original_shape_with_usage() -> None:
    clock, randomness = FakeClock(), ScriptedRandomness()
    async with provider(settings(), clock=clock, randomness=randomness) as (stub, auth):
        reply = await stub.Chat(
            pb.ChatRequest(provider="Gemini", prompt="Count me, please."), metadata=auth()
        )
    assert reply.id == "id-1"
    assert reply.provider == "gemini"
    assert reply.message == "Stubbed Gemini response"
    assert reply.created.ToDatetime(tzinfo=UTC) == clock.now()
    assert json_format.MessageToDict(reply.received) == {"prompt": "Count me, please."}
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 3)
    assert reply.usage.total_tokens == 8


async def test_same_prompt_same_reply_and_max_tokens_caps_it() -> None:
    async with provider(settings(completion_tokens=30)) as (stub, auth):
        request = pb.ChatRequest(provider="openai", prompt="one two three")
        first = await stub.Chat(request, metadata=auth())
        second = await stub.Chat(request, metadata=auth())
        capped = await stub.Chat(
            pb.ChatRequest(provider="openai", prompt="one two three", max_tokens=4),
            metadata=auth(),
        )
    assert first.message == second.message
    assert first.usage == second.usage
    assert first.id != second.id
    assert first.usage.completion_tokens == 30 == count_tokens(first.message)
    assert capped.usage.completion_tokens == 4
    assert json_format.MessageToDict(capped.received) == {"prompt": "one two three", "maxTokens": 4}


async def test_latency_is_waited_through_the_injected_sleep() -> None:
    sleep = RecordingSleep()
    tuned = settings(latency_ms=250, overrides=("qwen.latency_ms=1000",))
    async with provider(tuned, sleep=sleep) as (stub, auth):
        await stub.Chat(pb.ChatRequest(provider="openai"), metadata=auth())
        await stub.Chat(pb.ChatRequest(provider="qwen"), metadata=auth())
    assert sleep.waits == [pytest.approx(0.25), pytest.approx(1.0)]


async def test_error_rate_answers_unavailable_for_the_draws_below_it() -> None:
    draws = [0.05, 0.95, 0.29, 0.31]
    async with provider(settings(error_rate=0.3), randomness=ScriptedRandomness(draws)) as (
        stub,
        auth,
    ):
        codes = []
        for _ in draws:
            try:
                await stub.Chat(pb.ChatRequest(provider="openai"), metadata=auth())
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
                info, _ = details(error)
                assert info.reason == "PROVIDER_UNAVAILABLE"
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert codes == [unavailable, grpc.StatusCode.OK, unavailable, grpc.StatusCode.OK]


async def test_a_seed_in_the_settings_replays_the_same_run() -> None:
    async def run() -> list[str]:
        outcomes = []
        async with provider(settings(error_rate=0.5, random_seed=42)) as (stub, auth):
            for _ in range(20):
                try:
                    reply = await stub.Chat(pb.ChatRequest(provider="qwen"), metadata=auth())
                    outcomes.append(reply.id)
                except grpc.aio.AioRpcError as error:
                    outcomes.append(error.code().name)
        return outcomes

    first = await run()
    assert first == await run()
    assert "UNAVAILABLE" in first
    assert len(set(first)) > 2  # ids differ from call to call


async def test_unknown_provider_is_not_found_and_a_blank_one_invalid() -> None:
    async with provider(settings()) as (stub, auth):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Chat(pb.ChatRequest(provider="mistral", prompt="hi"), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as blank:
            await stub.Chat(pb.ChatRequest(prompt="hi"), metadata=auth())
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(unknown.value)
    assert info.reason == "UNKNOWN_PROVIDER"
    assert info.metadata["known_providers"] == "gemini,openai,qwen"
    assert blank.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(blank.value)[1] == ["provider"]


async def test_configured_providers_replace_the_defaults() -> None:
    async with provider(settings(providers=("mistral",))) as (stub, auth):
        reply = await stub.Chat(pb.ChatRequest(provider="mistral"), metadata=auth())
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.Chat(pb.ChatRequest(provider="openai"), metadata=auth())
    assert reply.message == "Stubbed Mistral response"
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_chat_needs_a_verified_caller() -> None:
    async with provider(settings()) as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.Chat(pb.ChatRequest(provider="openai"))
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await stub.Chat(pb.ChatRequest(provider="openai"), metadata=bearer("not.a.jwt"))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tuning_is_read_from_the_environment() -> None:
    loaded = load(
        ProviderSettings,
        "LEAKY_PROVIDER",
        {
            "LEAKY_PROVIDER_LATENCY_MS": "12.5",
            "LEAKY_PROVIDER_ERROR_RATE": "0.1",
            "LEAKY_PROVIDER_OVERRIDES": "qwen.error_rate=1, gemini.completion_tokens=7",
            "LEAKY_PROVIDER_RANDOM_SEED": "3",
        },
    )
    found = loaded.chat_profiles()
    assert (found["openai"].latency_ms, found["openai"].error_rate) == (12.5, 0.1)
    assert found["qwen"].error_rate == 1.0
    assert found["gemini"].completion_tokens == 7
    assert loaded.random_seed == 3


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ERROR_RATE", "1.5", "between 0 and 1"),
        ("OVERRIDES", "openai.latency=5", "expected <provider>.<field>=<value>"),
        ("PROVIDERS", "open ai", "must match"),
        ("LATENCY_MS", "nan", "finite"),
    ],
)
def test_bad_tuning_is_refused_when_the_settings_are_read(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(SettingsError, match=f"LEAKY_PROVIDER_.*{says}"):
        load(ProviderSettings, "LEAKY_PROVIDER", {f"LEAKY_PROVIDER_{variable}": value})


def test_the_process_exits_with_one_line_naming_the_bad_setting() -> None:
    done = run_module(
        "leaky_tokens.provider", {"LEAKY_PROVIDER_ERROR_RATE": "2", "LEAKY_PROVIDER_PORT": "0"}
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "provider: bad setting: LEAKY_PROVIDER_* tuning: openai: error rate must be between 0 and 1"
    ]
