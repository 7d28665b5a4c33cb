"""Creates a Kafka topic if it does not exist yet (a worker's input or dead-letter topic).

Both workers (the token saga's and the analytics projection's) use it; services do not import
each other, so shared Kafka plumbing lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]

log = logging.getLogger(__name__)


async def ensure_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int,
    *,
    client_id: str = "leaky-admin",
    timeout_s: float = 10.0,
) -> bool:
    """Create `name` with that many partitions and replicas; False if it existed already.

    An existing topic is left as it is. Raises KafkaError/TimeoutError when the broker cannot
    be reached in `timeout_s`.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        response = await asyncio.wait_for(
            admin.create_topics([NewTopic(name, partitions, replication)]), timeout_s
        )
    except TopicAlreadyExistsError:
        return False
    finally:
        await admin.close()
    for topic, code, *_ in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            return False
        if code:
            raise KafkaError(f"creating topic {topic}: error code {code}")
    log.info("topic created", extra={"topic": name, "partitions": partitions})
    return True


# How long a worker waits for Kafka at start: `leaky stack up` starts every component at once,
# and a cold Kafka takes up to its 90 s start-up budget to listen.
KAFKA_WAIT_S = 150.0


async def ensure_topic_waiting(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int,
    *,
    client_id: str = "leaky-admin",
    wait_s: float = KAFKA_WAIT_S,
    retry_s: float = 1.0,
    create: Callable[..., Awaitable[bool]] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> bool:
    """`ensure_topic`, retried every `retry_s` while the broker cannot be reached, for up to
    `wait_s`; then the last error is raised (the worker exits, its supervisor says so)."""
    make = create or ensure_topic
    deadline = monotonic() + wait_s
    while True:
        try:
            return await make(bootstrap, name, partitions, replication, client_id=client_id)
        except (KafkaError, TimeoutError, OSError) as error:
            if monotonic() >= deadline:
                raise
            log.warning(
                "kafka not reachable yet; retrying",
                extra={"topic": name, "bootstrap": bootstrap, "error": str(error)},
            )
            await asyncio.sleep(retry_s)
