"""Projection rate and one-day Report read latency of the Cassandra usage store (ADR 0036).

Projects `--events` synthetic usage facts spread over one UTC day into a fresh keyspace of the
Cassandra at --host:--port (the stack's: `leaky stack up`), one `project` call per
(partition, batch) with the partitions' calls running concurrently as a consumer's would,
then times a Report-style read: the buckets of `windows.split` of a 1440-minute window
(ALL scope, one provider), merged with Totals.merge, unique users and the top 5 users.
Prints events/s of project() and the read p50/p99. A measurement, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
import uuid

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore
from leaky_tokens.analytics.domain.facts import FactKind, SourcedFact, UsageFact
from leaky_tokens.analytics.domain.ports import Scope
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import (
    DAY_MS,
    MINUTE_MS,
    Resolution,
    minute_window,
    split,
)

DAY = 1_767_225_600_000  # 2026-01-01T00:00Z
TOPIC = "leaky.usage.v1"


def synthetic(args: argparse.Namespace) -> list[list[SourcedFact]]:
    """Per partition, facts in time order over one day (keyed by user like the relay)."""
    rng = random.Random(args.seed)  # noqa: S311 - reproducible load, not secrets
    span = args.span_minutes * MINUTE_MS
    times = sorted(rng.randrange(DAY + DAY_MS - span, DAY + DAY_MS) for _ in range(args.events))
    logs: list[list[SourcedFact]] = [[] for _ in range(args.partitions)]
    for at in times:
        user = rng.randrange(args.users)
        kind = FactKind.CONSUME if rng.random() < 0.95 else FactKind.REFUND
        fact = UsageFact(
            event_id=uuid.UUID(int=rng.getrandbits(128)).hex,
            occurred_at_ms=at,
            kind=kind,
            provider=rng.choice(args.providers),
            user_id=f"user-{user:05d}",
            org_id=f"org-{user % args.orgs:03d}" if user % 3 else "",
            tokens=rng.randint(1, 2_000),
            allowed=kind.is_decision and rng.random() < 0.8,
        )
        log = logs[user % args.partitions]
        log.append(SourcedFact(TOPIC, user % args.partitions, len(log), fact))
    return logs


async def project_all(
    store: CassandraUsageStore, logs: list[list[SourcedFact]], batch: int
) -> float:
    async def one_partition(log: list[SourcedFact]) -> None:
        for i in range(0, len(log), batch):
            await store.project(log[i : i + batch])

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_partition(log) for log in logs))
    print(f"project: {time.process_time() - cpu:.1f} s CPU in this process")
    return time.perf_counter() - started


async def report(
    store: CassandraUsageStore, provider: str, now_ms: int
) -> tuple[int, int, list[str]]:
    start, end = minute_window(now_ms, 1440)
    by_resolution: dict[Resolution, list[int]] = {}
    for resolution, bucket in split(start, end):
        by_resolution.setdefault(resolution, []).append(bucket)
    parts = await asyncio.gather(
        *(
            store.buckets(Scope.everyone(), provider, resolution, starts)
            for resolution, starts in by_resolution.items()
        )
    )
    total = Totals()
    for part in parts:
        for totals in part.values():
            total.merge(totals)
    return total.events, total.unique_users, [user for user, _ in total.top_users(5)]


async def main(args: argparse.Namespace) -> None:
    keyspace = f"leaky_bench_{uuid.uuid4().hex[:12]}"
    settings = CassandraStoreSettings(
        cassandra_hosts=(args.host,),
        cassandra_port=args.port,
        cassandra_keyspace=keyspace,
        cassandra_request_timeout_ms=60_000,
    )
    logs = synthetic(args)
    store = CassandraUsageStore(settings)
    await store.start()
    try:
        elapsed = await project_all(store, logs, args.batch)
        print(
            f"project: {args.events} events in {elapsed:.1f} s = {args.events / elapsed:,.0f}"
            f" events/s ({args.partitions} partitions, batches of {args.batch},"
            f" {args.users} users, {len(args.providers)} providers)"
        )
        # The million facts held here make each full GC pass take ~1 s: free them first, so
        # the read timings are the store's and not this script's garbage collector.
        logs.clear()
        gc.collect()
        # Ragged edges: the window ends mid-minute late in the day, so it is ~59 minutes +
        # 23 hours + ~59 minutes, crossing into the day before (empty).
        now_ms = DAY + DAY_MS + 23 * MINUTE_MS + 12_345
        await report(store, args.providers[0], now_ms)  # warm the prepared statements
        latencies = []
        for _ in range(args.reads):
            t = time.perf_counter()
            events, unique, top = await report(store, args.providers[0], now_ms)
            latencies.append((time.perf_counter() - t) * 1000)
        cuts = statistics.quantiles(latencies, n=100)
        print("slowest reads (ms):", [round(x) for x in sorted(latencies)[-5:]])
        print(
            f"report (1440-minute window, {events} events, {unique} users, top {top[:2]}...):"
            f" p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms over {args.reads} reads"
        )
    finally:
        await store.close()
        if not args.keep:
            profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
            cluster = Cluster(
                [args.host],
                port=args.port,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            )
            try:
                cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
            finally:
                cluster.shutdown()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--span-minutes",
        type=int,
        default=1440,
        help="spread the events over the last minutes of the day (fewer events, same density)",
    )
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--providers", nargs="+", default=["openai"])
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="facts per project() call")
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the keyspace afterwards")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
