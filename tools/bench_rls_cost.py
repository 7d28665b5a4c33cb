"""CPU per ShouldRateLimit decision: the real token service (Redis) beside the harness ceiling.

A measurement script, not a test (ADR 0034). It starts its own redis-server, the auth service
and the provider stub (the token service needs them to start), one token service per tree
(this checkout, and with `--against DIR` that checkout's services/ too: before and after in
one run) on the harness's rls config, and ../shared/bench/rls-bench/ceiling.py (plain
asyncio, the do-nothing server `make bench` compares with). ghz (from the bench cache) sends
N calls at c=50 to each in turn, rounds interleaved; the figure per server is its
utime+stime (/proc/<pid>/stat) over the calls ÷ the calls answered, and for the token
services the Redis script calls per decision (INFO commandstats: how well requests batch).
`--profile FILE` records one more load on this checkout's service with py-spy (raw format,
`--native` with C frames; py-spy installed by hand into .venv, not a dependency); profiled
runs are not measured ones. `--against-env K=V` sets the environment of the `--against`
service only: `--against . --against-env LEAKY_TOKEN_RLS_BATCH_INTERVAL_US=0` compares a
setting within one tree.

  python tools/bench_rls_cost.py --calls 20000 --rounds 3 --req hot
  git archive <before> services | tar -x -C /tmp/before   # then, before/after:
  python tools/bench_rls_cost.py --against /tmp/before --profile /tmp/spy.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

# tools/ is also leaky_tokens.assets.tools (a symlink): imported by that name, mypy checks them.
from leaky_tokens.assets.tools.bench import _NO_DISK, CACHE, POLICY, RLS_CALL, _ceiling, _env
from leaky_tokens.assets.tools.bench_procs import Processes, cpu_seconds, free_port, load_average

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "bench"


def _start(
    procs: Processes, work: Path, trees: dict[str, str], extra: dict[str, dict[str, str]]
) -> tuple[int, dict[str, int]]:
    """Redis, auth, the provider stub and one token service per tree; (redis port, ports)."""
    py = sys.executable
    redis_port, auth, provider = free_port(), free_port(), free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", ""]
    procs.start("redis", [*argv, *_NO_DISK, str(work)], {}, redis_port)
    quiet = {"METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
    (work / "data").mkdir()
    env = _env("AUTH", {**quiet, "PORT": str(auth)}) | {"LEAKY_DATA_DIR": str(work / "data")}
    procs.start("auth", [py, "-m", "leaky_tokens.auth"], env, auth)
    peer = {**quiet, "AUTH_TARGET": f"127.0.0.1:{auth}"}
    env = _env("PROVIDER", {**peer, "PORT": str(provider), "LATENCY_MS": "0"})
    procs.start("provider", [py, "-m", "leaky_tokens.provider"], env, provider)
    (work / "policy.yaml").write_text(POLICY)
    ports = {}
    for name, tree in trees.items():
        port = free_port()
        settings = {
            **peer,
            "PORT": str(port),
            "STORE_BACKEND": "redis",
            "STORE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "RLS_CONFIG": str(HARNESS / "rls-bench/runtime/ratelimit/config/leaky.yaml"),
            "POLICY_FILE": str(work / "policy.yaml"),
            "PROVIDER_TARGET": f"127.0.0.1:{provider}",
        }
        env = _env("TOKEN", settings) | ({"PYTHONPATH": tree} if tree else {})
        env |= extra.get(name, {})
        procs.start(name, [py, "-m", "leaky_tokens.token"], env, port)
        ports[name] = port
    return redis_port, ports


def _ghz(target: str, calls: int, data: Path, c: int) -> tuple[int, float, float, dict[str, int]]:
    """`calls` calls at concurrency `c`; (answered, rps, p99 in ms, status codes)."""
    done = subprocess.run(
        [
            *(str(CACHE / "bin" / "ghz"), "--insecure", "--protoset", str(CACHE / "rls.protoset")),
            *("--call", RLS_CALL, "-D", str(data), "-c", str(c), "-n", str(calls)),
            *("--format", "json", target),
        ],
        capture_output=True,
        check=False,
    )
    if not done.stdout.strip():
        raise SystemExit(f"ghz failed against {target}: {done.stderr.decode()[-800:]}")
    out = json.loads(done.stdout)
    p99 = next(
        (d["latency"] / 1e6 for d in out.get("latencyDistribution") or () if d["percentage"] == 99),
        0.0,
    )
    return int(out["count"]), float(out["rps"]), p99, out.get("statusCodeDistribution") or {}


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def main() -> None:
    """Start everything, interleave measured rounds, print each server's figures."""
    args = _options()
    trees = {"ours": ""}
    if args.against:
        trees["against"] = str(Path(args.against).resolve() / "services")
    data = HARNESS / "rls-bench" / f"req-{args.req}.json"
    procs = Processes(Path(tempfile.mkdtemp(prefix="rls-cost-")))
    load_before = load_average()
    cpu: dict[str, list[float]] = {}
    rps: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    batch: dict[str, list[float]] = {}
    codes: dict[str, dict[str, int]] = {}
    try:
        extra = {"against": dict(kv.split("=", 1) for kv in args.against_env)}
        redis_port, ports = _start(procs, procs.logs, trees, extra)
        pids = {name: proc.pid for name, proc in procs.started if name in trees}
        pids["ceiling"], ceiling = _ceiling(procs, HARNESS)
        targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        targets["ceiling"] = ceiling
        client = redis.Redis(port=redis_port)
        for target in targets.values():  # warm up: connections, plan caches, the script
            _ghz(target, max(args.calls // 10, 500), data, args.c)
        if args.profile:
            _profile(args, pids["ours"], targets["ours"], data)
        names = list(targets)
        for n in range(args.rounds):
            for name in names if n % 2 == 0 else names[::-1]:
                before, scripts = cpu_seconds(pids[name]), _script_calls(client)
                answered, rate, tail, seen = _ghz(targets[name], args.calls, data, args.c)
                used = cpu_seconds(pids[name]) - before
                cpu.setdefault(name, []).append(used / max(answered, 1) * 1e6)
                rps.setdefault(name, []).append(rate)
                p99.setdefault(name, []).append(tail)
                if name != "ceiling":
                    calls = _script_calls(client) - scripts
                    batch.setdefault(name, []).append(answered / max(calls, 1))
                for code, count in seen.items():
                    codes.setdefault(name, {}).setdefault(code, 0)
                    codes[name][code] += count
        client.close()
    finally:
        procs.stop_all()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')} req={args.req} calls={args.calls} c={args.c} "
        f"rounds={args.rounds} load {load_before} -> {load_average()}"
    )
    base = statistics.median(cpu["ceiling"])
    for name in cpu:
        median = statistics.median(cpu[name])
        runs = ", ".join(f"{v:.0f}" for v in cpu[name])
        per = (
            f" decisions/script call {statistics.median(batch[name]):.1f}" if name in batch else ""
        )
        print(
            f"{name:8s} {median:6.0f} us/decision {median / base:.2f}x ceiling  "
            f"rps {statistics.median(rps[name]):5.0f} p99 {statistics.median(p99[name]):5.1f} ms"
            f"{per}  (runs: {runs}) {codes[name]}"
        )


def _profile(args: argparse.Namespace, pid: int, target: str, data: Path) -> None:
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "-p", str(pid), "-o", args.profile, "-f", "raw"]
    argv += ["--native"] if args.native else []
    blocking = [] if args.native else ["--nonblocking"]  # py-spy needs it to unwind C
    recorder = subprocess.Popen([*argv, "-d", "15", "-r", "200", *blocking])
    time.sleep(1)
    _ghz(target, args.calls * 3, data, args.c)
    recorder.wait()


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per server")
    parser.add_argument("-c", type=int, default=50, help="ghz concurrency")
    parser.add_argument("--req", default="hot", choices=("hot", "spread", "over"))
    parser.add_argument("--against", help="a checkout whose services/ is measured too")
    parser.add_argument(
        "--against-env",
        action="append",
        default=[],
        help="K=V in the environment of the --against service only (repeat)",
    )
    parser.add_argument("--profile", help="write a py-spy raw profile of ours here")
    parser.add_argument("--native", action="store_true", help="the profile with C frames")
    return parser.parse_args()


if __name__ == "__main__":
    main()
