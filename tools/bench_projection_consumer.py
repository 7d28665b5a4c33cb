"""The projection's consumer path alone: CPU per event with a store that only counts (ADR 0051).

A measurement, never a test. Needs the native stack's Kafka (`leaky stack up`). Loads
--events usage EventEnvelopes (the bench-analytics producer's) into a fresh topic of
--partitions partitions, then consumes them one of two ways and prints the consumer's CPU per
event, counted from the first projected batch to the last:

* `faust`: the real projection worker process (`python -m
  leaky_tokens.analytics.projection_worker`: Faust, `noack_take`, decode, `Projector`, acks
  and commits) with `STORE_FACTORY` pointing at `NullStore` below, which only counts.
* `aiokafka`: this process, `AIOKafkaConsumer.getmany(max_records=--batch-size)`, each batch
  decoded into `SourcedFact`s as the worker does and its offsets committed afterwards.

Both consume the same kind of topic, so the difference is the consumer's own cost. The
topic is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from leaky_tokens.analytics.domain.facts import SourcedFact

ROOT = Path(__file__).resolve().parent.parent
COUNT_FILE = "LEAKY_BENCH_NULL_STORE_COUNT"


class NullStore:
    """A UsageStore that keeps nothing: it writes how many facts it was given to a file."""

    def __init__(self) -> None:
        self.count = 0
        self.path = Path(os.environ[COUNT_FILE])

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        self.count += len(facts)
        self.path.write_text(str(self.count))

    async def close(self) -> None:
        pass


def null_store() -> NullStore:
    """The worker's STORE_FACTORY in the `faust` mode."""
    return NullStore()


def load(args: argparse.Namespace, topic: str, work: Path) -> None:
    from leaky_tokens.runtime.kafka_topics import ensure_topic

    asyncio.run(ensure_topic(args.bootstrap, topic, args.partitions, 1, client_id="leaky-bench"))
    command = [
        sys.executable, str(ROOT / "tools" / "bench_analytics.py"), "produce",
        "--bootstrap", args.bootstrap, "--topic", topic, "--partitions", str(args.partitions),
        "--out", str(work / "sent.bin"), "--rate", "0", "--seconds", "0",
        "--count", str(args.events), "--users", "500", "--orgs", "50", "--span-minutes", "58",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)


def faust_mode(args: argparse.Namespace, topic: str, work: Path) -> tuple[int, float]:
    from leaky_tokens.assets.tools.bench_procs import cpu_seconds, free_port

    count = work / "count"
    p = "LEAKY_ANALYTICS_PROJECTION"
    tag = topic.rsplit(".", 1)[-1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "tools"), os.environ.get("PYTHONPATH")])
        ),
        COUNT_FILE: str(count),
        "LEAKY_DATA_DIR": str(work / "data"),
        f"{p}_KAFKA_BOOTSTRAP": args.bootstrap,
        f"{p}_USAGE_TOPIC": topic,
        f"{p}_PURCHASE_TOPIC": f"leaky.purchase.bench.{tag}",
        f"{p}_DEAD_LETTER_TOPIC": f"leaky.analytics.dead-letter.bench.{tag}",
        f"{p}_TOPIC_PARTITIONS": str(args.partitions),
        f"{p}_GROUP": f"projection-consumer-bench-{tag}",
        f"{p}_PORT": str(free_port()),
        f"{p}_METRICS_PORT": "0",
        f"{p}_CONSUL_ADDRESS": "",
        f"{p}_BATCH_SIZE": str(args.batch_size),
        f"{p}_LOG_LEVEL": "WARNING",
        f"{p}_STORE_FACTORY": "bench_projection_consumer:null_store",
    }
    command = [sys.executable, "-m", "leaky_tokens.analytics.projection_worker"]
    worker = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        first: tuple[int, float] | None = None
        while True:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited {worker.returncode}")
            seen = int(count.read_text() or 0) if count.exists() else 0
            if seen and first is None:
                first = (seen, cpu_seconds(worker.pid))
            if seen >= args.events:
                break
            time.sleep(0.05)
        assert first is not None
        return args.events - first[0], cpu_seconds(worker.pid) - first[1]
    finally:
        worker.terminate()
        worker.wait(30)


async def aiokafka_mode(args: argparse.Namespace, topic: str) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

    from leaky_tokens.analytics.adapters.event_facts import decode, fact_of

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=args.bootstrap, group_id=f"consumer-bench-{uuid.uuid4().hex}",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )  # fmt: skip
    await consumer.start()
    seen, first = 0, None
    try:
        while seen < args.events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=args.batch_size)
            for tp, records in batches.items():
                if first is None:
                    first = (seen, time.process_time())
                facts = []
                for r in records:
                    fact = fact_of(decode(r.value))
                    if fact is not None:
                        facts.append(SourcedFact(r.topic, r.partition, r.offset, fact))
                seen += len(records)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
    assert first is not None
    return args.events - first[0], time.process_time() - first[1]


def drop_topics(args: argparse.Namespace, topic: str) -> None:
    """The run's topic and those the worker made for itself."""
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    tag = topic.rsplit(".", 1)[-1]
    mine = {topic, f"leaky.purchase.bench.{tag}", f"leaky.analytics.dead-letter.bench.{tag}"}

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
        await admin.start()
        try:
            found = [t for t in await admin.list_topics() if t in mine]
            if found:
                await admin.delete_topics(found)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(delete())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["faust", "aiokafka"])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1_500)
    args = parser.parse_args()
    topic = f"leaky.usage.bench.{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="leaky-bench-consumer-") as tmp:
        try:
            load(args, topic, Path(tmp))
            if args.mode == "faust":
                events, cpu = faust_mode(args, topic, Path(tmp))
            else:
                events, cpu = asyncio.run(aiokafka_mode(args, topic))
        finally:
            drop_topics(args, topic)
    print(
        f"{args.mode}: {events:,} events counted, {cpu / events * 1e6:.1f} us"
        f" of CPU per event (load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
