"""`make bench-edge`: Consume over HTTP/JSON through Envoy against direct gRPC (issue 10 §4).

A benchmark, not a test (docs/benchmarks.md, ADR 0042). It starts, on free loopback ports, the
same services as `make bench`'s Consume phase (its own redis-server, auth, the provider stub
at zero latency, the token service on Redis with limits far beyond reach) and an Envoy
rendered by the project's own config function in front of them, then loads Consume at one
concurrency three ways, interleaved run by run:

- gRPC straight to the token service (ghz, as `make bench`): the denominator;
- HTTP/JSON through Envoy (wrk, POST /api/v1/tokens/consume): what the issue's ratio is about;
- native gRPC through Envoy (ghz), for the cost of the hop alone.

Envoy runs with the edge rate limits on (every request also asks the token service's
ShouldRateLimit, as deployed) or off (`--edge-limits off`), or both in turn (`both`). It
prints rps, p50, p99, errors, CPU per request of the token service and of Envoy, and the
ratios, and writes a markdown fragment. Every process it starts it stops by PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky_tokens.assets.tools.bench_procs import (
    Ghz,
    Processes,
    free_port,
    free_ports,
    load_average,
    tree_cpu_seconds,
)
from leaky_tokens.gateway.edge_settings import GatewaySettings
from leaky_tokens.gateway.envoy_config import Upstream, dump, render
from leaky_tokens.loopback import envoy_binary
from leaky_tokens.topology import SERVICES

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "leaky-bench" / "erl"
GHZ_VERSION = "v0.120.0"  # the harness's pin (../shared/bench/rls-bench.sh)
CONSUME_CALL = "leaky.token.v1.TokenService/Consume"
CONSUME_PATH = "/api/v1/tokens/consume"
# `make bench`'s policy (limits far beyond this box), plus edge entries that count every
# request and never refuse one: the RLS does its whole work, Consume stays on its allowed path.
POLICY = """\
providers:
  openai: {capacity: 9000000000, leak_rate: 1000000000}
tiers:
  USER: {priority: 10, capacity_multiplier: 1, rate_multiplier: 1, quota_tokens: 9000000000}
default_tier: USER
quota: {window: daily, timezone: UTC}
rate_limits:
  domain: leaky
  descriptors:
    - key: method
      descriptors:
        - key: remote_address
          rate_limit: {name: edge-address, unit: second, requests_per_unit: 4000000000}
        - key: user_id
          rate_limit: {name: edge-user, unit: second, requests_per_unit: 4000000000}
"""
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer {jwt}"
"""


@dataclass(frozen=True)
class Mesh:
    token: str
    token_pid: int
    envoy: str
    envoy_pid: int
    jwt: str
    user: str


def main() -> None:
    """Parse options, run each configuration, write the report; stop everything started."""
    args = _options()
    ghz_binary = _ghz()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench-edge: needs wrk (Debian: apt-get install wrk)")
    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="leaky-bench-edge-"))
    ghz = Ghz(ghz_binary, args.c, args.z, connections=args.token_processes)
    modes = ["on", "off"] if args.edge_limits == "both" else [args.edge_limits]
    load_before = load_average()
    sections = []
    for mode in modes:
        procs = Processes(work)
        try:
            mesh = _start(procs, work / mode, mode == "on", args.token_processes)
            sections.append(_measure(mesh, ghz, wrk, args, work / mode, mode))
        finally:
            procs.stop_all()
    text = _report(args, sections, load_before, load_average())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"report: {out}; logs: {work}")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per path")
    parser.add_argument("-c", type=int, default=50, help="concurrency (ghz -c, wrk -c)")
    parser.add_argument("-z", type=int, default=20, help="seconds per run (after 3 s warm-up)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--edge-limits", choices=("on", "off", "both"), default="both")
    parser.add_argument(
        "--token-processes",
        type=int,
        default=1,
        help="token service processes sharing its port (LEAKY_TOKEN_PROCESSES; CPU summed)",
    )
    parser.add_argument("--out", default=str(ROOT / ".leaky" / "bench" / "edge-latest.md"))
    return parser.parse_args()


def _ghz() -> Path:
    """ghz as `make bench` has it (the harness's cache), installed there if missing."""
    binary = CACHE / "bin" / "ghz"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        print(f"bench-edge: installing ghz {GHZ_VERSION} into {binary.parent}", flush=True)
        subprocess.run(
            ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            env={**os.environ, "GOBIN": str(binary.parent)},
            check=True,
        )
    return binary


def _env(service: str, values: dict[str, str]) -> dict[str, str]:
    return {f"LEAKY_{service}_{k}": v for k, v in values.items()}


