"""`make bench-edge`: Consume over HTTP/JSON through Envoy against direct gRPC (issue 10 §4).

A benchmark, not a test (docs/benchmarks.md, ADR 0042). It starts, on free loopback ports, the
same services as `make bench`'s Consume phase (its own redis-server, auth, the provider stub
at zero latency, the token service on Redis with limits far beyond reach) and an Envoy
rendered by the project's own config function in front of them, then loads Consume at one
concurrency three ways, interleaved run by run:

- gRPC straight to the token service (ghz, as `make bench`): the denominator;
- HTTP/JSON through Envoy (wrk, POST /api/v1/tokens/consume): what the issue's ratio is about;
- native gRPC through Envoy (ghz), for the cost of the hop alone.

Envoy runs with the edge rate limits on (every request also asks ShouldRateLimit, as
deployed) or off (`--edge-limits off`), or both in turn (`both`). With limits on, the RLS is
the `ratelimit` deployment, a token-service process serving ShouldRateLimit alone on the same
Redis (`--rls own`, ADR 0047), or the token process itself (`--rls token`, ADR 0042's layout),
or both in turn. It prints rps, p50, p99, errors, CPU per request of the token service, of
the ratelimit deployment and of Envoy, and the ratios, and writes a markdown fragment.
`--envoy-ladder` then measures Envoy's own CPU per HTTP/JSON request with its filters taken
away one by one (ADR 0047). Every process it starts it stops by PID.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from leaky_tokens.gateway import edge_auth, edge_limits, request_checks
from leaky_tokens.gateway.edge_settings import GatewaySettings
from leaky_tokens.gateway.envoy_config import Upstream, dump, render
from leaky_tokens.loopback import envoy_binary
from leaky_tokens.topology import RATELIMIT, SERVICES

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
    rls_pid: int = 0  # the ratelimit deployment (0: none started; the token process answers)
    upstreams: tuple[Upstream, ...] = ()
    work: Path = Path()


# (edge limits, who serves ShouldRateLimit): one section of the report each.
Setup = tuple[str, str]


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
    rls_modes = ["own", "token"] if args.rls == "both" else [args.rls]
    setups: list[Setup] = [(m, r) for m in modes for r in (rls_modes if m == "on" else ["-"])]
    load_before = load_average()
    sections = []
    ladder: list[tuple[str, float, float]] = []
    for mode, rls in setups:
        procs = Processes(work)
        name = f"{mode}-{rls}".strip("-")
        try:
            mesh = _start(procs, work / name, mode == "on", args.token_processes, rls == "own")
            sections.append(_measure(mesh, ghz, wrk, args, work / name, (mode, rls)))
            if args.envoy_ladder and mode == "on" and not ladder:
                ladder = _envoy_ladder(procs, mesh, wrk, args)
        finally:
            procs.stop_all()
    text = _report(args, sections, load_before, load_average(), ladder)
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
        "--rls",
        choices=("own", "token", "both"),
        default="own",
        help="with limits on, ShouldRateLimit from the ratelimit deployment (own, as "
        "deployed) or from the token process itself (token, ADR 0042's layout)",
    )
    parser.add_argument(
        "--envoy-ladder",
        action="store_true",
        help="then Envoy's CPU per HTTP/JSON request with its filters removed one by one",
    )
    parser.add_argument("--ladder-runs", type=int, default=3, help="rounds of the ladder")
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


def _start(procs: Processes, work: Path, edge_limits: bool, processes: int, own_rls: bool) -> Mesh:
    """Redis, auth, provider stub, token service, the ratelimit deployment (with edge limits
    and `own_rls`), then Envoy in front of them."""
    work.mkdir(parents=True)
    py = sys.executable
    redis, auth, provider, token, envoy, admin, rls = (free_port() for _ in range(7))
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
    rls_pid = 0
    if edge_limits and own_rls:
        # As `leaky up` runs it (topology's ratelimit): the token service's settings, one
        # process serving ShouldRateLimit alone on the same Redis and policy (ADR 0047).
        rls_settings = settings | {"SERVE": "rls", "PORT": str(rls), "PROCESSES": "1"}
        rls_settings["METRICS_PORT"] = "0"
        rls_pid = procs.start(
            "ratelimit", [py, "-m", "leaky_tokens.token"], _env("TOKEN", rls_settings), rls
        )
    # Without a deployment of its own the ratelimit cluster is the token process (ADR 0042).
    ports = {"auth": auth, "token": token, "provider": provider, RATELIMIT: token}
    ports[RATELIMIT] = rls if rls_pid else token
    upstreams = tuple(
        Upstream(s.slug, ((("127.0.0.1", ports[s.slug]),) if s.slug in ports else ()))
        for s in SERVICES
    )
    config = render(
        listen=("127.0.0.1", envoy),
        admin=("127.0.0.1", admin),
        upstreams=list(upstreams),
        edge=GatewaySettings(ratelimit=edge_limits),
    )
    envoy_pid = _start_envoy(procs, work, "envoy", config, envoy)
    jwt, user = _register(f"127.0.0.1:{auth}")
    return Mesh(
        f"127.0.0.1:{token}", token_pid, f"127.0.0.1:{envoy}", envoy_pid, jwt, user,
        rls_pid, upstreams, work,
    )  # fmt: skip


def _start_envoy(procs: Processes, work: Path, name: str, config: dict[str, Any], port: int) -> int:
    (work / f"{name}.yaml").write_text(dump(config))
    return procs.start(
        name,
        [envoy_binary(), "-c", str(work / f"{name}.yaml"), "--use-dynamic-base-id", "-l", "warn"],
        {},
        port,
    )


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
    rls_us: float = 0.0  # the ratelimit deployment's CPU per request (0: none started)


class Cpu:
    """CPU seconds of the token process, the ratelimit deployment and Envoy across one run."""

    def __init__(self, mesh: Mesh, envoy_pid: int | None = None) -> None:
        self.pids = (mesh.token_pid, mesh.rls_pid, envoy_pid or mesh.envoy_pid)
        self.before = [tree_cpu_seconds(p) if p else 0.0 for p in self.pids]

    def per_request(self, count: int) -> tuple[float, float, float]:
        """(token, envoy, ratelimit) µs of CPU per request since this was made."""
        used = [
            (tree_cpu_seconds(p) if p else 0.0) - b
            for p, b in zip(self.pids, self.before, strict=True)
        ]
        token, rls, envoy = (u / max(count, 1) * 1e6 for u in used)
        return token, envoy, rls


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
    cpu = Cpu(mesh)
    done = subprocess.run(
        [*base, "-z", f"{ghz.seconds}s", "--format", "json", target], capture_output=True
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"bench-edge: ghz failed against {target}: {done.stderr.decode()[-1000:]}")
    report = json.loads(done.stdout)
    count = int(report["count"])
    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
    if not report.get("latencyDistribution"):
        raise SystemExit(f"bench-edge: no answers from {target}: {report.get('errorDistribution')}")
    latency = {x["percentage"]: x["latency"] / 1e6 for x in report["latencyDistribution"]}
    token_us, envoy_us, rls_us = cpu.per_request(count)
    return Load(
        float(report["rps"]),
        latency.get(50, 0.0),
        latency.get(99, 0.0),
        count,
        count - ok,
        token_us,
        envoy_us,
        rls_us,
    )


_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_load(
    wrk: str,
    mesh: Mesh,
    args: argparse.Namespace,
    work: Path,
    *,
    envoy: tuple[str, int] | None = None,
    seconds: int = 0,
) -> Load:
    """wrk POSTing Consume to Envoy (`envoy`: another one's address and PID)."""
    body = json.dumps({"userId": mesh.user, "provider": "openai", "tokens": 1, "prompt": "hi"})
    script = work / "consume.lua"
    script.write_text(WRK_SCRIPT.format(body=body, jwt=mesh.jwt))
    address, pid = envoy or (mesh.envoy, mesh.envoy_pid)
    url = f"http://{address}{CONSUME_PATH}"
    base = [wrk, "-t", str(args.wrk_threads), "-c", str(args.c), "-s", str(script), "--latency"]
    base += ["--timeout", "20s"]  # ghz's default; wrk's 2 s would resend calls still running
    subprocess.run([*base, "-d", "3s", url], capture_output=True, check=False)  # warm-up
    cpu = Cpu(mesh, pid)
    done = subprocess.run(
        [*base, "-d", f"{seconds or args.z}s", url], capture_output=True, text=True
    )
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
    token_us, envoy_us, rls_us = cpu.per_request(count)
    return Load(
        float(rate.group(1)),
        latency.get(50, 0.0),
        latency.get(99, 0.0),
        count,
        errors,
        token_us,
        envoy_us,
        rls_us,
    )


def _without(*names: str) -> Callable[[dict[str, Any]], None]:
    """A config edit removing the named HTTP filters."""

    def edit(hcm: dict[str, Any]) -> None:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in names]

    return edit


