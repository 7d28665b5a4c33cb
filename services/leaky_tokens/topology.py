"""The one list of services: names, modules, proto services, ports and gateway routes.

Every place that needs "the services" (the `leaky up` supervisor, the stack's discovery and
Envoy, the compose Envoy config, the catalog, the CLI) reads `SERVICES`; adding a service is
one entry here. A leaf: it imports nothing of ours, so anything may import it.

Public (credential-free) RPCs are not listed here: each servicer module declares its own
`PUBLIC_METHODS` beside the code they describe, and the bootstrap hands them to the server.
"""

from __future__ import annotations

from dataclasses import dataclass

# `leaky up --grpc-base-port` / `--metrics-base-port` move every service's port by the
# same offset from these bases.
GRPC_BASE_PORT = 50050
METRICS_BASE_PORT = 9101
# The service that issues tokens: the others fetch its JWKS (LEAKY_<SLUG>_AUTH_TARGET).
ISSUER = "auth"


@dataclass(frozen=True)
class Service:
    """One gRPC service process of the mesh."""

    slug: str  # package, Consul service, Envoy cluster, compose service, env prefix
    grpc_port: int  # default gRPC port (also its settings class's `port` default)
    metrics_port: int = 0  # default Prometheus port; 0 = the service exports no metrics
    proto_services: tuple[str, ...] = ()  # full names the gateway routes to it
    proto_module: str = ""  # generated module declaring them (imported for reflection)
    gateway_prefixes: tuple[str, ...] = ()  # further path prefixes routed to it, no timeout
    # A path the gateway answers 200 on only through this service: `leaky up --stack` waits
    # for it to know the stack's Envoy has found the instance (empty = gRPC health instead).
    gateway_probe: str = ""
    health_service: str = ""  # grpc.health.v1 service name probed; "" = the whole server
    needs_auth_target: bool = False  # gets LEAKY_<SLUG>_AUTH_TARGET: the ISSUER's address
    database: str = ""  # its PostgreSQL database in the native stack; "" = none
    # Other services it calls: each one's address goes in LEAKY_<SLUG>_<PEER>_TARGET.
    targets: tuple[str, ...] = ()
    uses_redis: bool = False  # keeps its state in the native stack's Redis (--stack)
    publishes_events: bool = False  # relays its usage events to the stack's Kafka (--stack)
    # Another deployment of a service package: it runs that package (its module, settings
    # and env prefix, so it shares that service's settings) with <PREFIX>_SERVE=`serve`,
    # its own port, Consul name and Envoy cluster (the slug). "" = the package is the slug.
    package: str = ""
    serve: str = ""

    @property
    def runs(self) -> str:
        """The service package this process runs."""
        return self.package or self.slug

    @property
    def module(self) -> str:
        """The module run as `python -m <module>`."""
        return f"leaky_tokens.{self.runs}"

    @property
    def env_prefix(self) -> str:
        """Prefix of its settings' environment variables, e.g. LEAKY_AUTH."""
        return f"LEAKY_{self.runs.upper()}"

    @property
    def settings_class(self) -> str:
        """`module:Class` of its settings dataclass (for `leaky settings`)."""
        return f"{self.module}.bootstrap:{self.runs.capitalize()}Settings"


