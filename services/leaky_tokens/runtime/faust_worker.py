"""What both Faust workers share (the token saga's, ADR 0033, and the analytics projection's,
ADR 0039): their Kafka and health settings, the Faust app they build, the gRPC health verdict
and its reporter, the start/stop order and the process's serve loop and entry point.

Services do not import each other, so this lives in the runtime; it imports no service. A
worker brings its agents (built on `faust_app`/`raw_topic`), a `Watch` that says what its
agents are stuck on, and its own parts to start after the app and close after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import faust
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client.registry import Collector

from leaky_tokens.runtime import faust_consumer
from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime.kafka_topics import ensure_topic_waiting
from leaky_tokens.runtime.paths import data_dir
from leaky_tokens.runtime.server import RunningServer, ServerSettings, ServiceSpec, start_server
from leaky_tokens.runtime.settings import SettingsError, doc

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class FaustWorkerSettings(ServerSettings):
    """A Faust worker: its gRPC health server (ServerSettings), Kafka, retries and health.

    Each worker subclasses it with its prefix's own fields (and its `group` default)."""

    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata=doc("Kafka bootstrap servers (host:port,...).")
    )
    topic_partitions: int = field(
        default=3, metadata=doc("Partitions a missing topic is created with.")
    )
    topic_replication: int = field(
        default=1, metadata=doc("Replication factor it is created with (1: a single broker).")
    )
    group: str = field(
        default="leaky-worker",
        metadata=doc("Faust app id = Kafka consumer group of the worker's agents."),
    )
    retry_backoff_ms: int = field(
        default=100,
        metadata=doc("First wait before a failed handle or store call is retried; doubles."),
    )
    retry_backoff_max_ms: int = field(
        default=5_000, metadata=doc("Longest wait between retries of one failing call.")
    )
    stuck_after_ms: int = field(
        default=30_000,
        metadata=doc(
            "Health goes NOT_SERVING (Consul critical) when a handle or store call, retries"
            " included, has not finished for this long (a failed projection store call does"
            " so at once), or the consumer is not running or assigned."
        ),
    )
    health_interval_ms: int = field(
        default=500, metadata=doc("How often the worker re-evaluates its health.")
    )
    session_timeout_ms: int = field(
        default=10_000,
        metadata=doc(
            "Kafka group session timeout: a worker that died (SIGKILL) holds its partitions"
            " this long before the group hands them to another (broker minimum 6000)."
        ),
    )
    commit_interval_ms: int = field(
        default=1_000, metadata=doc("How often handled offsets are committed to Kafka.")
    )
    publish_timeout_ms: int = field(
        default=10_000,
        metadata=doc(
            "A publish (outbox batch, dead letter) Kafka has not acknowledged by then failed"
            " and is tried again."
        ),
    )

    # Fields that must be positive: the shared ones, and a subclass's `POSITIVE` on top.
    SHARED_POSITIVE: ClassVar[tuple[str, ...]] = (
        "topic_partitions",
        "topic_replication",
        "retry_backoff_ms",
        "retry_backoff_max_ms",
        "stuck_after_ms",
        "health_interval_ms",
        "session_timeout_ms",
        "commit_interval_ms",
        "publish_timeout_ms",
    )
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    NOT_EMPTY: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.SHARED_POSITIVE + self.POSITIVE:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise SettingsError("retry_backoff_max_ms: must not be below retry_backoff_ms")
        for name in ("kafka_bootstrap", "group", *self.NOT_EMPTY):
            if not getattr(self, name).strip():
                raise SettingsError(f"{name}: must not be empty")


S = TypeVar("S", bound=FaustWorkerSettings)