def _no_rate_limits(hcm: dict[str, Any]) -> None:
    _without(edge_limits.RATELIMIT_FILTER, edge_limits.HEADERS_FILTER)(hcm)
    for host in hcm["route_config"]["virtual_hosts"]:
        host.pop("rate_limits", None)


def _no_access_log(hcm: dict[str, Any]) -> None:
    hcm.pop("access_log", None)


# Each step takes one more thing away from the limits-on config (cumulative): the difference
# between two steps' Envoy CPU per request is what the removed part costs.
LADDER: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
    ("everything (limits on, as deployed)", lambda hcm: None),
    ("- ratelimit filter and its header Lua", _no_rate_limits),
    ("- jwt_authn", _without(edge_auth.JWT_AUTHN_FILTER)),
    ("- ext_authz (runs on API-key calls only)", _without(edge_auth.EXT_AUTHZ_FILTER)),
    (
        "- the Lua filters (request checks, identity, query check)",
        _without(request_checks.LUA_FILTER, edge_auth.IDENTITY_FILTER, "leaky.query_check"),
    ),
    ("- the buffer (body size) filter", _without("envoy.filters.http.buffer")),
    ("- the access log (left: HCM, transcoder, router)", _no_access_log),
)


def _envoy_ladder(
    procs: Processes, mesh: Mesh, wrk: str, args: argparse.Namespace
) -> list[tuple[str, float, float]]:
    """Envoy's CPU per HTTP/JSON Consume for each LADDER step: one Envoy per step, all
    started at once on ports of their own, measured in interleaved rounds; (step, median
    µs per request, median rps)."""
    envoys: list[tuple[str, int]] = []
    for index in range(len(LADDER)):
        port, admin = free_port(), free_port()
        config = render(
            listen=("127.0.0.1", port),
            admin=("127.0.0.1", admin),
            upstreams=list(mesh.upstreams),
            edge=GatewaySettings(ratelimit=True),
        )
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        for _, earlier in LADDER[: index + 1]:
            earlier(hcm["typed_config"])
        pid = _start_envoy(procs, mesh.work, f"envoy-ladder-{index}", config, port)
        envoys.append((f"127.0.0.1:{port}", pid))
    runs: list[list[Load]] = [[] for _ in LADDER]
    for n in range(args.ladder_runs):
        for index in (*range(n % len(LADDER), len(LADDER)), *range(n % len(LADDER))):
            load = _wrk_load(wrk, mesh, args, mesh.work, envoy=envoys[index], seconds=10)
            runs[index].append(load)
            print(f"ladder run {n + 1}, {LADDER[index][0]}: {load}", flush=True)
    return [
        (
            name,
            statistics.median(x.envoy_us for x in loads),
            statistics.median(x.rps for x in loads),
        )
        for (name, _), loads in zip(LADDER, runs, strict=True)
    ]


