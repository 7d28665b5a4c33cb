"""Stack-only workers as stack components: the saga's Faust worker and the analytics
projection, after the servers they use."""

from __future__ import annotations

import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky_tokens.stack.cassandra import STORE_BATCH_MAX_BYTES, STORE_BATCH_MAX_PARTITIONS
from leaky_tokens.stack.component import HOST, Component, Launch, StackPaths
from leaky_tokens.topology import Worker


def grpc_serving(address: str, timeout: float = 1.0) -> bool:
    """True if the gRPC health service at `address` answers SERVING for the whole server."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class WorkerComponent(Component):
    """`python -m <worker.module>` on the stack's Kafka and Consul, with the settings of the
    service it works for pointed at the stack's Redis and PostgreSQL; ready once its health
    says SERVING (topic created, consumer joined its group, nothing stuck)."""

    startup_timeout = (
        240.0  # Kafka started beside it (up to 150 s, KAFKA_WAIT_S), then a group join
    )
    stop_signal = signal.SIGTERM  # leaves Consul and stops consuming without acking
    stop_timeout = 30.0

    def __init__(
        self,
        worker: Worker,
        port: int,
        *,
        consul: str,
        kafka: str,
        redis_url: str,
        database_url: str = "",
        cassandra: str = "",
        metrics_port: int = 0,
    ) -> None:
        self.worker = worker
        self.name = worker.name
        self.port = port
        self.consul = consul
        self.kafka = kafka
        self.redis_url = redis_url
        self.database_url = database_url
        self.cassandra = cassandra  # host:port of the stack's CQL, for workers that use it
        self.metrics_port = metrics_port  # its /metrics; 0 = it exports none

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def launch(self, paths: StackPaths) -> Launch:
        prefix = self.worker.env_prefix
        within = f"LEAKY_{self.worker.within.upper()}"
        env = {
            "LEAKY_DATA_DIR": str(paths.data(self.name)),
            f"{prefix}_HOST": HOST,
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_CONSUL_ADDRESS": self.consul,
            f"{prefix}_KAFKA_BOOTSTRAP": self.kafka,
            f"{prefix}_METRICS_PORT": str(self.metrics_port),
            # The stores of the service it works for, as `leaky up --stack` sets them.
            f"{within}_STORE_BACKEND": "redis",
            f"{within}_STORE_REDIS_URL": self.redis_url,
            f"{within}_EVENTS_BUS": "kafka",
            f"{within}_EVENTS_KAFKA_BOOTSTRAP": self.kafka,
        }
        if self.database_url:
            env[f"{within}_DATABASE_URL"] = self.database_url
        if self.cassandra:
            # The usage store of the service it works for (the analytics projection's).
            env[f"{prefix}_STORE"] = "cassandra"
            host, _, cql_port = self.cassandra.rpartition(":")
            env[f"{within}_CASSANDRA_HOSTS"] = host
            env[f"{within}_CASSANDRA_PORT"] = cql_port
            env[f"{within}_CASSANDRA_BATCH_MAX_BYTES"] = str(STORE_BATCH_MAX_BYTES)
            env[f"{within}_CASSANDRA_BATCH_MAX_PARTITIONS"] = str(STORE_BATCH_MAX_PARTITIONS)
        return Launch([sys.executable, "-m", self.worker.module], env=env)

    def ready(self, paths: StackPaths) -> bool:
        return grpc_serving(self.address)
