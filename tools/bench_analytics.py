"""`make bench-analytics`: usage events through Kafka, the Faust projection and Cassandra.

A benchmark, not a test (issue 9 section 5, docs/benchmarks.md, ADR 0036). It needs the
native stack's Kafka and Cassandra (`leaky stack up`, or the one LEAKY_STACK_DIR names) and
runs, on a fresh topic, consumer group and keyspace each:

* `rate`: the real projection worker process(es) running, a separate producer process sends
  usage EventEnvelopes (occurred_at = now) at --rate events/s for --seconds. This process
  polls the ALL-scope minute cells every --poll-ms; an event (partition p, offset o) is
  visible once its minute cell of partition p has applied_offset >= o (that is when Report
  counts it). Lag = first poll seeing it - occurred_at (so it is rounded up to a poll).
* `drain` (max rate): the producer first loads --events events spread over the 24 hours
  before now, then the worker(s) start and project them as fast as they can; events/s =
  events / (all visible - worker started). Then the Report read (window_totals over the last
  1440 minutes, ALL scope: what Queries.report does after its access check) is timed
  --reads times over that keyspace, p50/p99.

Prints a table with the worker's and Cassandra's CPU per event. Every process it starts it
stops by PID; it drops its keyspace and topics unless --keep.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import datetime
import gc
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.stack.cassandra import STORE_BATCH_MAX_BYTES, STORE_BATCH_MAX_PARTITIONS

ROOT = Path(__file__).resolve().parent.parent
PROVIDER = "openai"
MINUTE_MS = 60_000
DAY_MS = 86_400_000


# --- the producer process ------------------------------------------------------------------


def envelope_bytes(i: int, at_ms: int, users: int, orgs: int) -> tuple[int, bytes, bytes]:
    """Usage event i (user, key, value): 95% consumes (80% allowed), 5% refunds."""
    from leaky.events.v1.events_pb2 import EventEnvelope

    rng = random.Random(i)  # noqa: S311 - reproducible load, not secrets
    user = rng.randrange(users)
    envelope = EventEnvelope(event_id=uuid.UUID(int=rng.getrandbits(128)).hex)
    envelope.partition_key = f"user:user-{user:05d}"
    envelope.occurred_at.FromMilliseconds(at_ms)
    if rng.random() < 0.95:
        body = envelope.token_usage_recorded
        body.tokens, body.allowed = rng.randint(1, 2_000), rng.random() < 0.8
    else:
        body = envelope.tokens_refunded  # type: ignore[assignment]
        body.tokens = rng.randint(1, 500)
    body.user_id, body.provider = f"user-{user:05d}", PROVIDER
    body.org_id = f"org-{user % orgs:03d}" if user % 3 else ""
    return user, envelope.partition_key.encode(), envelope.SerializeToString()


async def produce(args: argparse.Namespace) -> None:
    """Send events; write (partition, offset, occurred_at_ms) per event to --out."""
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    parts, offsets, times = array.array("i"), array.array("q"), array.array("q")
    pending: list[tuple[asyncio.Future[object], int]] = []

    async def settle() -> None:
        for future, at in pending:
            meta = await future
            parts.append(meta.partition)  # type: ignore[attr-defined]
            offsets.append(meta.offset)  # type: ignore[attr-defined]
            times.append(at)
        pending.clear()

    async def send(i: int, at: int) -> None:
        user, key, value = envelope_bytes(i, at, args.users, args.orgs)
        partition = user % args.partitions  # keyed by user, as the relay does
        pending.append((await producer.send(args.topic, value, key, partition), at))

    try:
        if args.rate == 0:  # load: spread over the day before now
            now = int(time.time() * 1000)
            rng = random.Random(1)  # noqa: S311
            span = args.span_minutes * MINUTE_MS
            ats = sorted(rng.randrange(now - span + MINUTE_MS, now) for _ in range(args.count))
            for i, at in enumerate(ats):
                await send(i, at)
                if len(pending) >= 20_000:
                    await settle()
        else:
            start, i = time.monotonic(), 0
            total = int(args.rate * args.seconds)
            while i < total:
                due = min(total, int((time.monotonic() - start) * args.rate) + 1)
                while i < due:
                    await send(i, int(time.time() * 1000))
                    i += 1
                if len(pending) >= 2_000:
                    await settle()
                await asyncio.sleep(0.002)
        await settle()
    finally:
        await producer.stop()
    write_sent(Path(args.out), (parts, offsets, times))


def write_sent(path: Path, columns: tuple[array.array[int], ...]) -> None:
    with path.open("wb") as out:
        for values in columns:
            out.write(len(values).to_bytes(8, "little"))
            values.tofile(out)


def read_sent(path: Path) -> tuple[array.array[int], array.array[int], array.array[int]]:
    out = []
    with path.open("rb") as f:
        for code in ("i", "q", "q"):
            n = int.from_bytes(f.read(8), "little")
            values = array.array(code)
            values.fromfile(f, n)
            out.append(values)
    return out[0], out[1], out[2]


# --- the driver ------------------------------------------------------------------------------


@dataclass
class Run:
    """One run's topics, group, keyspace and processes."""

    args: argparse.Namespace
    work: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"leaky.usage.bench.{self.tag}"

    @property
    def keyspace(self) -> str:
        return f"leaky_bench_{self.tag}"

    def start_workers(self) -> None:
        from leaky_tokens.assets.tools.bench_procs import free_port

        a = self.args
        p = "LEAKY_ANALYTICS_PROJECTION"
        for n in range(a.workers):
            self.ports.append(free_port())
            env = {
                **os.environ,
                "LEAKY_DATA_DIR": str(self.work / "data"),
                f"{p}_KAFKA_BOOTSTRAP": a.bootstrap,
                f"{p}_USAGE_TOPIC": self.topic,
                f"{p}_PURCHASE_TOPIC": f"leaky.purchase.bench.{self.tag}",
                f"{p}_DEAD_LETTER_TOPIC": f"leaky.analytics.dead-letter.bench.{self.tag}",
                f"{p}_TOPIC_PARTITIONS": str(a.partitions),
                f"{p}_GROUP": f"projection-bench-{self.tag}",
                f"{p}_PORT": str(self.ports[-1]),
                f"{p}_METRICS_PORT": "0",
                f"{p}_CONSUL_ADDRESS": "",
                f"{p}_LOG_LEVEL": "WARNING",
                "LEAKY_ANALYTICS_CASSANDRA_HOSTS": a.cassandra_host,
                "LEAKY_ANALYTICS_CASSANDRA_PORT": str(a.cassandra_port),
                "LEAKY_ANALYTICS_CASSANDRA_KEYSPACE": self.keyspace,
                "LEAKY_ANALYTICS_CASSANDRA_REQUEST_TIMEOUT_MS": "60000",
                "LEAKY_ANALYTICS_CASSANDRA_BATCH_MAX_BYTES": str(a.cassandra_batch_max_bytes),
                "LEAKY_ANALYTICS_CASSANDRA_BATCH_MAX_PARTITIONS": str(
                    a.cassandra_batch_max_partitions
                ),
            }
            if a.batch_size is not None:
                env[f"{p}_BATCH_SIZE"] = str(a.batch_size)
            if a.batch_window_ms is not None:
                env[f"{p}_BATCH_WINDOW_MS"] = str(a.batch_window_ms)
            command = [sys.executable, "-m", "leaky_tokens.analytics.projection_worker"]
            with (self.work / f"worker-{n}.log").open("ab") as out:
                process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out)
            self.workers.append(process)

    def stop_workers(self) -> None:
        for process in self.workers:
            process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        self.workers.clear()

    def alive(self) -> None:
        for n, process in enumerate(self.workers):
            if process.poll() is not None:
                log = (self.work / f"worker-{n}.log").read_text()[-3000:]
                raise SystemExit(f"worker {n} exited {process.returncode}:\n{log}")

    def producer(
        self, out: Path, *, rate: float, seconds: float, count: int
    ) -> subprocess.Popen[bytes]:
        a = self.args
        command = [
            sys.executable, __file__, "produce", "--bootstrap", a.bootstrap,
            "--topic", self.topic, "--partitions", str(a.partitions), "--out", str(out),
            "--rate", str(rate), "--seconds", str(seconds), "--count", str(count),
            "--users", str(a.users), "--orgs", str(a.orgs), "--span-minutes", str(a.span_minutes),
        ]  # fmt: skip
        return subprocess.Popen(command, cwd=ROOT)


