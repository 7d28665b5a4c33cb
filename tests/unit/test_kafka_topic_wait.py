"""Workers wait for Kafka at start (`leaky stack up` starts every component at once)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError  # type: ignore[import-untyped]

from leaky_tokens.runtime.kafka_topics import ensure_topic_waiting


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_an_unreachable_broker_is_retried_until_it_answers() -> None:
    clock, calls = Clock(), []

    async def create(*args: Any, **kwargs: Any) -> bool:
        calls.append(args)
        clock.now += 10
        if len(calls) < 3:
            raise KafkaConnectionError("Unable to bootstrap")
        return True

    created = await ensure_topic_waiting(
        "k:9092", "t", 3, 1, wait_s=60, retry_s=0, create=create, monotonic=clock
    )
    assert created is True
    assert len(calls) == 3


async def test_past_the_wait_the_last_error_is_raised() -> None:
    clock, calls = Clock(), []

    async def create(*args: Any, **kwargs: Any) -> bool:
        calls.append(args)
        clock.now += 10
        raise KafkaConnectionError("Unable to bootstrap")

    with pytest.raises(KafkaConnectionError):
        await ensure_topic_waiting(
            "k:9092", "t", 3, 1, wait_s=25, retry_s=0, create=create, monotonic=clock
        )
    assert len(calls) == 3  # at 10, 20 (< 25: retried) and 30 (past the wait: raised)
