"""`make bench`: ShouldRateLimit beside envoyproxy/ratelimit and the ceiling, and Consume (ghz).

A benchmark, not a test (issue 7 section 6, docs/benchmarks.md). It starts its own Redis, the
auth service, the provider stub (zero latency) and the token service on free loopback ports,
runs ../shared/bench/rls-bench.sh --also <token> --ceiling, measures our CPU per decision with
ghz, then Consume against the do-nothing ceiling in the same run, and writes a markdown
fragment. Every process it starts it stops by PID.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc

# tools/ is also leaky_tokens.assets.tools (a symlink): imported by that name, mypy checks them.
from leaky_tokens.assets.tools.bench_procs import (
    Ghz,
    Processes,
    Run,
    free_port,
    free_ports,
    load_average,
)
from leaky_tokens.assets.tools.bench_report import TARGETS, Report, profile

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "leaky-bench" / "erl"
RLS_CALL = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
CONSUME_CALL = "leaky.token.v1.TokenService/Consume"
_NO_DISK = ("--appendonly", "no", "--dir")
# Limits far above what this box can reach, so Consume measures the allowed path: bucket and
# daily quota debited in one Redis step, then the provider call.
POLICY = """\
providers:
  openai: {capacity: 9000000000, leak_rate: 1000000000}
tiers:
  USER: {priority: 10, capacity_multiplier: 1, rate_multiplier: 1, quota_tokens: 9000000000}
default_tier: USER
quota: {window: daily, timezone: UTC}
"""


def main() -> None:
    """Parse options, run the phases, write the report; stop everything started."""
    args = _options()
    harness = Path(args.harness).resolve()
    if not (CACHE / "bin" / "ghz").exists() or not (CACHE / "rls.protoset").exists():
        _run([str(harness / "rls-bench.sh"), "--build-only"])  # needs ERL_SRC on first run
    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="leaky-bench-"))
    procs = Processes(work)
    report = Report(_machine(args), load_average())
    ghz = Ghz(CACHE / "bin" / "ghz", args.c, args.z, connections=args.connections)
    try:
        token_pid, token, jwt, user = _start_services(procs, work, harness, args.processes)
        if "rls" in args.phases:
            report.harness = _harness(harness, token, args)
            for scenario in ("hot", "spread", "over"):
                data = ["-D", str(harness / "rls-bench" / f"req-{scenario}.json")]
                report.ours_rls[scenario] = ghz.run(token, RLS_CALL, _rls_schema(), data, token_pid)
                print(f"ours (cpu pass) {scenario}: {report.ours_rls[scenario]}", flush=True)
        if "consume" in args.phases:
            _consume(procs, ghz, harness, token, token_pid, jwt, user, args.runs, report)
        if args.profile:
            report.profiles = _profiles(args, ghz, harness, token, token_pid, jwt, user, work)
    finally:
        procs.stop_all()
    report.load_after = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown())
    print(report.markdown())
    print(f"written to {out}; logs in {work}")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", default=str(ROOT.parent / "shared" / "bench"))
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and target")
    parser.add_argument("-c", type=int, default=50, help="ghz concurrency")
    parser.add_argument("-z", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--phases", default="rls,consume", help="rls, consume or both")
    parser.add_argument("--profile", action="store_true", help="py-spy the token service too")
    parser.add_argument(
        "--processes", type=int, default=1, help="token service processes sharing its port"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="ghz connections (each lands on one process: use several with --processes)",
    )
    parser.add_argument("--out", default=str(ROOT / ".leaky" / "bench" / "latest.md"))
    return parser.parse_args()


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command, echoing its output as it comes; its output."""
    lines: list[str] = []
    with subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} exited with {proc.returncode}")
    return "".join(lines)


def _start_services(
    procs: Processes, work: Path, harness: Path, processes: int
) -> tuple[int, str, str, str]:
    """Redis, auth, provider stub and token service; (token pid, address, JWT, user id).

    With several token processes the pid is their supervisor's (CPU is summed over its
    workers); each worker's /metrics port, opened once it serves, tells that all are up.
    """
    py = sys.executable
    redis, auth, provider, token = (free_port() for _ in range(4))
    procs.start(
        "redis",
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis),
            "--save",
            "",
            *_NO_DISK,
            str(work),
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
        "RLS_CONFIG": str(harness / "rls-bench/runtime/ratelimit/config/leaky.yaml"),
        "POLICY_FILE": str(work / "policy.yaml"),
        "PROVIDER_TARGET": f"127.0.0.1:{provider}",
    }
    metrics = free_ports(processes) if processes > 1 else 0
    settings |= {"PROCESSES": str(processes), "METRICS_PORT": str(metrics)}
    pid = procs.start("token", [py, "-m", "leaky_tokens.token"], _env("TOKEN", settings), token)
    for index in range(processes if metrics else 0):
        procs.await_port("token", procs.started[-1][1], metrics + index)
    jwt, user = _register(f"127.0.0.1:{auth}")
    return pid, f"127.0.0.1:{token}", jwt, user


def _env(service: str, values: dict[str, str]) -> dict[str, str]:
    return {f"LEAKY_{service}_{k}": v for k, v in values.items()}