class Cells:
    """Polls the ALL-scope cells' applied offsets (one partition read per period)."""

    def __init__(self, session: object, keyspace: str) -> None:
        self._session = session
        cql = (
            "SELECT bucket, source_partition, applied_offset FROM {k}.usage_rollup"
            " WHERE scope_kind = 'all' AND scope_id = '' AND provider = ? AND resolution = ?"
            " AND period = ?"
        )
        self._query = session.prepare(cql.format(k=keyspace))  # type: ignore[attr-defined]

    def read(self, resolution: str, periods: list[int]) -> dict[tuple[int, int], int]:
        """The cells' applied offsets; {} when the read timed out (a loaded machine: the
        next poll tries again, and a late poll only makes the lag read larger)."""
        from cassandra import OperationTimedOut, ReadTimeout

        found: dict[tuple[int, int], int] = {}
        try:
            for period in periods:
                for bucket, partition, applied in self._session.execute(  # type: ignore[attr-defined]
                    self._query, (PROVIDER, resolution, period)
                ):
                    found[(bucket, partition)] = applied
        except (ReadTimeout, OperationTimedOut):
            return {}
        return found


def connect(args: argparse.Namespace) -> tuple[object, object]:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=60)
    cluster = Cluster(
        [args.cassandra_host], port=args.cassandra_port, protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        schema_metadata_enabled=False, token_metadata_enabled=False,
    )  # fmt: skip
    return cluster, cluster.connect()