def faust_app(
    group: str,
    bootstrap: str,
    datadir: Path,
    *,
    commit_interval_s: float,
    session_timeout_s: float,
    **options: Any,
) -> faust.App:
    """A Faust app as both workers run it: no tables, web server, leader or topic declaration.

    `options` are passed on (the saga's `producer_acks`)."""
    faust_consumer.register()
    scheme = faust_consumer.TRANSPORT_SCHEME  # Faust's aiokafka transport, cheaper hand-over
    brokers = ";".join(f"{scheme}://{h.strip()}" for h in bootstrap.split(",") if h.strip())
    return faust.App(
        group,
        broker=brokers,
        store="memory://",  # no tables: the state lives in the worker's own store
        web_enabled=False,  # health is the worker's gRPC server, metrics its /metrics
        autodiscover=False,
        datadir=str(datadir),  # Faust insists on one; it stays empty
        topic_disable_leader=True,  # no leader election topic: nothing here needs a leader
        topic_allow_declare=False,  # the worker creates its topics itself (kafka_topics.py)
        consumer_auto_offset_reset="earliest",  # a new group starts at the topics' beginning
        broker_commit_interval=commit_interval_s,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=session_timeout_s / 3,  # Kafka's advice: a third
        # A rebalance does not wait for unfinished work (a handle, a batch stuck on a store
        # outage): with several agents on one topic Faust's wait would hang on a message its
        # cleared buffers still count, until the group times the member out. Not waiting, the
        # unfinished work is simply not acked and comes again (ADR 0033, 0039).
        stream_wait_empty=False,
        **options,
    )


def raw_topic(app: faust.App, name: str) -> Any:
    """`name` as bytes keys and values: the workers decode envelopes themselves."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


@dataclass(frozen=True)
class ConsumerState:
    """The app's consumer as the health check sees it."""

    running: bool  # started, not crashed, not stopping
    joined: bool  # finished at least one rebalance (has its assignment, possibly empty)
    rebalancing: bool


def consumer_state(app: faust.App) -> ConsumerState:
    """Read the app's state (no I/O)."""
    running = bool(app.started and not app.crashed and not app.should_stop)
    return ConsumerState(running, app.rebalancing_count > 0, bool(app.rebalancing))


class Watch(Protocol):
    """What a worker's agents are busy with: the health check's evidence."""

    def reason(self, stuck_after_s: float) -> str:
        """Why an agent counts as stuck, or "" when none is."""
        ...


def verdict(
    state: ConsumerState, watch: Watch, rebalancing_for_s: float, stuck_after_s: float
) -> str:
    """Why the worker is unhealthy, or "" when it is healthy."""
    if not state.running:
        return "the Kafka consumer is not running"
    if not state.joined:
        return "the consumer has not joined its group yet"
    if state.rebalancing and rebalancing_for_s > stuck_after_s:
        return f"the consumer has been rebalancing for over {stuck_after_s:g} s"
    return watch.reason(stuck_after_s)