PATHS = ("grpc direct", "http/json via envoy", "grpc via envoy")


def _measure(
    mesh: Mesh, ghz: Ghz, wrk: str, args: argparse.Namespace, work: Path, mode: Setup
) -> tuple[Setup, dict[str, Load]]:
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
    args: argparse.Namespace,
    sections: list[tuple[Setup, dict[str, Load]]],
    before: str,
    after: str,
    ladder: list[tuple[str, float, float]],
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
        f"-z {args.z} --edge-limits {args.edge_limits} --rls {args.rls}"
        + (f" --token-processes {args.token_processes}" if args.token_processes > 1 else "")
        + (f" --envoy-ladder --ladder-runs {args.ladder_runs}" if args.envoy_ladder else "")
        + f"' (medians of {args.runs} runs)",
        "",
        "| edge limits | RLS | path | rps | p50 ms | p99 ms | errors | token CPU µs/req "
        "| ratelimit CPU µs/req | Envoy CPU µs/req | rps vs direct | p99 vs direct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (mode, rls), medians in sections:
        direct = medians["grpc direct"]
        for path in PATHS:
            m = medians[path]
            rls_us = f"{m.rls_us:.0f}" if rls == "own" else "-"
            lines.append(
                f"| {mode} | {rls} | {path} | {m.rps:,.0f} | {m.p50:.1f} | {m.p99:.1f} "
                f"| {m.errors:.0f} | {m.token_us:.0f} | {rls_us} | {m.envoy_us:.0f} "
                f"| {m.rps / max(direct.rps, 1e-9):.2f}x | {m.p99 / max(direct.p99, 1e-9):.2f}x |"
            )
    if ladder:
        lines += [
            "",
            f"Envoy's own CPU per HTTP/JSON Consume, filters removed one by one (wrk -c {args.c},"
            f" 10 s, medians of {args.ladder_runs} interleaved rounds):",
            "",
            "| config | Envoy CPU µs/req | step's cost µs/req | rps |",
            "|---|---|---|---|",
        ]
        for index, (name, us, rps) in enumerate(ladder):
            step = f"{ladder[index - 1][1] - us:.0f}" if index else "-"
            lines.append(f"| {name} | {us:.0f} | {step} | {rps:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