def create_schema(args: argparse.Namespace, keyspace: str) -> None:
    """The store's keyspace and tables (the worker's store creates them on first use)."""
    from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore

    async def once() -> None:
        store = CassandraUsageStore(settings(args, keyspace))
        await store.start()
        await store.close()

    asyncio.run(once())


def settings(args: argparse.Namespace, keyspace: str) -> CassandraStoreSettings:
    return CassandraStoreSettings(
        cassandra_hosts=(args.cassandra_host,), cassandra_port=args.cassandra_port,
        cassandra_keyspace=keyspace, cassandra_request_timeout_ms=60_000,
    )  # fmt: skip


def wait_serving(run: Run, limit_s: float = 120) -> None:
    """Every worker's gRPC health SERVING: its consumer joined the group."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + limit_s
    for port in run.ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                run.alive()
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the workers did not become SERVING")
                time.sleep(0.2)


def cpu(pids: list[int]) -> float:
    from leaky_tokens.assets.tools.bench_procs import cpu_seconds

    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def rate_phase(args: argparse.Namespace, work: Path, cassandra_pid: int | None) -> dict[str, str]:
    run = Run(args, work)
    cluster, session = connect(args)
    try:
        create_schema(args, run.keyspace)
        run.start_workers()
        wait_serving(run)
        time.sleep(args.settle_s)  # the group joined and the topic exists
        cells = Cells(session, run.keyspace)
        worker_cpu0 = cpu([p.pid for p in run.workers])
        cass_cpu0 = cpu([cassandra_pid] if cassandra_pid else [])
        kafka_cpu0 = cpu([args.kafka_pid] if args.kafka_pid else [])
        kafka_cpu0 = cpu([args.kafka_pid] if args.kafka_pid else [])
        children0 = children_cpu()
        sent_path = work / "sent-rate.bin"
        started = time.time()
        producer = run.producer(sent_path, rate=args.rate, seconds=args.seconds, count=0)
        polls: dict[tuple[int, int], tuple[list[float], list[int]]] = {}
        total = int(args.rate * args.seconds)
        done_at = None
        last_offsets: dict[int, int] | None = None
        producer_cpu = 0.0
        while True:
            run.alive()
            now = time.time()
            periods = sorted({(int(now * 1000) - d) // DAY_MS * DAY_MS for d in (0, 120_000)})
            for key, applied in cells.read("MINUTE", periods).items():
                seen_at, applieds = polls.setdefault(key, ([], []))
                if not applieds or applied != applieds[-1]:
                    seen_at.append(now)
                    applieds.append(applied)
            if last_offsets is None and producer.poll() is not None:
                if producer.returncode:
                    raise SystemExit(f"producer exited {producer.returncode}")
                producer_cpu = children_cpu() - children0  # the only child reaped meanwhile
                parts, offsets, _ = read_sent(sent_path)
                last_offsets = {}
                for p, o in zip(parts, offsets, strict=True):
                    last_offsets[p] = max(last_offsets.get(p, -1), o)
            if last_offsets is not None:
                newest: dict[int, int] = {}
                for (_, p), (_, applieds) in polls.items():
                    newest[p] = max(newest.get(p, -1), applieds[-1])
                if all(newest.get(p, -1) >= o for p, o in last_offsets.items()):
                    done_at = now
                    break
            if now - started > args.seconds + args.drain_limit_s:
                break
            time.sleep(args.poll_ms / 1000)
        worker_cpu = cpu([p.pid for p in run.workers]) - worker_cpu0
        cass_cpu = cpu([cassandra_pid] if cassandra_pid else []) - cass_cpu0
        kafka_cpu = cpu([args.kafka_pid] if args.kafka_pid else []) - kafka_cpu0
        parts, offsets, times = read_sent(sent_path)
        lag_at: list[tuple[int, float]] = []  # (occurred_at ms, lag s) of each event seen
        unseen = 0
        for p, o, at in zip(parts, offsets, times, strict=True):
            key = (at - at % MINUTE_MS, p)
            seen = polls.get(key)
            i = bisect.bisect_left(seen[1], o) if seen else 0
            if seen is None or i == len(seen[1]):
                unseen += 1
                continue
            lag_at.append((at, seen[0][i] - at / 1000))
        lags = [lag for _, lag in lag_at]
        if args.lags_out:  # lag by second of production: where the slow events are
            by_second: dict[int, list[float]] = {}
            for at, lag in lag_at:
                by_second.setdefault((at - times[0]) // 1000, []).append(lag)
            with open(args.lags_out, "w") as out:
                for second, values in sorted(by_second.items()):
                    out.write(f"{second} {len(values)} {pct(values, 50):.2f} {max(values):.2f}\n")
        produced_s = (times[-1] - times[0]) / 1000 if len(times) > 1 else 0.0
        return {
            "mode": f"rate {args.rate:g}/s for {args.seconds:g} s",
            "events": f"{len(times):,}" + (f" ({unseen:,} never seen)" if unseen else ""),
            "produced/s": f"{len(times) / produced_s:,.0f}" if produced_s else "-",
            "projected/s": (
                f"{total / (done_at - started):,.0f}" if done_at else "did not catch up"
            ),
            "lag p50": f"{pct(lags, 50):.2f} s",
            "lag p99": f"{pct(lags, 99):.2f} s",
            "lag max": f"{max(lags):.2f} s" if lags else "-",
            "worker CPU/event": f"{worker_cpu / max(len(times), 1) * 1e6:,.0f} us",
            "cassandra CPU/event": (
                f"{cass_cpu / max(len(times), 1) * 1e6:,.0f} us" if cassandra_pid else "-"
            ),
            "kafka CPU/event": (
                f"{kafka_cpu / max(len(times), 1) * 1e6:,.0f} us" if args.kafka_pid else "-"
            ),
            "producer CPU/event": (
                f"{producer_cpu / max(len(times), 1) * 1e6:,.0f} us" if last_offsets else "-"
            ),
        }
    finally:
        run.stop_workers()
        drop(session, run.keyspace, args.keep)
        drop_topics(args, run)
        cluster.shutdown()  # type: ignore[attr-defined]


def drain_phase(args: argparse.Namespace, work: Path, cassandra_pid: int | None) -> dict[str, str]:
    from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore

    run = Run(args, work)
    cluster, session = connect(args)
    try:
        # The topic first (the worker makes it; a throwaway worker with no time to consume
        # would race): let the producer's metadata request create it with the partitions.
        asyncio.run(ensure(args, run.topic))
        sent_path = work / "sent-load.bin"
        loaded = time.monotonic()
        producer = run.producer(sent_path, rate=0, seconds=0, count=args.events)
        if producer.wait():
            raise SystemExit(f"producer exited {producer.returncode}")
        load_s = time.monotonic() - loaded
        parts, offsets, times = read_sent(sent_path)
        last: dict[int, int] = {}
        for p, o in zip(parts, offsets, strict=True):
            last[p] = max(last.get(p, -1), o)
        create_schema(args, run.keyspace)
        started = time.time()
        run.start_workers()
        # CPU from the moment the workers serve (start-up, imports and connecting, ~2 s of
        # CPU, would otherwise count as per-event cost); events/s still includes the start.
        wait_serving(run)
        worker_cpu0 = cpu([p.pid for p in run.workers])
        cass_cpu0 = cpu([cassandra_pid] if cassandra_pid else [])
        kafka_cpu0 = cpu([args.kafka_pid] if args.kafka_pid else [])
        cells = Cells(session, run.keyspace)
        periods = sorted({_day_period(t) for t in (times[0], times[-1])})
        while True:
            run.alive()
            newest: dict[int, int] = {}
            for (_, p), applied in cells.read("DAY", periods).items():
                newest[p] = max(newest.get(p, -1), applied)
            if all(newest.get(p, -1) >= o for p, o in last.items()):
                break
            time.sleep(0.5)
        elapsed = time.time() - started
        worker_cpu = cpu([p.pid for p in run.workers]) - worker_cpu0
        cass_cpu = cpu([cassandra_pid] if cassandra_pid else []) - cass_cpu0
        kafka_cpu = cpu([args.kafka_pid] if args.kafka_pid else []) - kafka_cpu0
        run.stop_workers()
        del parts, offsets, times
        gc.collect()
        store = CassandraUsageStore(settings(args, run.keyspace))
        p50, p99, events = asyncio.run(report_reads(store, args.reads))
        return {
            "mode": f"drain {args.events:,} loaded events (max rate)",
            "events": f"{args.events:,} (loaded at {args.events / load_s:,.0f}/s)",
            "produced/s": "-",
            "projected/s": f"{args.events / elapsed:,.0f} (incl. worker start)",
            "lag p50": "-",
            "lag p99": "-",
            "lag max": "-",
            "worker CPU/event": f"{worker_cpu / args.events * 1e6:,.0f} us",
            "cassandra CPU/event": (
                f"{cass_cpu / args.events * 1e6:,.0f} us" if cassandra_pid else "-"
            ),
            "kafka CPU/event": (
                f"{kafka_cpu / args.events * 1e6:,.0f} us" if args.kafka_pid else "-"
            ),
            "report p50": f"{p50:.1f} ms",
            "report p99": f"{p99:.1f} ms",
            "report events": f"{events:,} in the 1440-minute window",
        }
    finally:
        run.stop_workers()
        drop(session, run.keyspace, args.keep)
        drop_topics(args, run)
        cluster.shutdown()  # type: ignore[attr-defined]


def _day_period(at_ms: int) -> int:
    return at_ms - at_ms % (360 * DAY_MS)


async def ensure(args: argparse.Namespace, topic: str) -> None:
    from leaky_tokens.runtime.kafka_topics import ensure_topic

    await ensure_topic(args.bootstrap, topic, args.partitions, 1, client_id="leaky-bench-admin")


async def report_reads(store: UsageStore, reads: int) -> tuple[float, float, int]:
    from leaky_tokens.analytics.domain.ports import Scope
    from leaky_tokens.analytics.domain.reports import window_totals
    from leaky_tokens.analytics.domain.windows import minute_window

    try:
        latencies, events = [], 0
        for i in range(reads + 1):
            now = int(time.time() * 1000)
            window = minute_window(now, 1440)
            t = time.perf_counter()
            # As Queries.report: the minutes after the window (after now) are known empty.
            (totals,) = await window_totals(store, Scope.everyone(), PROVIDER, [window], window[1])
            totals.top_users(5)
            if i:  # the first warms the prepared statements
                latencies.append((time.perf_counter() - t) * 1000)
            events = totals.events
        return pct(latencies, 50), pct(latencies, 99), events
    finally:
        await store.close()


def drop_topics(args: argparse.Namespace, run: Run) -> None:
    """The run's three topics (unless --keep): the shared Kafka keeps no bench data."""
    if args.keep:
        return
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
        await admin.start()
        try:
            names = (
                "leaky.usage.bench",
                "leaky.purchase.bench",
                "leaky.analytics.dead-letter.bench",
            )
            mine = {f"{name}.{run.tag}" for name in names}
            found = [t for t in await admin.list_topics() if t in mine]
            if found:
                await admin.delete_topics(found)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(delete())


