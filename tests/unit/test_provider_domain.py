"""The provider stubs' rules: token counts, deterministic replies, profiles and faults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leaky_tokens.provider.adapters.seeded_randomness import SeededRandomness
from leaky_tokens.provider.domain.chat import ChatStub
from leaky_tokens.provider.domain.completion import (
    MAX_COMPLETION_TOKENS,
    completion_size,
    completion_text,
    count_tokens,
)
from leaky_tokens.provider.domain.profiles import Profile, ProfileError, profiles
from leaky_tokens.runtime.errors import InvalidArgumentError, NotFoundError, UnavailableError
from tests.support.fakes import FakeClock, RecordingSleep, ScriptedRandomness


def stub(
    *overrides: str, randomness: ScriptedRandomness | None = None, **defaults: float
) -> tuple[ChatStub, RecordingSleep]:
    sleep = RecordingSleep()
    chat = ChatStub(
        profiles(("openai", "qwen", "gemini"), Profile("default", **defaults), overrides),  # type: ignore[arg-type]
        clock=FakeClock(),
        randomness=randomness or ScriptedRandomness(),
        sleep=sleep,
    )
    return chat, sleep


def test_tokens_are_words_and_punctuation_marks() -> None:
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  spaced\tout\n  ") == 2
    assert count_tokens("héllo wörld") == 2  # word characters are Unicode-aware


@given(st.sampled_from(["openai", "qwen", "gemini"]), st.text(max_size=200), st.integers(0, 300))
def test_completion_has_exactly_the_size_it_reports(provider: str, prompt: str, size: int) -> None:
    text = completion_text(provider, provider.capitalize(), prompt, size)
    assert count_tokens(text) == size
    assert text == completion_text(provider, provider.capitalize(), prompt, size)


def test_default_completion_is_the_original_stubs_message() -> None:
    assert completion_text("openai", "OpenAI", "any prompt", 3) == "Stubbed OpenAI response"
    assert completion_text("qwen", "Qwen", "x", 1) == "Stubbed"
    assert completion_text("qwen", "Qwen", "x", 0) == ""


def test_completion_padding_depends_on_provider_and_prompt() -> None:
    base = completion_text("openai", "OpenAI", "tell me a story", 40)
    assert base.startswith("Stubbed OpenAI response ")
    assert completion_text("openai", "OpenAI", "tell me a joke", 40) != base
    assert completion_text("gemini", "OpenAI", "tell me a story", 40) != base


def test_completion_size_is_fixed_plus_ratio_capped_by_max_tokens() -> None:
    assert completion_size(10, fixed=3, ratio=0.0) == 3
    assert completion_size(10, fixed=3, ratio=0.25) == 6  # 3 + ceil(2.5)
    assert completion_size(10, fixed=3, ratio=0.25, max_tokens=4) == 4
    assert completion_size(10, fixed=3, ratio=0.0, max_tokens=50) == 3  # a cap, not a target
    assert completion_size(10**9, fixed=0, ratio=1.0) == MAX_COMPLETION_TOKENS


async def test_same_prompt_gives_the_same_message_and_counts() -> None:
    chat, _ = stub(completion_tokens=12)
    first = await chat.chat("openai", "What is a leaky bucket?")
    second = await chat.chat("OpenAI", "What is a leaky bucket?")
    assert (first.message, first.prompt_tokens, first.completion_tokens) == (
        second.message,
        second.prompt_tokens,
        second.completion_tokens,
    )
    assert first.prompt_tokens == 6
    assert first.completion_tokens == 12 == count_tokens(first.message)
    assert first.total_tokens == 18
    assert first.provider == second.provider == "openai"
    assert first.id != second.id  # each answer is its own response, as the original's


async def test_max_tokens_caps_the_completion() -> None:
    chat, _ = stub(completion_tokens=20)
    reply = await chat.chat("qwen", "hi", max_tokens=5)
    assert reply.completion_tokens == 5
    assert reply.message.startswith("Stubbed Qwen response ")


async def test_unknown_provider_is_not_found_naming_the_known_ones() -> None:
    chat, _ = stub()
    with pytest.raises(NotFoundError) as info:
        await chat.chat("mistral", "hi")
    assert info.value.reason == "UNKNOWN_PROVIDER"
    assert info.value.metadata == {"provider": "mistral", "known_providers": "gemini,openai,qwen"}


@pytest.mark.parametrize(
    ("provider", "max_tokens", "field"),
    [("", 0, "provider"), ("x" * 65, 0, "provider"), ("openai", -1, "max_tokens")],
)
async def test_bad_requests_name_the_field(provider: str, max_tokens: int, field: str) -> None:
    chat, _ = stub()
    with pytest.raises(InvalidArgumentError) as info:
        await chat.chat(provider, "hi", max_tokens=max_tokens)
    assert [v.field for v in info.value.violations] == [field]


async def test_latency_and_jitter_are_waited_through_the_injected_sleep() -> None:
    chat, sleep = stub(
        "qwen.latency_ms=200",
        randomness=ScriptedRandomness([0.5, 0.0]),
        latency_ms=40,
        jitter_ms=10,
    )
    await chat.chat("openai", "hi")  # 40 ms + 0.5 x 10 ms of jitter
    await chat.chat("qwen", "hi")  # its own latency, the shared jitter
    assert sleep.waits == [pytest.approx(0.045), pytest.approx(0.2)]


async def test_no_wait_and_no_draw_when_latency_is_off() -> None:
    randomness = ScriptedRandomness()  # an empty script: any draw would fail
    chat, sleep = stub(randomness=randomness)
    await chat.chat("openai", "hi")
    assert sleep.waits == []


async def test_error_rate_fails_exactly_the_draws_below_it() -> None:
    draws = [0.1, 0.9, 0.24, 0.25, 0.7]
    chat, _ = stub(randomness=ScriptedRandomness(draws), error_rate=0.25)
    failures: list[UnavailableError | None] = []
    for _ in draws:
        try:
            await chat.chat("gemini", "hi")
            failures.append(None)
        except UnavailableError as error:
            failures.append(error)
    assert [f is not None for f in failures] == [True, False, True, False, False]
    failed = [f for f in failures if f is not None]
    assert {f.reason for f in failed} == {"PROVIDER_UNAVAILABLE"}
    assert failed[0].metadata == {"provider": "gemini", "simulated": "true"}


async def test_a_seed_replays_the_same_failures_and_ids() -> None:
    async def run(seed: int) -> list[str]:
        chat, _ = stub(randomness=SeededRandomness(seed), error_rate=0.5)  # type: ignore[arg-type]
        seen = []
        for _ in range(50):
            try:
                seen.append((await chat.chat("openai", "hi")).id)
            except UnavailableError:
                seen.append("failed")
        return seen

    first = await run(7)
    assert first == await run(7)
    assert first != await run(8)
    assert 0 < first.count("failed") < 50


def test_overrides_change_only_their_provider() -> None:
    found = profiles(
        ("openai", "Qwen"),
        Profile("default", latency_ms=5),
        ("qwen.error_rate=0.5", "qwen.completion_tokens=9"),
    )
    assert found["openai"] == Profile("openai", latency_ms=5)
    assert found["qwen"] == Profile("qwen", latency_ms=5, error_rate=0.5, completion_tokens=9)


@pytest.mark.parametrize(
    ("names", "overrides", "defaults", "says"),
    [
        (("openai", "openai"), (), {}, "listed twice"),
        ((), (), {}, "at least one provider"),
        (("open-ai",), (), {}, "must match"),
        (("openai",), ("mistral.latency_ms=1",), {}, "expected <provider>.<field>=<value>"),
        (("openai",), ("openai.colour=1",), {}, "expected <provider>.<field>=<value>"),
        (("openai",), ("openai.latency_ms=soon",), {}, "is not a number"),
        (("openai",), ("openai.completion_tokens=1.5",), {}, "is not an integer"),
        (("openai",), ("openai.error_rate=2",), {}, "between 0 and 1"),
        (("openai",), (), {"latency_ms": -1.0}, "must be >= 0"),
        (("openai",), (), {"latency_ms": float("inf")}, "finite"),
    ],
)
def test_bad_profiles_are_refused_saying_why(
    names: tuple[str, ...], overrides: tuple[str, ...], defaults: dict[str, float], says: str
) -> None:
    with pytest.raises(ProfileError, match=says):
        profiles(names, Profile("default", **defaults), overrides)  # type: ignore[arg-type]
