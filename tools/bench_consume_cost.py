"""CPU per Consume decision of the token service (real Redis, auth, provider stub), side by side.

A benchmark, not a test (ADR 0035). It starts one auth service, one provider stub at zero
latency, and for every server (this checkout, `--against` another checkout's services/, and
`--variant`s of this checkout with extra LEAKY_TOKEN_* settings) a private redis-server and a
token service, all on free loopback ports; registers a user for a real JWT; then sends N
Consume calls with ghz at fixed concurrency to each server in turn, rounds interleaved so a
busy neighbour weighs on all alike. Per server it prints the median of the token process's
utime+stime (/proc/<pid>/stat) over those calls ÷ N, and its Redis's and the provider's CPU
per call in the same runs. `--profile` records the first server with py-spy (raw) over one
extra run and prints its frames by own and inclusive samples (`--native`: C frames too, which
pauses the process per sample). Every process it starts it stops by PID.

  python tools/bench_consume_cost.py --calls 20000 --rounds 3
  git archive <before> services | tar -x -C /tmp/before   # then, before/after in one run:
  python tools/bench_consume_cost.py --against /tmp/before --variant shards8:STORE_SHARDS=8
  python tools/bench_consume_cost.py --against a=/tmp/a --against b=/tmp/b   # several trees
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# tools/ is also leaky_tokens.assets.tools (a symlink): imported by that name, mypy checks them.
from leaky_tokens.assets.tools import bench
from leaky_tokens.assets.tools.bench_procs import Processes, cpu_seconds, free_port, load_average
from leaky_tokens.assets.tools.bench_report import profile

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Server:
    name: str
    token_pid: int
    redis_pid: int
    target: str


def main() -> None:
    """Start the servers, interleave measured rounds, print the medians."""
    args = _options()
    ghz = bench.CACHE / "bin" / "ghz"
    if not ghz.exists():
        raise SystemExit(f"no ghz at {ghz}: run tools/bench.py once (it builds it)")
    work = Path(tempfile.mkdtemp(prefix="consume-cost-"))
    procs = Processes(work)
    load_before = load_average()
    servers: list[_Server] = []
    try:
        auth, provider, provider_pid = _peers(procs, work)
        (work / "policy.yaml").write_text(bench.POLICY)
        trees: list[tuple[str, str, dict[str, str]]] = [("ours", "", {})]
        for spec in args.against:
            # NAME=DIR names the server; a bare DIR is "against" (once) or the folder's name.
            name, _, tree = spec.rpartition("=") if "=" in spec else ("", "", spec)
            name = name or ("against" if len(args.against) == 1 else Path(tree).name)
            trees.append((name, str(Path(tree).resolve() / "services"), {}))
        for spec in args.variant:
            name, _, settings = spec.partition(":")
            pairs = dict(p.split("=", 1) for p in settings.split(",") if "=" in p)
            trees.append((name, "", pairs))
        for name, tree, extra in trees:
            servers.append(_token(procs, work, name, tree, extra, auth, provider))
        jwt, user = bench._register(auth)
        schema, data = bench._consume_args(jwt, user)
        base = [str(ghz), "--insecure", *schema, "--call", bench.CONSUME_CALL, *data]
        base += ["-c", str(args.c), "--connections", str(args.connections)]

        def load(target: str, calls: int, *, strict: bool = True) -> int:
            done = subprocess.run(
                [*base, "-n", str(calls), "--format", "json", target],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0 or not done.stdout.strip():
                raise SystemExit(f"ghz failed against {target}: {done.stderr.decode()[-800:]}")
            report = json.loads(done.stdout)
            ok = int(report.get("statusCodeDistribution", {}).get("OK", 0))
            if strict and ok != int(report["count"]):
                raise SystemExit(
                    f"{target}: not every call was OK: {report.get('errorDistribution')}"
                )
            return ok

        for s in servers:  # warm up: connections, JWKS, scripts, caches
            load(s.target, max(args.calls // 10, 500))
        if args.profile:
            _profile(
                servers[0],
                lambda: load(servers[0].target, args.calls, strict=False),
                work,
                native=args.native,
            )
        figures: dict[str, dict[str, list[float]]] = {
            s.name: {"token": [], "redis": [], "provider": []} for s in servers
        }
        for n in range(args.rounds):
            for s in servers if n % 2 == 0 else servers[::-1]:
                pids = {"token": s.token_pid, "redis": s.redis_pid, "provider": provider_pid}
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                answered = load(s.target, args.calls)
                for k, p in pids.items():
                    figures[s.name][k].append((cpu_seconds(p) - before[k]) / answered * 1e6)
    finally:
        procs.stop_all()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')} Consume calls={args.calls} c={args.c} "
        f"connections={args.connections} rounds={args.rounds} "
        f"load {load_before} -> {load_average()}"
    )
    for s in servers:
        f = figures[s.name]
        runs = ", ".join(f"{v:.0f}" for v in f["token"])
        print(
            f"{s.name:14s} token {statistics.median(f['token']):7.1f} us/call "
            f"(runs: {runs})  redis {statistics.median(f['redis']):5.1f}  "
            f"provider {statistics.median(f['provider']):5.1f}"
        )


def _peers(procs: Processes, work: Path) -> tuple[str, str, int]:
    """The auth service and the provider stub at zero latency: their addresses, its pid."""
    py = sys.executable
    auth, provider = free_port(), free_port()
    quiet = {"METRICS_PORT": "0", "LOG_LEVEL": "WARNING"}
    (work / "data").mkdir()
    procs.start(
        "auth",
        [py, "-m", "leaky_tokens.auth"],
        bench._env("AUTH", {**quiet, "PORT": str(auth)}) | {"LEAKY_DATA_DIR": str(work / "data")},
        auth,
    )
    peer = {**quiet, "AUTH_TARGET": f"127.0.0.1:{auth}"}
    pid = procs.start(
        "provider",
        [py, "-m", "leaky_tokens.provider"],
        bench._env("PROVIDER", {**peer, "PORT": str(provider), "LATENCY_MS": "0"}),
        provider,
    )
    return f"127.0.0.1:{auth}", f"127.0.0.1:{provider}", pid


def _token(
    procs: Processes,
    work: Path,
    name: str,
    tree: str,
    extra: dict[str, str],
    auth: str,
    provider: str,
) -> _Server:
    """A private redis-server and a token service (from `tree` when given) using it."""
    redis, port = free_port(), free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(redis), "--save", ""]
    redis_pid = procs.start(
        f"redis-{name}", [*argv, "--appendonly", "no", "--dir", str(work)], {}, redis
    )
    settings = {
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "AUTH_TARGET": auth,
        "PORT": str(port),
        "STORE_BACKEND": "redis",
        "STORE_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
        "POLICY_FILE": str(work / "policy.yaml"),
        "PROVIDER_TARGET": provider,
        # A shared box stalls a process now and then; a timed-out call would fail the run.
        "STORE_TIMEOUT_MS": "2000",
    } | extra
    env = bench._env("TOKEN", settings) | ({"PYTHONPATH": tree} if tree else {})
    pid = procs.start(f"token-{name}", [sys.executable, "-m", "leaky_tokens.token"], env, port)
    return _Server(name, pid, redis_pid, f"127.0.0.1:{port}")


def _profile(server: _Server, run: object, work: Path, *, native: bool = False) -> None:
    """py-spy (from this venv) on `server` over one run; the frames by own and inclusive."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy in {spy.parent} (pip install py-spy)")
    raw = work / "profile.txt"
    argv = [str(spy), "record", "--pid", str(server.token_pid), "--format", "raw", "-o", str(raw)]
    # --nonblocking: a paused process misses its store timeouts; --native cannot go without
    # pausing it (py-spy), so it samples less often.
    argv += ["--rate", "100", "--native"] if native else ["--rate", "200", "--nonblocking"]
    spying = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    time.sleep(1)
    assert callable(run)
    run()
    spying.send_signal(2)  # SIGINT: py-spy writes what it recorded
    spying.wait()
    print(f"profile of {server.name}: {raw}\n{profile(raw, 25)}")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per server")
    parser.add_argument("-c", type=int, default=50, help="ghz concurrency")
    parser.add_argument("--connections", type=int, default=1, help="ghz connections")
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        help="[NAME=]DIR: another checkout whose services/ also serves (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE]: this checkout again with LEAKY_TOKEN_KEY=VALUE",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the first server")
    parser.add_argument(
        "--native", action="store_true", help="with --profile: C frames too (py-spy --native)"
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