def drop(session: object, keyspace: str, keep: bool) -> None:
    if not keep:
        with contextlib.suppress(Exception):
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)  # type: ignore[attr-defined]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pid_on(port_number: int) -> int | None:
    """The pid listening on a local port, if this user can see it (for CPU/event)."""
    port = f"{port_number:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(":" + port) and fields[3] == "0A":
                    inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
    return None


def machine() -> str:
    cpu_name = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores ({cpu_name}), Python {platform.python_version()}, load {load:.1f}"
    )


def table(rows: list[dict[str, str]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(row.get(k, "-") for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    args = options()
    if args.phase == "produce":
        asyncio.run(produce(args))
        return
    work = Path(tempfile.mkdtemp(prefix="leaky-bench-analytics-"))
    pid = pid_on(args.cassandra_port)
    args.kafka_pid = pid_on(int(args.bootstrap.split(",")[0].rpartition(":")[2]))
    rows = []
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    batch = args.batch_size or "the worker's"
    print(f"{stamp}; {machine()}; workers {args.workers}, batch {batch}", flush=True)
    for phase in args.phases:
        if phase == "report":  # again over a keyspace a drain --keep left
            from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore

            store = CassandraUsageStore(settings(args, args.keyspace))
            p50, p99, events = asyncio.run(report_reads(store, args.reads))
            row = {"mode": f"report over {args.keyspace}", "report p50": f"{p50:.1f} ms",
                   "report p99": f"{p99:.1f} ms", "report events": f"{events:,}"}  # fmt: skip
        else:
            row = (rate_phase if phase == "rate" else drain_phase)(args, work, pid)
        print(row, flush=True)
        rows.append(row)
    print(table(rows))


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", default="run", choices=["run", "produce"])
    parser.add_argument(
        "--phases", nargs="+", default=["rate", "drain"], choices=["rate", "drain", "report"]
    )
    parser.add_argument("--keyspace", default="", help="the report phase's (a kept drain's)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--cassandra-host", default="127.0.0.1")
    parser.add_argument("--cassandra-port", type=int, default=9042)
    parser.add_argument("--rate", type=float, default=5_000, help="events/s of the rate phase")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the drain phase")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--span-minutes", type=int, default=1440,
        help="the drain's events lie in the last minutes before now (fewer events, same density)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int,
        help="projection worker processes (default: one per partition of the bench topic)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, help="the worker's batch size (default: its own)")
    parser.add_argument(
        "--batch-window-ms", type=int, help="the worker's batch window (default: its own)"
    )
    # What the stack gives its worker (its Cassandra accepts them without a warning; the
    # store's own defaults, 4500 and 10, suit a server's defaults: ADR 0055).
    parser.add_argument("--cassandra-batch-max-bytes", type=int, default=STORE_BATCH_MAX_BYTES)
    parser.add_argument(
        "--cassandra-batch-max-partitions", type=int, default=STORE_BATCH_MAX_PARTITIONS
    )
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--poll-ms", type=int, default=50)
    parser.add_argument(
        "--lags-out",
        help="rate: write per second of production: events,"
        " lag p50, lag max (seconds) to this file",
    )
    parser.add_argument("--settle-s", type=float, default=2, help="wait for the group to join")
    parser.add_argument("--drain-limit-s", type=float, default=120)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the keyspaces")
    # the producer's own
    parser.add_argument("--topic", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    args.workers = args.workers or args.partitions
    return args


if __name__ == "__main__":
    main()
