"""Registration in the real Consul and discovery by the stack's Envoy, instance by instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import consul
import pytest

from leaky_tokens.catalog.bootstrap import CatalogSettings
from leaky_tokens.discovery.bootstrap import DiscoverySettings
from leaky_tokens.discovery.bootstrap import build as build_discovery
from leaky_tokens.discovery.bootstrap import start as start_discovery
from leaky_tokens.runtime.server import ServiceSpec, start_server
from leaky_tokens.stack.orchestrator import Stack
from tests.support.net import serving_port
from tests.support.stack import STARTED_BY_TESTS, component
from tests.support.wait import eventually, wait_until

pytestmark = pytest.mark.integration


def consul_client(stack: Stack) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=component(stack, "consul").http_port)  # type: ignore[attr-defined]


def check_status(client: consul.Consul, name: str) -> str | None:
    _, nodes = client.health.service(name)
    checks = [c for n in nodes for c in n["Checks"] if c.get("ServiceName") == name]
    return checks[0]["Status"] if checks else None


def smoke_spec(name: str) -> ServiceSpec:
    return ServiceSpec(slug=name, service_names=(), register=lambda server: None)


async def test_registration_check_passes_and_goes_critical_when_the_server_stops(
    stack: Stack,
) -> None:
    client, name = consul_client(stack), f"smoke-{uuid.uuid4().hex[:8]}"
    address = f"127.0.0.1:{component(stack, 'consul').http_port}"  # type: ignore[attr-defined]
    settings = CatalogSettings(port=0, consul_address=address)
    running = await start_server(smoke_spec(name), settings, None)
    try:
        await eventually(
            lambda: check_status(client, name) == "passing", 20, what="gRPC check passing"
        )
        _, services = client.catalog.service(name)
        assert services[0]["ServicePort"] == running.port
        assert services[0]["ServiceMeta"]["version"]
        # The process dies without deregistering: Consul's own gRPC probe must notice.
        assert running.registrar is not None
        await running.registrar.abandon()
        await running.server.stop(0)
        await eventually(
            lambda: check_status(client, name) == "critical", 20, what="gRPC check critical"
        )
    finally:
        client.agent.service.deregister(f"{name}-127.0.0.1-{running.port}")


async def test_forgotten_instance_re_registers_and_graceful_stop_deregisters(
    stack: Stack,
) -> None:
    client, name = consul_client(stack), f"smoke-{uuid.uuid4().hex[:8]}"
    address = f"127.0.0.1:{component(stack, 'consul').http_port}"  # type: ignore[attr-defined]
    running = await start_server(
        smoke_spec(name), CatalogSettings(port=0, consul_address=address), None
    )
    service_id = f"{name}-127.0.0.1-{running.port}"
    try:
        await eventually(lambda: service_id in client.agent.services(), 10, what="registered")
        client.agent.service.deregister(service_id)  # Consul "forgets" it
        assert service_id not in client.agent.services()
        await eventually(lambda: service_id in client.agent.services(), 15, what="re-registered")
    finally:
        await running.stop(grace=0)
    assert service_id not in client.agent.services()


async def test_discovery_built_by_its_bootstrap_serves_what_consul_knows(stack: Stack) -> None:
    consul_address = f"127.0.0.1:{component(stack, 'consul').http_port}"  # type: ignore[attr-defined]
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    settings = DiscoverySettings(port=0, consul_address=consul_address, services=(name,))
    discovery = await start_discovery(build_discovery(settings), settings)
    server = await start_server(
        smoke_spec(name), CatalogSettings(port=0, consul_address=consul_address), None
    )
    url = f"http://127.0.0.1:{discovery.port}/v3/discovery:endpoints"

    async def served_ports(http: aiohttp.ClientSession) -> list[int]:
        async with http.post(url, json={"resource_names": [name]}) as reply:
            (resource,) = (await reply.json())["resources"]
        return [
            e["endpoint"]["address"]["socket_address"]["port_value"]
            for group in resource["endpoints"]
            for e in group["lb_endpoints"]
        ]

    try:
        async with aiohttp.ClientSession() as http:
            # The discovery server runs on this event loop: ask it without blocking the loop.
            async def serves_the_instance() -> bool:
                return await served_ports(http) == [server.port]

            await eventually(serves_the_instance, 20, what="discovery serving the instance")
    finally:
        await server.stop(grace=0)
        await discovery.stop()


# --- Envoy discovering token instances through Consul ------------------------------------


@contextmanager
def token_instance(stack: Stack, data_dir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`python -m leaky_tokens.token` on a port it picks, registered in the stack's Consul."""
    consul_port = component(stack, "consul").http_port  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "LEAKY_TOKEN_PORT": "0",
        "LEAKY_TOKEN_METRICS_PORT": "0",
        "LEAKY_TOKEN_CONSUL_ADDRESS": f"127.0.0.1:{consul_port}",
        "LEAKY_TOKEN_SHUTDOWN_DELAY_SECONDS": "0",
    }
    log_path = data_dir / f"token-{uuid.uuid4().hex[:8]}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leaky_tokens.token"], env=env, stdout=log, stderr=log
    )
    try:
        yield serving_port(process, log_path), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
        log.close()