def _start(procs: Processes, work: Path, edge_limits: bool, processes: int) -> Mesh:
    """Redis, auth, provider stub, token service, then Envoy in front of them."""
    work.mkdir(parents=True)
    py = sys.executable
    redis, auth, provider, token, envoy, admin = (free_port() for _ in range(6))
    procs.start(
        "redis",
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", str(redis), "--save", ""),
            *("--appendonly", "no", "--dir", str(work)),
        ],
        {},
        redis,
    )
    quiet = {"METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
    (work / "data").mkdir()
    procs.start(
        "auth",
        [py, "-m", "leaky_tokens.auth"],
        _env("AUTH", {**quiet, "PORT": str(auth)}) | {"LEAKY_DATA_DIR": str(work / "data")},
        auth,
    )
    peer = {**quiet, "AUTH_TARGET": f"127.0.0.1:{auth}"}
    procs.start(
        "provider",
        [py, "-m", "leaky_tokens.provider"],
        _env("PROVIDER", {**peer, "PORT": str(provider), "LATENCY_MS": "0"}),
        provider,
    )
    (work / "policy.yaml").write_text(POLICY)
    settings = {
        **peer,
        "PORT": str(token),
        "STORE_BACKEND": "redis",
        "STORE_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
        "POLICY_FILE": str(work / "policy.yaml"),
        "PROVIDER_TARGET": f"127.0.0.1:{provider}",
        # On a shared 2-core box a Redis call can stall past the 100 ms default, and the store
        # then refuses everything for a while (fail_closed): that would measure the machine.
        "STORE_TIMEOUT_MS": "1000",
        # Likewise the provider call's resilience: a stall past its 2 s deadline five times in
        # a row opens the breaker for 10 s of UNAVAILABLE. Measured here is the path, not that.
        "PROVIDER_TIMEOUT_SECONDS": "30",
        "PROVIDER_BREAKER_FAILURES": "1000000",
        "PROVIDER_MAX_CONCURRENT": "1000",
    }
    metrics = free_ports(processes) if processes > 1 else 0
    settings |= {"PROCESSES": str(processes), "METRICS_PORT": str(metrics)}
    token_pid = procs.start(
        "token", [py, "-m", "leaky_tokens.token"], _env("TOKEN", settings), token
    )
    for index in range(processes if metrics else 0):  # each worker's /metrics: it serves
        procs.await_port("token", procs.started[-1][1], metrics + index)
    ports = {"auth": auth, "token": token, "provider": provider}
    upstreams = [
        Upstream(s.slug, ((("127.0.0.1", ports[s.slug]),) if s.slug in ports else ()))
        for s in SERVICES
    ]
    config = render(
        listen=("127.0.0.1", envoy),
        admin=("127.0.0.1", admin),
        upstreams=upstreams,
        edge=GatewaySettings(ratelimit=edge_limits),
    )
    (work / "envoy.yaml").write_text(dump(config))
    envoy_pid = procs.start(
        "envoy",
        [envoy_binary(), "-c", str(work / "envoy.yaml"), "--use-dynamic-base-id", "-l", "warn"],
        {},
        envoy,
    )
    jwt, user = _register(f"127.0.0.1:{auth}")
    return Mesh(f"127.0.0.1:{token}", token_pid, f"127.0.0.1:{envoy}", envoy_pid, jwt, user)


def _register(auth: str) -> tuple[str, str]:
    with grpc.insecure_channel(auth) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        name = f"edge{os.getpid()}"
        answer = stub.Register(
            auth_pb2.RegisterRequest(
                username=name,
                email=f"{name}@bench.invalid",
                password=f"bench-{os.urandom(8).hex()}",  # a throwaway user in a temp database
            ),
            timeout=30,
        )
    return answer.token, answer.user_id


@dataclass(frozen=True)
class Load:
    """One run of one path: the load generator's figures and CPU per request."""

    rps: float
    p50: float
    p99: float
    count: int
    errors: int
    token_us: float
    envoy_us: float


def _ghz_load(ghz: Ghz, target: str, mesh: Mesh) -> Load:
    """ghz as `make bench` runs it (its Ghz settings), CPU of the token service and Envoy."""
    body = f'{{"user_id":"{mesh.user}","provider":"openai","tokens":1,"prompt":"hi"}}'
    base = [str(ghz.binary), "--insecure", "--protoset", str(ROOT / "envoy" / "leaky.pb")]
    base += ["--call", CONSUME_CALL, "-d", body]
    base += ["--metadata", f'{{"authorization":"Bearer {mesh.jwt}"}}']
    base += ["-c", str(ghz.concurrency), "--duration-stop=ignore"]
    # One connection lands on one process: as many as there are token processes.
    base += ["--connections", str(ghz.connections)]
    subprocess.run([*base, "-z", f"{ghz.warmup}s", target], capture_output=True, check=False)
    token_before = tree_cpu_seconds(mesh.token_pid)
    envoy_before = tree_cpu_seconds(mesh.envoy_pid)
    done = subprocess.run(
        [*base, "-z", f"{ghz.seconds}s", "--format", "json", target], capture_output=True
    )
    token_used = tree_cpu_seconds(mesh.token_pid) - token_before
    envoy_used = tree_cpu_seconds(mesh.envoy_pid) - envoy_before
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"bench-edge: ghz failed against {target}: {done.stderr.decode()[-1000:]}")
    report = json.loads(done.stdout)
    count = int(report["count"])
    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
    if not report.get("latencyDistribution"):
        raise SystemExit(f"bench-edge: no answers from {target}: {report.get('errorDistribution')}")
    latency = {x["percentage"]: x["latency"] / 1e6 for x in report["latencyDistribution"]}
    return Load(
        float(report["rps"]),
        latency.get(50, 0.0),
        latency.get(99, 0.0),
        count,
        count - ok,
        token_used / max(count, 1) * 1e6,
        envoy_used / max(count, 1) * 1e6,
    )


