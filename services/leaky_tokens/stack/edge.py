"""The edge of the native stack: the discovery service (Consul -> EDS) and Envoy using it."""

from __future__ import annotations

import sys

from leaky_tokens.gateway.envoy_config import dump, eds_upstreams, render
from leaky_tokens.loopback import HOST, envoy_binary, http_ok
from leaky_tokens.stack.component import Component, Launch, StackPaths
from leaky_tokens.topology import SERVICES, Service, slugs


class Discovery(Component):
    """`python -m leaky_tokens.discovery`: watches Consul, serves Envoy REST EDS."""

    name = "discovery"
    startup_timeout = 30.0

    def __init__(
        self,
        port: int = 18000,
        consul_http_port: int = 8500,
        services: tuple[Service, ...] = SERVICES,
    ) -> None:
        self.port = port
        self.consul = f"{HOST}:{consul_http_port}"
        self.services = services

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def launch(self, paths: StackPaths) -> Launch:
        return Launch(
            [sys.executable, "-m", "leaky_tokens.discovery"],
            env={
                "LEAKY_DISCOVERY_HOST": HOST,
                "LEAKY_DISCOVERY_PORT": str(self.port),
                "LEAKY_DISCOVERY_CONSUL_ADDRESS": self.consul,
                "LEAKY_DISCOVERY_SERVICES": ",".join(slugs(self.services)),
            },
        )

    def ready(self, paths: StackPaths) -> bool:
        return http_ok(f"http://{self.address}/healthz")


class Envoy(Component):
    """The gateway of the native stack: clusters fed by the discovery service (EDS)."""

    name = "envoy"
    startup_timeout = 30.0

    def __init__(
        self,
        port: int = 8080,
        admin_port: int = 9902,
        discovery_port: int = 18000,
        services: tuple[Service, ...] = SERVICES,
    ):
        self.port = port
        self.admin_port = admin_port
        self.discovery_port = discovery_port
        self.services = services

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def config(self) -> str:
        """The Envoy bootstrap config (YAML)."""
        config = render(
            listen=(HOST, self.port),
            admin=(HOST, self.admin_port),
            upstreams=eds_upstreams(self.services),
            discovery=(HOST, self.discovery_port),
            services=self.services,
        )
        return dump(config)

    def prepare(self, paths: StackPaths) -> None:
        (paths.data(self.name) / "envoy.yaml").write_text(self.config())

    def launch(self, paths: StackPaths) -> Launch:
        config = paths.data(self.name) / "envoy.yaml"
        envoy = [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"]
        # Envoy exits when its parent does (it asks the kernel for a parent-death signal), and
        # `leaky stack up` returns at once: a shell that waits for it stays its parent. Both
        # are in one process group, which is what `down` signals.
        return Launch(["/bin/sh", "-c", 'exec 0</dev/null; "$@" & wait $!', "envoy", *envoy])

    def ready(self, paths: StackPaths) -> bool:
        return http_ok(f"http://{HOST}:{self.admin_port}/ready")