def envoy_hosts(stack: Stack, cluster: str) -> dict[str, dict[str, Any]]:
    """host:port -> {'healthy': bool, 'rq_total': int} from the stack Envoy's admin API."""
    admin = component(stack, "envoy").admin_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters?format=json", timeout=2) as r:
        clusters = json.load(r)["cluster_statuses"]
    hosts: dict[str, dict[str, Any]] = {}
    for status in clusters:
        if status["name"] != cluster:
            continue
        for host in status.get("host_statuses", []):
            address = host["address"]["socket_address"]
            stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            flags = dict(host.get("health_status", {}))
            # HEALTHY from discovery and no other flag (failed or pending active check, ...).
            healthy = flags.pop("eds_health_status", "HEALTHY") == "HEALTHY" and not any(
                flags.values()
            )
            hosts[f"{address['address']}:{address['port_value']}"] = {
                "healthy": healthy,
                "rq_total": stats.get("rq_total", 0),
            }
    return hosts


def gateway_status(stack: Stack) -> int:
    url = f"http://{component(stack, 'envoy').address}/api/v1/tokens/status"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def healthy_ports(stack: Stack) -> set[int]:
    return {
        int(h.rsplit(":", 1)[1]) for h, s in envoy_hosts(stack, "token").items() if s["healthy"]
    }


def test_envoy_follows_instances_as_they_come_die_and_outlive_consul(
    stack: Stack, tmp_path: Path
) -> None:
    with (
        token_instance(stack, tmp_path) as (port_a, _),
        token_instance(stack, tmp_path) as (
            port_b,
            process_b,
        ),
    ):
        # Both instances join Envoy's load balancing, with no Envoy restart.
        wait_until(
            lambda: {port_a, port_b} <= healthy_ports(stack),
            30,
            what="both instances in rotation",
        )

        def both_served() -> bool:
            gateway_status(stack)
            hosts = envoy_hosts(stack, "token")
            return all(hosts[f"127.0.0.1:{p}"]["rq_total"] > 0 for p in (port_a, port_b))

        wait_until(both_served, 20, what="traffic reaching both instances")
        statuses = [gateway_status(stack) for _ in range(40)]
        assert set(statuses) == {200}, statuses

        # A killed instance leaves rotation within seconds; no request fails meanwhile for long.
        process_b.kill()
        wait_until(
            lambda: port_b not in healthy_ports(stack), 10, what="killed instance out of rotation"
        )
        statuses = [gateway_status(stack) for _ in range(20)]
        assert set(statuses) == {200}, statuses


def discovered_ports(stack: Stack, service: str) -> set[int]:
    """Ports the discovery service currently hands Envoy for `service`."""
    url = f"http://{component(stack, 'discovery').address}/endpoints"
    with urllib.request.urlopen(url, timeout=2) as response:
        return {int(e.rsplit(":", 1)[1]) for e in json.load(response).get(service, [])}


def test_consul_outage_keeps_the_last_known_endpoints_serving(stack: Stack, tmp_path: Path) -> None:
    if "consul" not in STARTED_BY_TESTS:
        pytest.skip("stopping Consul would wipe the registrations of a stack the tests reuse")
    with token_instance(stack, tmp_path) as (port, _):
        wait_until(lambda: port in discovered_ports(stack, "token"), 30, what="instance discovered")
        wait_until(lambda: gateway_status(stack) == 200, 20, what="instance served through Envoy")
        discovery_log = stack.paths.log("discovery")
        seen = discovery_log.stat().st_size
        stack.down(["consul"])
        try:
            # Discovery's watch of `token` has failed (it retries with a backoff meanwhile).
            wait_until(
                lambda: b"consul query failed" in discovery_log.read_bytes()[seen:],
                20,
                what="discovery noticing the Consul outage",
            )
            # Discovery still hands out the last known endpoint, and Envoy still serves it.
            assert port in discovered_ports(stack, "token")
            statuses = [gateway_status(stack) for _ in range(20)]
            assert set(statuses) == {200}, statuses
        finally:
            stack.up(["consul"])
        # The dev agent restarted empty; the instance registers itself again.
        client = consul_client(stack)
        wait_until(
            lambda: check_status(client, "token") == "passing",
            30,
            what="re-registered after Consul restart",
        )
