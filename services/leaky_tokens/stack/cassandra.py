"""Apache Cassandra 5.0 from Maven Central's cassandra-all jars, run on Java 17 as one node."""

from __future__ import annotations

from pathlib import Path

from leaky_tokens.stack.component import HOST, Component, ComponentError, Launch, StackPaths
from leaky_tokens.stack.jvm import TOOLS, find_java, resolve_jars

# Keep in step with tools/cassandra/pom.xml (the version is also passed to mvn explicitly).
CASSANDRA_VERSION = "5.0.9"
POM = TOOLS / "cassandra" / "pom.xml"
# Cassandra 5.0 supports Java 11 and 17 only, and JDK 24+ removed the security manager it
# calls, so a newer JDK that happens to be the default must not be picked up.
JAVA_MAJORS = range(17, 18)
KEYSPACE = "leaky_analytics"
DIRECTORIES = ("conf", "data", "commitlog", "hints", "saved_caches", "cdc_raw", "triggers", "logs")

# Cassandra 5.0 on Java 17: the union of conf/jvm17-server.options and cassandra-unit's 5.0.8
# surefire argLine. Without them (and the jamm agent) the JVM dies during start-up.
JPMS_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

LOGBACK = """<configuration scan="false">
  <!-- stdout only: `leaky stack` captures it into .leaky/stack/logs/cassandra.log -->
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


# What the stack's workers and benchmarks give the usage store for shared unlogged batches
# (cassandra_batch_max_bytes / _partitions): within the thresholds this node is configured
# with (prepare()), wider than the store's defaults, which suit a server's defaults.
STORE_BATCH_MAX_BYTES = 30_000
STORE_BATCH_MAX_PARTITIONS = 60


def find_java17() -> str:
    """The Java 17 `java` Cassandra runs on (found once); no other JDK will do."""
    return find_java(
        JAVA_MAJORS, "cassandra: needs Java 17 (Cassandra 5.0 does not run on newer JDKs)"
    )


class Cassandra(Component):
    """One Cassandra node on loopback: 1 GB heap, no JMX, no auth, system tables not fsynced."""

    name = "cassandra"
    startup_timeout = 180.0  # cold JVM + system keyspace creation on 2 cores
    stop_timeout = 60.0  # SIGTERM drains (flushes memtables) before exiting

    def __init__(self, port: int = 9042, storage_port: int = 7000) -> None:
        self.port = port
        self.storage_port = storage_port

    @property
    def address(self) -> str:
        """host:port of the CQL native transport."""
        return f"{HOST}:{self.port}"

    def _lib(self, paths: StackPaths) -> Path:
        return paths.cached("cassandra", CASSANDRA_VERSION, "lib")

    def provision(self, paths: StackPaths) -> None:
        """Resolve cassandra-all and its runtime dependencies into the cache (once) with mvn."""
        resolve_jars(
            POM,
            self._lib(paths),
            {"cassandra.version": CASSANDRA_VERSION},
            java=find_java17(),
            expect=f"cassandra-all-{CASSANDRA_VERSION}.jar",
        )

    def _dirs(self, paths: StackPaths) -> dict[str, Path]:
        root = paths.data(self.name)
        return {name: root / name for name in DIRECTORIES}

    def prepare(self, paths: StackPaths) -> None:
        """Create the data directories and (re)write cassandra.yaml and logback.xml."""
        dirs = self._dirs(paths)
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # 5.0 keys only: YamlConfigurationLoader rejects unknown (e.g. 4.0-era) keys.
        config = f"""\
