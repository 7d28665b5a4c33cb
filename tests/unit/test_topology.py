"""The topology is the one list of services: everything that lists services follows it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import yaml

import leaky
from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.catalog.bootstrap import CatalogSettings
from leaky_tokens.catalog.bootstrap import build as build_catalog
from leaky_tokens.discovery.bootstrap import DiscoverySettings
from leaky_tokens.gateway.envoy_config import compose_yaml
from leaky_tokens.mesh.plan import MeshPorts, envoy_yaml, service_children
from leaky_tokens.runtime.settings import load
from leaky_tokens.stack import postgres
from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.edge import Discovery, Envoy
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.topology import (
    SERVICES,
    WORKERS,
    Service,
    by_slug,
    public_services,
    slugs,
)

ROOT = Path(__file__).resolve().parents[2]

QUOTA = Service(
    slug="quota",
    grpc_port=50055,
    metrics_port=9105,
    proto_services=("leaky.quota.v1.QuotaService",),
    gateway_probe="/api/v1/quota/status",
    health_service="leaky.quota.v1.QuotaService",
    needs_auth_target=True,
)
WITH_QUOTA = (*SERVICES, QUOTA)


def clusters(config_yaml: str) -> dict[str, dict[str, object]]:
    config = yaml.safe_load(config_yaml.split("\n", 1)[1] if config_yaml[0] == "#" else config_yaml)
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def routes(config_yaml: str) -> dict[str, str]:
    config = yaml.safe_load(config_yaml)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (host,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
    return {
        r["match"]["prefix"]: r["route"]["cluster"]
        for r in host["routes"]
        if "route" in r and "prefix" in r["match"]  # read calls have exact routes too
    }


def transcoded(config_yaml: str) -> list[str]:
    config = yaml.safe_load(config_yaml)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = {f["name"]: f for f in hcm["typed_config"]["http_filters"]}
    return list(filters["envoy.filters.http.grpc_json_transcoder"]["typed_config"]["services"])


def test_one_more_entry_reaches_envoy_supervisor_stack_discovery_and_catalog(
    tmp_path: Path,
) -> None:
    ports = MeshPorts.from_bases(services=WITH_QUOTA)
    assert (ports.grpc["quota"], ports.metrics["quota"]) == (50055, 9105)
    moved = MeshPorts.from_bases(8080, 9901, 41000, 19000, services=WITH_QUOTA)
    assert (moved.grpc["quota"], moved.metrics["quota"], moved.metrics["catalog"]) == (
        41005,
        19004,
        0,
    )

    embedded = envoy_yaml(ports, WITH_QUOTA)
    endpoint = clusters(embedded)["quota"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]  # type: ignore[index]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 50055
    assert routes(embedded)["/leaky.quota.v1.QuotaService/"] == "quota"
    assert "leaky.quota.v1.QuotaService" in transcoded(embedded)

    children = {c.name: c for c in service_children(ports, tmp_path, services=WITH_QUOTA)}
    quota = children["quota"]
    assert quota.argv[-2:] == ["-m", "leaky_tokens.quota"]
    assert quota.env["LEAKY_QUOTA_PORT"] == "50055"
    assert quota.env["LEAKY_QUOTA_METRICS_PORT"] == "9105"
    assert quota.env["LEAKY_QUOTA_AUTH_TARGET"] == "127.0.0.1:50051"
    assert quota.health_service == "leaky.quota.v1.QuotaService"
    assert quota.metrics == "http://127.0.0.1:9105/metrics"

    paths = StackPaths(tmp_path / "stack", tmp_path / "cache")
    watched = Discovery(services=WITH_QUOTA).launch(paths).env["LEAKY_DISCOVERY_SERVICES"]
    assert watched.split(",") == [*slugs(), "quota"]
    stack_envoy = Envoy(services=WITH_QUOTA).config()
    assert clusters(stack_envoy)["quota"]["type"] == "EDS"
    assert routes(stack_envoy)["/leaky.quota.v1.QuotaService/"] == "quota"
    assert clusters(compose_yaml(WITH_QUOTA))["quota"]["type"] == "EDS"


async def test_the_catalog_describes_every_topology_service() -> None:
    components = await build_catalog(CatalogSettings(), services=WITH_QUOTA)
    assert set(components.spec.reflection_only) == set(public_services(WITH_QUOTA))
    assert "leaky.quota.v1.QuotaService" in components.spec.reflection_only


def test_every_proto_service_is_in_the_topology_once() -> None:
    declared = set()
    for info in pkgutil.walk_packages(leaky.__path__, "leaky."):
        # Vendored upstream APIs (Envoy's RLS and ext_authz) are served to Envoy directly,
        # never routed by the gateway (ADR 0017).
        if info.name.endswith("_pb2") and not info.name.startswith("leaky.vendor."):
            module = importlib.import_module(info.name)
            declared |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
    listed = [name for s in SERVICES for name in s.proto_services]
    assert sorted(listed) == sorted(declared)
    for service in SERVICES:
        if service.proto_services:
            module = importlib.import_module(service.proto_module)
            names = {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
            assert names == set(service.proto_services), service.slug


def test_settings_defaults_are_the_topology_ports() -> None:
    for service in SERVICES:
        if service.package:  # another deployment of a package: its port is set where it runs
            assert service.grpc_port != by_slug(service.package).grpc_port
            continue
        module, _, name = service.settings_class.partition(":")
        settings = getattr(importlib.import_module(module), name)()
        assert (settings.port, settings.metrics_port) == (
            service.grpc_port,
            service.metrics_port,
        ), service.slug
    assert DiscoverySettings().services == slugs()


def test_compose_runs_and_probes_every_topology_service() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for service in SERVICES:
        assert service.slug in compose, f"compose.yaml has no service {service.slug}"
        entry = compose[service.slug]
        assert entry["command"] == ["python", "-m", service.module]
        assert f"127.0.0.1:{service.grpc_port}" in entry["healthcheck"]["test"]
        if service.package:  # its own port and serve mode on top of the shared block
            env = entry["environment"]
            assert env[f"{service.env_prefix}_PORT"] == str(service.grpc_port)
            assert env[f"{service.env_prefix}_METRICS_PORT"] == str(service.metrics_port)
            assert env[f"{service.env_prefix}_SERVE"] == service.serve
            assert env[f"{service.env_prefix}_STORE_BACKEND"] == "redis"  # the package's store
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    for service in SERVICES:
        if service.metrics_port:
            assert f"{service.slug}:{service.metrics_port}" in targets


def test_compose_runs_probes_and_scrapes_every_worker() -> None:
    compose_text = (ROOT / "compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    services = compose["services"]
    env = services["token"]["environment"]  # the one shared block (x-leaky-env)
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}  # fmt: skip
    for worker in WORKERS:
        assert worker.name in services, f"compose.yaml has no worker {worker.name}"
        entry = services[worker.name]
        assert entry["command"] == ["python", "-m", worker.module]
        assert f"127.0.0.1:{worker.health_port}" in entry["healthcheck"]["test"]
        assert env[f"{worker.env_prefix}_PORT"] == str(worker.health_port)
        assert env[f"{worker.env_prefix}_HOST"] == "0.0.0.0"  # noqa: S104 (a container listens on all)
        assert env[f"{worker.env_prefix}_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env[f"{worker.env_prefix}_CONSUL_ADDRESS"] == "consul:8500"
        within = f"LEAKY_{worker.within.upper()}"
        for key, value in worker.within_settings:
            assert env[f"{within}_{key}"] == value  # e.g. the saga left to the worker
        if worker.uses_cassandra:  # the service reads what the worker writes
            assert env[f"{within}_STORE"] == env[f"{worker.env_prefix}_STORE"] == "cassandra"
            assert env[f"{within}_CASSANDRA_HOSTS"] == "cassandra"
        if worker.metrics_port:
            assert env[f"{worker.env_prefix}_METRICS_PORT"] == str(worker.metrics_port)
            assert f"{worker.name}:{worker.metrics_port}" in targets
    # Every process's settings load from that block (a value its parser refuses fails here).
    plain = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    processes = [
        (s.settings_class, s.env_prefix, s.grpc_port, services[s.slug]["environment"])
        for s in SERVICES
    ] + [(w.settings_class, w.env_prefix, w.health_port, env) for w in WORKERS]
    for settings_class, prefix, port, own in processes:
        module, _, name = settings_class.partition(":")
        values = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in own.items()}
        assert load(getattr(importlib.import_module(module), name), prefix, values).port == port
    assert load(PurchaseSagaSettings, "LEAKY_TOKEN", plain).saga_runner == "external"
    assert load(CassandraStoreSettings, "LEAKY_ANALYTICS", plain).cassandra_hosts == ("cassandra",)


def test_the_stack_creates_every_topology_database() -> None:
    for service in SERVICES:
        if service.database:
            assert service.database in postgres.DATABASES


def test_auth_and_token_have_their_databases_in_the_stack_and_in_compose() -> None:
    # Token keeps its purchase sagas in PostgreSQL natively (ADR 0032), as auth its users.
    compose = (Path(__file__).parents[2] / "compose.yaml").read_text()
    for service in SERVICES:
        if service.slug in ("auth", "token"):
            assert service.database == f"leaky_{service.slug}"
            assert f"LEAKY_{service.slug.upper()}_DATABASE_URL:" in compose