_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_load(wrk: str, mesh: Mesh, args: argparse.Namespace, work: Path) -> Load:
    body = json.dumps({"userId": mesh.user, "provider": "openai", "tokens": 1, "prompt": "hi"})
    script = work / "consume.lua"
    script.write_text(WRK_SCRIPT.format(body=body, jwt=mesh.jwt))
    url = f"http://{mesh.envoy}{CONSUME_PATH}"
    base = [wrk, "-t", str(args.wrk_threads), "-c", str(args.c), "-s", str(script), "--latency"]
    base += ["--timeout", "20s"]  # ghz's default; wrk's 2 s would resend calls still running
    subprocess.run([*base, "-d", "3s", url], capture_output=True, check=False)  # warm-up
    token_before = tree_cpu_seconds(mesh.token_pid)
    envoy_before = tree_cpu_seconds(mesh.envoy_pid)
    done = subprocess.run([*base, "-d", f"{args.z}s", url], capture_output=True, text=True)
    token_used = tree_cpu_seconds(mesh.token_pid) - token_before
    envoy_used = tree_cpu_seconds(mesh.envoy_pid) - envoy_before
    text = done.stdout
    found = re.search(r"(\d+) requests in", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done.returncode != 0 or found is None or rate is None:
        raise SystemExit(f"bench-edge: wrk failed: {text[-1000:]} {done.stderr[-500:]}")
    count = int(found.group(1))
    latency = {int(p): float(v) * _SCALE[u] for p, v, u in _LATENCY.findall(text)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    return Load(
        float(rate.group(1)),
        latency.get(50, 0.0),
        latency.get(99, 0.0),
        count,
        errors,
        token_used / max(count, 1) * 1e6,
        envoy_used / max(count, 1) * 1e6,
    )


PATHS = ("grpc direct", "http/json via envoy", "grpc via envoy")


def _measure(
    mesh: Mesh, ghz: Ghz, wrk: str, args: argparse.Namespace, work: Path, mode: str
) -> tuple[str, dict[str, Load]]:
    runs: dict[str, list[Load]] = {p: [] for p in PATHS}
    for n in range(args.runs):
        order = PATHS[n % 3 :] + PATHS[: n % 3]  # no path always first
        for path in order:
            if path == "grpc direct":
                load = _ghz_load(ghz, mesh.token, mesh)
            elif path == "grpc via envoy":
                load = _ghz_load(ghz, mesh.envoy, mesh)
            else:
                load = _wrk_load(wrk, mesh, args, work)
            runs[path].append(load)
            print(f"edge limits {mode}, run {n + 1}, {path}: {load}", flush=True)
    medians = {
        path: Load(*(statistics.median(getattr(x, f) for x in loads) for f in Load.__annotations__))
        for path, loads in runs.items()
    }
    return mode, medians


def _report(
    args: argparse.Namespace, sections: list[tuple[str, dict[str, Load]]], before: str, after: str
) -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, commit {commit}",
        f"- machine: {os.cpu_count()} x {cpu.group(1) if cpu else platform.processor()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- load average before / after: {before} / {after}",
        f"- command: make bench-edge BENCH_EDGE_ARGS='--runs {args.runs} -c {args.c} "
        f"-z {args.z} --edge-limits {args.edge_limits}"
        + (f" --token-processes {args.token_processes}" if args.token_processes > 1 else "")
        + f"' (medians of {args.runs} runs)",
        "",
        "| edge limits | path | rps | p50 ms | p99 ms | errors | token CPU µs/req "
        "| Envoy CPU µs/req | rps vs direct | p99 vs direct |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, medians in sections:
        direct = medians["grpc direct"]
        for path in PATHS:
            m = medians[path]
            lines.append(
                f"| {mode} | {path} | {m.rps:,.0f} | {m.p50:.1f} | {m.p99:.1f} | {m.errors:.0f} "
                f"| {m.token_us:.0f} | {m.envoy_us:.0f} | {m.rps / max(direct.rps, 1e-9):.2f}x "
                f"| {m.p99 / max(direct.p99, 1e-9):.2f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