def _register(auth: str) -> tuple[str, str]:
    """Register a bench user through the auth service; its access token and user id."""
    with grpc.insecure_channel(auth) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        name = f"bench{os.getpid()}"
        answer = stub.Register(
            auth_pb2.RegisterRequest(
                username=name,
                email=f"{name}@bench.invalid",
                password=f"bench-{os.urandom(8).hex()}",  # a throwaway user in a temp database
            ),
            timeout=30,
        )
    return answer.token, answer.user_id


def _rls_schema() -> list[str]:
    return ["--protoset", str(CACHE / "rls.protoset")]


def _consume_args(jwt: str, user: str) -> tuple[list[str], list[str]]:
    schema = ["--protoset", str(ROOT / "envoy" / "leaky.pb")]
    data = ["-d", f'{{"user_id":"{user}","provider":"openai","tokens":1,"prompt":"hi"}}']
    return schema, [*data, "--metadata", f'{{"authorization":"Bearer {jwt}"}}']


def _harness(harness: Path, token: str, args: argparse.Namespace) -> str:
    """rls-bench.sh with our token service (--also) and the ceiling, on free ports."""
    ports = ("REDIS", "GRPC", "HTTP", "DEBUG", "CEILING")
    env = {f"RLSB_{p}_PORT": str(free_port()) for p in ports} | {"PYTHON": sys.executable}
    argv = [str(harness / "rls-bench.sh"), "--also", token, "--ceiling"]
    argv += ["--runs", str(args.runs), "-c", str(args.c), "-z", f"{args.z}s"]
    if args.connections > 1:
        argv += ["--ghz-args", f"--connections {args.connections}"]
    return _run(argv, env)


def _ceiling(procs: Processes, harness: Path) -> tuple[int, str]:
    """The harness's do-nothing Python server (its stubs built by the harness's first run)."""
    stubs = CACHE / "pystubs"
    if not (stubs / "envoy" / "service" / "ratelimit" / "v3" / "rls_pb2_grpc.py").exists():
        raise SystemExit("bench: no ceiling stubs; run the rls phase once (it builds them)")
    port = free_port()
    pid = procs.start(
        "ceiling",
        [sys.executable, str(harness / "rls-bench" / "ceiling.py"), str(port), "aio"],
        {"PYTHONPATH": str(stubs)},
        port,
    )
    return pid, f"127.0.0.1:{port}"


def _consume(
    procs: Processes,
    ghz: Ghz,
    harness: Path,
    token: str,
    token_pid: int,
    jwt: str,
    user: str,
    runs: int,
    report: Report,
) -> None:
    """Consume on our service and ShouldRateLimit on the ceiling, interleaved run by run."""
    ceiling_pid, ceiling = _ceiling(procs, harness)
    schema, data = _consume_args(jwt, user)
    hot = ["-D", str(harness / "rls-bench" / "req-hot.json")]
    ours: list[Run] = []
    ceil: list[Run] = []
    for n in range(runs):
        order = [0, 1] if n % 2 == 0 else [1, 0]  # neither always goes first
        for which in order:
            if which == 0:
                ours.append(ghz.run(token, CONSUME_CALL, schema, data, token_pid))
                print(f"consume ours run{n + 1}: {ours[-1]}", flush=True)
            else:
                ceil.append(ghz.run(ceiling, RLS_CALL, _rls_schema(), hot, ceiling_pid))
                print(f"consume ceiling run{n + 1}: {ceil[-1]}", flush=True)
    report.consume = Run.median(ours)
    report.consume_ceiling = Run.median(ceil)


def _profiles(
    args: argparse.Namespace,
    ghz: Ghz,
    harness: Path,
    token: str,
    pid: int,
    jwt: str,
    user: str,
    work: Path,
) -> dict[str, str]:
    """py-spy (from this venv) on the token service under ShouldRateLimit hot, then Consume."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"bench: --profile needs py-spy in {spy.parent} (pip install py-spy)")
    schema, data = _consume_args(jwt, user)
    hot = ["-D", str(harness / "rls-bench" / "req-hot.json")]
    loads = {
        "ShouldRateLimit hot": (RLS_CALL, _rls_schema(), hot),
        "Consume": (CONSUME_CALL, schema, data),
    }
    found = {}
    for name, (call, schema_args, data_args) in loads.items():
        slug = re.sub(r"\W+", "-", name)
        raw = work / f"profile-{slug}.txt"
        record = [str(spy), "record", "--pid", str(pid), "--format", "raw", "-o", str(raw)]
        spying = subprocess.Popen([*record, "--duration", str(args.z)], stdout=subprocess.DEVNULL)
        ghz.run(token, call, schema_args, data_args, pid)
        spying.wait()
        found[name] = profile(raw)
    return found


def _machine(args: argparse.Namespace) -> dict[str, str]:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {cpu.group(1) if cpu else platform.processor()}",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "commit": commit,
        "command": f"make bench BENCH_ARGS='--runs {args.runs} -c {args.c} -z {args.z}"
        + (" --profile" if args.profile else "")
        + (f" --processes {args.processes}" if args.processes > 1 else "")
        + (f" --connections {args.connections}" if args.connections > 1 else "")
        + "'",
        "targets": TARGETS,
    }


if __name__ == "__main__":
    main()