class HealthReporter:
    """Re-evaluates the verdict every `interval_s` and sets the gRPC health of the whole
    server ("" = what Consul's gRPC check probes); logs each change once. `observe`, if
    given, runs after each verdict (the projection's stalled gauge)."""

    def __init__(
        self,
        health: health_aio.HealthServicer,
        state: Callable[[], ConsumerState],
        watch: Watch,
        *,
        label: str,
        stuck_after_s: float,
        interval_s: float,
        observe: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._health = health
        self._state = state
        self._watch = watch
        self._label = label
        self._stuck_after = stuck_after_s
        self._interval = interval_s
        self._observe = observe
        self._now = monotonic
        self._rebalancing_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # None: not evaluated yet

    async def evaluate(self) -> str:
        """One evaluation; returns (and publishes) the reason, "" when healthy."""
        state = self._state()
        if state.rebalancing:
            self._rebalancing_since = self._rebalancing_since or self._now()
        else:
            self._rebalancing_since = None
        since = self._now() - self._rebalancing_since if self._rebalancing_since else 0.0
        reason = verdict(state, self._watch, since, self._stuck_after)
        if self._observe is not None:
            self._observe()
        if reason != self.reason:
            if reason:
                log.warning(f"{self._label} unhealthy", extra={"reason": reason})
            else:
                log.info(f"{self._label} healthy")
            await self._health.set("", NOT_SERVING if reason else SERVING)
            self.reason = reason
        return reason

    def start(self) -> None:
        """Evaluate periodically until `stop()`."""
        self._task = asyncio.create_task(self._loop(), name=f"{self._label} health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # a failed evaluation must not end health reporting
                log.exception(f"{self._label} health evaluation failed")
            await asyncio.sleep(self._interval)


class FaustWorker(Generic[S]):
    """A worker's shared half, started and stopped in order: its topics, the health server
    (NOT_SERVING until the consumer joined its group) and reporter, then the Faust app, then
    the subclass's `started()`; stopping: leave Consul, stop consuming (unfinished work is
    not acked), then the subclass's `close()`."""

    slug: ClassVar[str]  # Consul service name, log `service`, admin client id
    label: ClassVar[str]  # how its logs name it ("saga worker")

    def __init__(
        self,
        settings: S,
        app: faust.App,
        watch: Watch,
        *,
        topics: Iterable[str],
        collectors: Iterable[Collector] = (),
        observe: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.watch = watch
        self._topics = tuple(topics)
        self._collectors = tuple(collectors)
        self._observe = observe
        self.server: RunningServer | None = None
        self.health: HealthReporter | None = None

    async def start(self) -> None:
        s = self.settings
        for topic in self._topics:
            await ensure_topic_waiting(
                s.kafka_bootstrap, topic, s.topic_partitions, s.topic_replication,
                client_id=f"leaky-{self.slug}-admin",
            )  # fmt: skip
        spec = ServiceSpec(
            slug=self.slug, service_names=(), register=lambda server: None,
            collectors=self._collectors,
        )  # fmt: skip
        self.server = await start_server(spec, s, None)
        await self.server.health.set("", NOT_SERVING)
        self.health = HealthReporter(
            self.server.health, lambda: consumer_state(self.app), self.watch, label=self.label,
            stuck_after_s=s.stuck_after_ms / 1000, interval_s=s.health_interval_ms / 1000,
            observe=self._observe,
        )  # fmt: skip
        self.health.start()
        await self.app.start()
        await self.started()

    async def started(self) -> None:
        """The worker's own parts, after the app started."""

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.health is not None:
            await self.health.stop()
        with contextlib.suppress(Exception):
            await self.app.stop()
        await self.close()

    async def close(self) -> None:
        """The worker's own parts, after the app stopped."""

    async def close_each(self, closers: Iterable[Callable[[], Awaitable[object]]]) -> None:
        """Await every closer; one that fails is logged and the rest are closed anyway."""
        for closing in closers:
            try:
                await closing()
            except Exception:  # close the rest anyway
                log.exception(f"closing a {self.label} resource failed")


T = TypeVar("T")


def load_callable(path: str, what: str) -> Callable[[], Any]:
    """The `module:callable` a setting names; SettingsError (naming `what`) when it does
    not resolve to a callable."""
    module_name, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"{what}: cannot load {path!r}: {error}") from error
    if not callable(found):
        raise SettingsError(f"{what}: {path!r} is not callable")
    return cast(Callable[[], Any], found)


async def call_factory(factory: Callable[[], T | Awaitable[T]]) -> T:
    """Call a factory a setting named, plain or async."""
    made = factory()
    return await made if inspect.isawaitable(made) else made


class FaustCrashed(RuntimeError):
    """The Faust app crashed: the process exits so its supervisor restarts it."""


async def serve(build: Callable[[], Awaitable[FaustWorker[Any]]], interval_s: float) -> None:
    """Run until SIGTERM or SIGINT; raise FaustCrashed if the Faust app crashes (a crashed
    app consumes nothing and does not restart itself, while a new process rejoins)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = await build()
    try:
        await worker.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if worker.app.crashed:
                raise FaustCrashed(f"the Faust app crashed: {worker.app.crash_reason!r}")
    finally:
        await worker.stop()


def quiet_libraries(level: str) -> None:
    """Faust and aiokafka narrate every rebalance and fetch at INFO; their warnings stay."""
    if level.upper() != "DEBUG":
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)


# What `main` needs from a worker module: read its settings and resolve what they name
# (SettingsError when they do not), returning them with a builder of the worker for a datadir.
Prepare = Callable[[], tuple[S, Callable[[Path], Awaitable[FaustWorker[S]]]]]


def main(worker: type[FaustWorker[S]], prepare: Prepare[S], datadir_name: str) -> int:
    """The process's entry point; a bad setting exits 2 with one line, a crashed Faust app 1."""
    try:
        settings, build = prepare()
    except SettingsError as error:
        print(f"{worker.slug}: bad setting: {error}", file=sys.stderr)
        return 2
    leaky_logging.configure(worker.slug, settings.log_level)
    quiet_libraries(settings.log_level)
    datadir = data_dir() / datadir_name / settings.group  # Faust insists on one; stays empty
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(lambda: build(datadir), settings.health_interval_ms / 1000))
    except SettingsError as error:  # the worker's parts' own settings, read by its factory
        print(f"{worker.slug}: bad setting: {error}", file=sys.stderr)
        return 2
    except FaustCrashed as error:
        log.error(f"{worker.label} exiting", extra={"reason": str(error)})
        return 1
    return 0
