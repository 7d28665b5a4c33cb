"""Creates a Kafka topic if it does not exist yet (a worker's input or dead-letter topic).

The token service keeps its own copy (token/adapters/kafka_topics.py, ADR 0033); services do
not import each other, so shared Kafka plumbing lives here.
"""

from __future__ import annotations

import asyncio
import logging

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