SERVICES: tuple[Service, ...] = (
    # The catalog serves no RPC: it answers reflection and health for the whole API.
    Service(
        slug="catalog",
        grpc_port=50050,
        gateway_prefixes=("/grpc.reflection.", "/grpc.health.v1.Health/"),
    ),
    Service(
        slug="auth",
        grpc_port=50051,
        metrics_port=9101,
        proto_services=("leaky.auth.v1.AuthService",),
        proto_module="leaky.auth.v1.auth_pb2",
        gateway_probe="/oauth2/jwks",
        database="leaky_auth",
    ),
    Service(
        slug="token",
        grpc_port=50052,
        metrics_port=9102,
        proto_services=("leaky.token.v1.TokenService",),
        proto_module="leaky.token.v1.token_pb2",
        gateway_probe="/api/v1/tokens/status",
        needs_auth_target=True,
        targets=("provider",),
        database="leaky_token",  # purchase sagas and their outbox (ADR 0032)
        uses_redis=True,
        publishes_events=True,
    ),
    Service(
        slug="analytics",
        grpc_port=50053,
        metrics_port=9103,
        proto_services=("leaky.analytics.v1.AnalyticsService",),
        proto_module="leaky.analytics.v1.analytics_pb2",
        gateway_probe="/api/v1/analytics/health",
        needs_auth_target=True,
    ),
    # The stub LLM providers the token service calls (their own component, ADR 0017).
    Service(
        slug="provider",
        grpc_port=50054,
        metrics_port=9104,
        proto_services=("leaky.provider.v1.ProviderService",),
        proto_module="leaky.provider.v1.provider_pb2",
        needs_auth_target=True,
    ),
    # Envoy's rate-limit service (the edge limits, ADR 0042): the token service's code serving
    # ShouldRateLimit alone (LEAKY_TOKEN_SERVE=rls), on the same policy and store settings,
    # so the per-request RLS call does not share a process with Consume (ADR 0047).
    Service(
        slug="ratelimit",
        grpc_port=50057,
        metrics_port=9107,
        needs_auth_target=True,
        uses_redis=True,
        package="token",
        serve="rls",
    ),
)

# The deployment Envoy's ratelimit filter calls (its cluster and Consul service).
RATELIMIT = "ratelimit"


@dataclass(frozen=True)
class Worker:
    """A process of the mesh that serves no API, only gRPC health (a Kafka consumer).

    Runs only against the native stack (`leaky stack up`, `leaky up --stack`): embedded
    `leaky up` has no Kafka, and runs the same logic inside `within`'s process instead.
    """

    name: str  # component and Consul service name, log file
    module: str  # run as `python -m <module>`
    env_prefix: str  # its settings' prefix; it also gets `within`'s variables
    within: str  # the service whose settings (stores, databases) it shares
    settings_class: str  # `module:Class` of its settings dataclass (for `leaky settings`)
    # gRPC health port under `leaky up --stack` (moved by --grpc-base-port); `leaky stack up`
    # takes LEAKY_STACK_<NAME>_PORT instead (stack/settings.py).
    health_port: int
    # Prometheus port under `leaky up --stack` (moved by --metrics-base-port); 0 = none.
    # `leaky stack up` takes LEAKY_STACK_<NAME>_METRICS_PORT instead.
    metrics_port: int = 0
    # Settings `within` gets when this worker runs beside it (suffixes of its env prefix):
    # the token service leaves the saga to the worker instead of running it in-process.
    within_settings: tuple[tuple[str, str], ...] = ()
    uses_cassandra: bool = False  # `leaky stack up` points its store at the stack's Cassandra


# The purchase saga's Faust worker (ADR 0033) and the analytics projection (ADR 0039).
WORKERS: tuple[Worker, ...] = (
    Worker(
        name="token-saga",
        module="leaky_tokens.token.saga_worker",
        env_prefix="LEAKY_TOKEN_SAGA",
        within="token",
        settings_class="leaky_tokens.token.adapters.saga_settings:SagaWorkerSettings",
        health_port=50055,
        metrics_port=9105,  # purchases by outcome, steps, recoveries (ADR 0040)
        within_settings=(("SAGA_RUNNER", "external"),),
    ),
    Worker(
        name="analytics-projection",
        module="leaky_tokens.analytics.projection_worker",
        env_prefix="LEAKY_ANALYTICS_PROJECTION",
        within="analytics",
        settings_class="leaky_tokens.analytics.adapters.projection_settings:ProjectionSettings",
        health_port=50056,
        metrics_port=9106,
        uses_cassandra=True,
    ),
)


def public_services(services: tuple[Service, ...] = SERVICES) -> dict[str, str]:
    """Full proto service name -> the slug (Envoy cluster) that serves it."""
    return {name: s.slug for s in services for name in s.proto_services}


def slugs(services: tuple[Service, ...] = SERVICES) -> tuple[str, ...]:
    """Every service's slug, in topology order."""
    return tuple(s.slug for s in services)


def by_slug(slug: str, services: tuple[Service, ...] = SERVICES) -> Service:
    """The service named `slug` (KeyError if there is none)."""
    for service in services:
        if service.slug == slug:
            return service
    raise KeyError(slug)
