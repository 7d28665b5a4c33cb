"""Consul (the last MPL-2.0 line without closed-licence modules) built from the Go module proxy.

`tools/consul` is a wrapper Go module that requires `github.com/hashicorp/consul` at VERSION
(see its README for why that release); `provision` builds it once into the cache, outside
the clone. The agent runs in `-dev` mode: one in-memory server, every port on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from leaky_tokens.runtime.paths import tools
from leaky_tokens.stack.component import HOST, Component, ComponentError, Launch, StackPaths

VERSION = "v1.14.11"  # must match the `require` in tools/consul/go.mod
MODULE = tools() / "consul"  # shipped as package data
PACKAGE = "github.com/hashicorp/consul"
BUILD_TIMEOUT = 1800.0  # a cold build is ~5 min on two cores; leave room for a busy machine


def find_go() -> str:
    """The `go` command: PATH's, else the tarball install in /usr/local/go."""
    found = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if found is None:
        raise ComponentError("consul: the Go toolchain (go) is needed to build Consul")
    return found


class Consul(Component):
    """A single-node Consul dev agent (in-memory server, UI, DNS, gRPC) on 127.0.0.1.

    Its Raft server and Serf LAN ports follow the HTTP port (HTTP - 200 and - 199: 8300/8301
    for the default 8500), so a second stack on other ports does not collide with the first;
    Serf WAN (one datacenter) and the gRPC TLS port are disabled.
    """

    name = "consul"
    startup_timeout = 30.0

    def __init__(
        self,
        http_port: int = 8500,
        dns_port: int = 8600,
        grpc_port: int = 8502,
        *,
        server_port: int | None = None,
        serf_lan_port: int | None = None,
    ) -> None:
        self.http_port = http_port
        self.dns_port = dns_port
        self.grpc_port = grpc_port
        self.server_port = http_port - 200 if server_port is None else server_port
        self.serf_lan_port = http_port - 199 if serf_lan_port is None else serf_lan_port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.http_port}"

    def binary(self, paths: StackPaths) -> Path:
        """Where the built `consul` binary is cached."""
        return paths.cached("consul", VERSION, "consul")

    def provision(self, paths: StackPaths) -> None:
        """Build `tools/consul` into the cache with `go build`, unless already there."""
        binary = self.binary(paths)
        if binary.is_file() and os.access(binary, os.X_OK):
            return
        if not (MODULE / "go.mod").is_file():
            raise ComponentError(f"consul: {MODULE / 'go.mod'} not found")
        partial = binary.with_name(binary.name + ".partial")
        argv = [
            find_go(),
            "build",
            "-mod=readonly",  # go.mod/go.sum are committed: never rewrite them here
            "-trimpath",
            "-ldflags=-s -w",
            "-o",
            str(partial),
            PACKAGE,
        ]
        try:
            result = subprocess.run(
                argv,
                cwd=MODULE,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            partial.unlink(missing_ok=True)
            raise ComponentError(f"consul: go build failed: {exc}") from exc
        if result.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            tail = (result.stdout + result.stderr).strip()[-1500:]
            raise ComponentError(f"consul: go build of {MODULE} failed:\n{tail}")
        partial.rename(binary)

    def launch(self, paths: StackPaths) -> Launch:
        """`consul agent -dev` on loopback with this stack's ports (no data on disk)."""
        return Launch(
            [
                str(self.binary(paths)),
                "agent",
                "-dev",
                "-node",
                "leaky-dev",
                "-bind",
                HOST,
                "-client",
                HOST,
                "-http-port",
                str(self.http_port),
                "-dns-port",
                str(self.dns_port),
                "-grpc-port",
                str(self.grpc_port),
                "-grpc-tls-port",
                "-1",  # -dev opens 8503 for gRPC over TLS; nothing here uses it
                "-server-port",
                str(self.server_port),
                "-serf-lan-port",
                str(self.serf_lan_port),
                "-serf-wan-port",
                "-1",
                "-log-level",
                "info",
                "-hcl",
                "disable_update_check = true",  # no phoning home to checkpoint-api.hashicorp.com
            ]
        )

    def ready(self, paths: StackPaths) -> bool:
        """`GET /v1/status/leader` names a leader (the dev server elected itself)."""
        url = f"http://{self.address}/v1/status/leader"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                leader = json.loads(response.read() or b'""')
        except (OSError, ValueError):  # URLError is an OSError
            return False
        return isinstance(leader, str) and bool(leader)
