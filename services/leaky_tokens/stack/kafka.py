"""Apache Kafka (KRaft, one combined broker+controller node) run from Maven Central jars."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from leaky_tokens.loopback import tcp_open
from leaky_tokens.stack.component import HOST, Component, ComponentError, Launch, StackPaths
from leaky_tokens.stack.jvm import TOOLS, find_java, resolve_jars

VERSION = "3.9.2"  # kafka_2.13; tools/kafka/pom.xml resolves it with its logging backend
POM = TOOLS / "kafka" / "pom.xml"
JAVA_MAJORS = range(17, 22)  # Kafka 3.9 runs on 17 and 21; 24+ is not supported by it
HEAP = "512m"
NODE_ID = 1


def random_cluster_id() -> str:
    """A cluster ID as `kafka-storage.sh random-uuid` prints it, without starting a JVM."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka's Uuid.randomUuid() rejects these too
            return cluster_id


async def _broker_listed(bootstrap: str, seconds: float) -> bool:
    from aiokafka import AIOKafkaClient  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(seconds * 1000),
        client_id="leaky-stack-probe",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), seconds)
        # KRaft lists only unfenced brokers: ours appears once it serves requests.
        return any(broker.nodeId == NODE_ID for broker in client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def metadata_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if a Metadata request (through aiokafka, the project's client) lists our broker."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # failed probes during start-up are expected, not errors
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_broker_listed(bootstrap, timeout))
        with ThreadPoolExecutor(1) as pool:  # called from async code: probe on its own loop
            return pool.submit(asyncio.run, _broker_listed(bootstrap, timeout)).result()
    finally:
        quiet.setLevel(level)


class Kafka(Component):
    """Kafka 3.9 in KRaft combined mode on loopback, heap capped at 512 MB, one partition
    per internal topic (a test broker: replication factor 1 everywhere)."""

    name = "kafka"
    startup_timeout = 90.0  # a cold JVM on two busy cores
    stop_signal = signal.SIGTERM  # controlled shutdown
    stop_timeout = 30.0

    def __init__(self, port: int = 9092, controller_port: int = 9093) -> None:
        self.port = port
        self.controller_port = controller_port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def java(self) -> str:
        """The `java` binary used for the broker and its tools (found once)."""
        return find_java(JAVA_MAJORS, "kafka: Kafka 3.9 runs on Java 17..21 only")

    def lib(self, paths: StackPaths) -> Path:
        """The cached directory of the broker's jars."""
        return paths.cached("kafka", VERSION, "lib")

    def _files(self, paths: StackPaths) -> tuple[Path, Path, Path]:
        root = paths.data(self.name)
        return root / "server.properties", root / "log4j.properties", root / "data"

    def provision(self, paths: StackPaths) -> None:
        """Resolve the broker's classpath from Maven Central into the cache, once per pom."""
        resolve_jars(
            POM,
            self.lib(paths),
            {"kafka.version": VERSION},
            java=self.java(),
            expect=f"kafka_2.13-{VERSION}.jar",
        )

    def prepare(self, paths: StackPaths) -> None:
        """Write the configs (every time, so port changes apply) and format storage once."""
        server, log4j, data = self._files(paths)
        data.mkdir(parents=True, exist_ok=True)
        server.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={NODE_ID}",
                    f"controller.quorum.voters={NODE_ID}@{HOST}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{HOST}:{self.port},"
                    f"CONTROLLER://{HOST}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{HOST}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "default.replication.factor=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "",
                ]
            )
        )
        log4j.write_text(
            "\n".join(
                [
                    "log4j.rootLogger=INFO, stdout",
                    "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
                    "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
                    "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
                    "log4j.logger.kafka.request.logger=WARN",
                    "log4j.logger.org.apache.zookeeper=WARN",
                    "",
                ]
            )
        )
        if (data / "meta.properties").exists():
            return
        argv = [
            self.java(),
            "-Xmx256m",
            f"-Dlog4j.configuration=file:{log4j}",
            "-cp",
            f"{self.lib(paths)}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            random_cluster_id(),
            "-c",
            str(server),
            "--ignore-formatted",
        ]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ComponentError(f"kafka: formatting storage failed: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip()[-1000:]
            raise ComponentError(f"kafka: formatting storage failed:\n{tail}")

    def launch(self, paths: StackPaths) -> Launch:
        """`java … kafka.Kafka server.properties` in the foreground, with a fixed 512 MB heap."""
        server, log4j, _ = self._files(paths)
        root = server.parent
        (root / "logs").mkdir(exist_ok=True)
        return Launch(
            [
                self.java(),
                f"-Xms{HEAP}",
                f"-Xmx{HEAP}",
                "-XX:+ExitOnOutOfMemoryError",  # let `up --watch` restart it
                # bin/kafka-run-class.sh's defaults:
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={root / 'logs'}",
                f"-Dlog4j.configuration=file:{log4j}",
                "-cp",
                f"{self.lib(paths)}/*",
                "kafka.Kafka",
                str(server),
            ],
            cwd=root,
        )

    def ready(self, paths: StackPaths) -> bool:
        """The port is open and a Metadata request lists this broker (bounded to ~2 s)."""
        return tcp_open(self.address, timeout=0.3) and metadata_ready(self.address, 2.0)
