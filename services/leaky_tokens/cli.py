"""The `leaky` command: run the mesh, render its Envoy config, operate the auth database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leaky_tokens import topology
from leaky_tokens.loopback import EnvoyMissing
from leaky_tokens.runtime import settings as settings_mod

if TYPE_CHECKING:
    from leaky_tokens.mesh.plan import StackTargets
    from leaky_tokens.runtime.paths import PathSettings


def _up(args: argparse.Namespace) -> int:
    from leaky_tokens.mesh.plan import MeshPorts
    from leaky_tokens.mesh.supervisor import run_mesh

    ports = MeshPorts.from_bases(
        args.port, args.admin_port, args.grpc_base_port, args.metrics_base_port
    )
    data_dir = (args.data_dir or _path_settings().data_dir).resolve()
    stack = None
    if args.stack:
        stack = _stack_targets()
        if stack is None:
            return 1
    return asyncio.run(run_mesh(ports, data_dir, stack=stack))


def _path_settings() -> PathSettings:
    from leaky_tokens.runtime.paths import ENV_PREFIX, PathSettings

    return settings_mod.load(PathSettings, ENV_PREFIX)


def _stack_targets() -> StackTargets | None:
    """Where the native stack serves, or None (after saying why) if it is not all healthy."""
    from leaky_tokens.mesh.plan import StackTargets
    from leaky_tokens.stack.component import StackPaths
    from leaky_tokens.stack.orchestrator import Stack
    from leaky_tokens.stack.registry import default_components, stack_endpoints

    needed = ["redis", "postgres", "kafka", "consul", "discovery", "envoy"]
    rows = Stack(default_components(), StackPaths.default()).status(needed)
    missing = [f"{r.name} ({r.state})" for r in rows if r.state != "healthy"]
    if missing:
        print(
            f"leaky up --stack: the native stack is not ready: {', '.join(missing)}; "
            "run `leaky stack up` first",
            file=sys.stderr,
        )
        return None
    found = stack_endpoints()
    return StackTargets(
        found.consul,
        found.gateway,
        found.database_urls,
        found.envoy_admin,
        found.redis_url,
        found.kafka_bootstrap,
        found.cassandra,
    )


def _envoy_config(args: argparse.Namespace) -> int:
    from leaky_tokens.gateway.envoy_config import compose_yaml
    from leaky_tokens.mesh.plan import MeshPorts, envoy_yaml

    if args.compose:
        text = compose_yaml()
    else:
        text = envoy_yaml(MeshPorts.from_bases(args.port, args.admin_port))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _stack(args: argparse.Namespace) -> int:
    from leaky_tokens.stack.component import ComponentError, StackPaths
    from leaky_tokens.stack.orchestrator import Stack, format_status
    from leaky_tokens.stack.registry import default_components

    stack = Stack(default_components(), StackPaths.default())
    try:
        if args.action == "up":
            stack.up(args.components)
            if args.watch:
                print("supervising (Ctrl-C stops supervising; the servers keep running)")
                stack.supervise(args.components)
        elif args.action == "provision":
            stack.provision(args.components)
        elif args.action == "down":
            stack.down(args.components)
        elif args.action == "status":
            rows = stack.status(args.components)
            print(format_status(rows))
            return 0 if all(r.state == "healthy" for r in rows) else 3
        else:
            for component in stack.select(args.components):
                log = stack.paths.log(component.name)
                lines = log.read_text(errors="replace").splitlines() if log.exists() else []
                print(f"==> {log} <==")
                print("\n".join(lines[-args.lines :]))
    except ComponentError as error:
        print(f"leaky stack {args.action}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _probe(args: argparse.Namespace) -> int:
    """Exit 0 if the gRPC server at args.target reports SERVING (container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"{args.target}: {error.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{args.target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


def _settings(args: argparse.Namespace) -> int:
    import importlib

    from leaky_tokens.discovery.bootstrap import DiscoverySettings
    from leaky_tokens.gateway.edge_settings import GatewaySettings
    from leaky_tokens.runtime.paths import PathSettings
    from leaky_tokens.stack.settings import StackSettings

    # Every service of the topology, then the processes and tools beside them.
    classes: list[tuple[type, str]] = []
    for service in topology.SERVICES:
        if service.package:  # another deployment of a package listed already (its settings)
            continue
        module, _, name = service.settings_class.partition(":")
        classes.append((getattr(importlib.import_module(module), name), service.env_prefix))
    for worker in topology.WORKERS:
        module, _, name = worker.settings_class.partition(":")
        classes.append((getattr(importlib.import_module(module), name), worker.env_prefix))
    classes += [
        (DiscoverySettings, "LEAKY_DISCOVERY"),
        (GatewaySettings, "LEAKY_GATEWAY"),
        (PathSettings, "LEAKY"),
        (StackSettings, "LEAKY_STACK"),
    ]
    print("| variable | default | meaning |\n|---|---|---|")
    for cls, prefix in classes:
        for name, default, text in settings_mod.describe(cls, prefix):
            print(f"| `{name}` | `{default}` | {text} |")
    return 0


def _offsets(port: str, base: int) -> str:
    """'catalog (+0), auth (+1), ...': which service listens where, from the topology."""
    return ", ".join(
        f"{s.slug} (+{getattr(s, port) - base})" for s in topology.SERVICES if getattr(s, port)
    )


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" unless there is no default or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A parser (and, through add_subparsers, every subcommand's) whose --help shows each
    option's default, even for options declared without a help text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """argparse shows no line at all for an option without help: give it one."""
        if not kwargs.get("help") and kwargs.get("default") not in (None, False):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand and option."""
    parser = _Parser(prog="leaky", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every service and Envoy on loopback (embedded mode)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (HTTP/JSON and gRPC)")
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port")
    up.add_argument(
        "--data-dir",
        type=Path,
        help="state directory; logs go to its logs/ (default: $LEAKY_DATA_DIR, or ./data)",
    )
    up.add_argument(
        "--stack",
        action="store_true",
        help="use the native stack (`leaky stack up`): PostgreSQL, Consul and its Envoy",
    )
    up.add_argument(
        "--grpc-base-port",
        type=int,
        default=topology.GRPC_BASE_PORT,
        help=f"{_offsets('grpc_port', topology.GRPC_BASE_PORT)} listen on this port plus offset",
    )
    up.add_argument(
        "--metrics-base-port",
        type=int,
        default=topology.METRICS_BASE_PORT,
        help=f"/metrics of {_offsets('metrics_port', topology.METRICS_BASE_PORT)} on this "
        "port plus offset; 0 = off",
    )
    up.set_defaults(func=_up)

    envoy = sub.add_parser("envoy-config", help="print the Envoy config `leaky up` uses")
    envoy.add_argument("--port", type=int, default=8080, help="gateway port")
    envoy.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port")
    envoy.add_argument("--out", help="write to this file instead of stdout")
    envoy.add_argument(
        "--compose", action="store_true", help="the config compose.yaml mounts (EDS, 0.0.0.0)"
    )
    envoy.set_defaults(func=_envoy_config)

    auth = sub.add_parser("auth", help="operate the auth database (LEAKY_AUTH_* settings)")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    from leaky_tokens.auth.cli import add_commands as add_auth_commands

    add_auth_commands(auth_sub)  # grant-role, revoke-role

    stack = sub.add_parser("stack", help="the real servers on loopback (no Docker)")
    stack.add_argument("action", choices=["up", "down", "status", "logs", "provision"])
    stack.add_argument("components", nargs="*", help="default: all, in stack order")
    stack.add_argument("--watch", action="store_true", help="up: keep restarting crashed ones")
    stack.add_argument("-n", "--lines", type=int, default=50, help="logs: lines per component")
    stack.set_defaults(func=_stack)

    probe = sub.add_parser("probe", help="gRPC health check of one server (exit 0 = SERVING)")
    probe.add_argument("target", help="host:port")
    probe.add_argument("--service", default="", help="service name; default: the whole server")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds to wait")
    probe.set_defaults(func=_probe)

    settings = sub.add_parser("settings", help="print every setting as a Markdown table")
    settings.set_defaults(func=_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `leaky` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EnvoyMissing as error:  # `leaky up`, `leaky stack up`: one line, not a traceback
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