cluster_name: leaky
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
num_tokens: 1
initial_token: 0
auto_bootstrap: false
storage_port: {self.storage_port}
native_transport_port: {self.port}
start_native_transport: true
listen_address: {HOST}
rpc_address: {HOST}
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{HOST}:{self.storage_port}"
data_file_directories: ["{dirs["data"]}"]
commitlog_directory: "{dirs["commitlog"]}"
saved_caches_directory: "{dirs["saved_caches"]}"
hints_directory: "{dirs["hints"]}"
cdc_raw_directory: "{dirs["cdc_raw"]}"
commitlog_sync: periodic
commitlog_sync_period: 10s
commitlog_segment_size: 8MiB
auto_snapshot: false
memtable_allocation_type: heap_buffers
disk_access_mode: standard
file_cache_size: 64MiB
key_cache_size: 16MiB
concurrent_compactors: 1
storage_compatibility_mode: NONE
# The stack's usage store shares unlogged batches wider than the store's defaults
# (STORE_BATCH_MAX_BYTES / _PARTITIONS below, ADR 0055): no warning logged per such batch.
batch_size_warn_threshold: 48KiB
batch_size_fail_threshold: 64KiB
unlogged_batch_across_partitions_warn_threshold: 100
"""
        (dirs["conf"] / "cassandra.yaml").write_text(config)
        (dirs["conf"] / "logback.xml").write_text(LOGBACK)

    def launch(self, paths: StackPaths) -> Launch:
        """`java ... CassandraDaemon` in the foreground, Java 17, heap capped at 1 GB."""
        lib = self._lib(paths)
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise ComponentError(
                f"cassandra: no jamm agent jar in {lib}; delete {lib.parent} and run `up` again"
            )
        dirs = self._dirs(paths)
        return Launch(
            [
                find_java17(),
                "-Xms1G",
                "-Xmx1G",
                "-Xss256k",
                "-XX:+UseG1GC",
                "-XX:+ParallelRefProcEnabled",
                "-XX:MaxTenuringThreshold=1",
                "-XX:G1HeapRegionSize=16m",
                "-XX:MaxGCPauseMillis=300",
                "-XX:+PerfDisableSharedMem",
                "-XX:+ExitOnOutOfMemoryError",  # die, so `up --watch` restarts it
                "-Djava.net.preferIPv4Stack=true",
                f"-javaagent:{jamm[0]}",
                *JPMS_FLAGS,
                f"-Dcassandra.config=file://{dirs['conf'] / 'cassandra.yaml'}",
                f"-Dlogback.configurationFile={dirs['conf'] / 'logback.xml'}",
                f"-Dcassandra.storagedir={dirs['data'].parent}",
                f"-Dcassandra.logdir={dirs['logs']}",
                f"-Dcassandra.triggers_dir={dirs['triggers']}",
                "-Dcassandra-foreground=yes",
                # Single node: nobody to gossip with, so skip the >= 5 s settle wait and the
                # 2 s shutdown announcement; system tables skip fsync (test data, like
                # PostgreSQL's fsync=off).
                "-Dcassandra.skip_wait_for_gossip_to_settle=0",
                "-Dcassandra.shutdown_announce_in_ms=0",
                "-Dcassandra.unsafesystem=true",
                # Skip the ~2 s SkipListMemtable row-overhead measurement at every start;
                # 180 B is what 5.0.9 measures on JDK 17 (it only sizes memtable accounting).
                "-Dcassandra.memtable.row_overhead_size=180",
                "-cp",
                f"{dirs['conf']}:{lib}/*",
                "org.apache.cassandra.service.CassandraDaemon",
            ],
            cwd=paths.data(self.name),
        )

    def _query(self, cql: str, timeout: float) -> list[tuple[object, ...]]:
        """Run one CQL statement on a fresh connection; the cluster is always shut down."""
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        profile = ExecutionProfile(
            load_balancing_policy=WhiteListRoundRobinPolicy([HOST]), request_timeout=timeout
        )
        cluster = Cluster(
            [HOST],
            port=self.port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=min(timeout, 1.0),
            control_connection_timeout=min(timeout, 1.0),
            schema_metadata_enabled=False,
            token_metadata_enabled=False,
        )
        try:
            session = cluster.connect()
            return [tuple(row) for row in session.execute(cql)]
        finally:
            cluster.shutdown()

    def ready(self, paths: StackPaths) -> bool:
        """True once a real CQL query (the node's release_version) answers."""
        try:
            rows = self._query("SELECT release_version FROM system.local", timeout=1.0)
        except Exception:  # any driver failure (refused, timeout, bootstrapping) means "not yet"
            return False
        return bool(rows)

    def after_ready(self, paths: StackPaths) -> None:
        """Create the analytics keyspace (SimpleStrategy, RF 1) if it does not exist."""
        try:
            self._query(
                f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
                "{'class': 'SimpleStrategy', 'replication_factor': 1}",
                timeout=30.0,
            )
        except Exception as error:  # the driver raises many unrelated exception types
            raise ComponentError(
                f"cassandra: cannot create keyspace {KEYSPACE}: {error}"
            ) from error
