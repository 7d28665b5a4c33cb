"""The floor under Consume's target: a server that does nothing but call a do-nothing upstream.

A measurement script, not a test (ADR 0057). Issue 7 asks Consume for at least 0.4x the
throughput of the harness's do-nothing ceiling (../shared/bench/rls-bench/ceiling.py) in the
same run. Consume makes one gRPC call to the provider stub (its own service, issue 7 §0/§3)
per call it answers. This script measures what that shape costs with no work at all on
either side: `chain` is a grpc.aio server on uvloop whose ShouldRateLimit awaits the same
call to `upstream` (a do-nothing grpc.aio server on uvloop, as the stub is) over one channel
and returns its answer; no JWT, no policy, no Redis, no headers, no event. ghz (from the bench
cache) loads the ceiling and the chain in turn at the same concurrency; rounds interleave.
Whatever the chain reaches is an upper bound for any Consume with a provider call on the same
cores. Needs `make bench` to have run once (ghz, the protoset, the ceiling's stubs).

  python tools/bench_consume_floor.py --rounds 3 -z 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc

# tools/ is also leaky_tokens.assets.tools (a symlink): imported by that name, mypy checks them.
from leaky_tokens.assets.tools.bench import CACHE, RLS_CALL, _ceiling, _rls_schema
from leaky_tokens.assets.tools.bench_call_cost import _answer
from leaky_tokens.assets.tools.bench_procs import (
    Ghz,
    Processes,
    Run,
    cpu_seconds,
    free_port,
    load_average,
)

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "bench"


class _Upstream(rls_pb2_grpc.RateLimitServiceServicer):
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        return _answer(request)  # the ceiling's answer


class _Chain(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, upstream: str) -> None:
        self._channel = grpc.aio.insecure_channel(upstream, options=(("grpc.enable_retries", 0),))
        self._call = rls_pb2_grpc.RateLimitServiceStub(self._channel).ShouldRateLimit

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        return await self._call(request, timeout=2.0)


async def _serve(kind: str, port: int, upstream: str) -> None:
    server = grpc.aio.server()
    servicer = _Chain(upstream) if kind == "chain" else _Upstream()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    """Start the upstream, the chain and the ceiling; interleave ghz rounds; print medians."""
    args = _options()
    if args.serve:
        import uvloop  # the token service's loop; measured here, not imported by the service

        uvloop.run(_serve(args.serve, args.port, args.upstream))
        return
    ghz = Ghz(CACHE / "bin" / "ghz", args.c, args.z)
    logs = Path(tempfile.mkdtemp(prefix="consume-floor-"))
    procs = Processes(logs)
    load_before = load_average()
    try:
        me = [sys.executable, __file__, "--serve"]
        up_port, chain_port = free_port(), free_port()
        up_pid = procs.start("upstream", [*me, "upstream", "--port", str(up_port)], {}, up_port)
        upstream = f"127.0.0.1:{up_port}"
        chain_argv = [*me, "chain", "--port", str(chain_port), "--upstream", upstream]
        chain_pid = procs.start("chain", chain_argv, {}, chain_port)
        ceiling_pid, ceiling = _ceiling(procs, HARNESS)
        hot = ["-D", str(HARNESS / "rls-bench" / "req-hot.json")]
        runs: dict[str, list[Run]] = {"ceiling": [], "chain": [], "upstream": []}
        for n in range(args.rounds):
            order = ["ceiling", "chain"] if n % 2 == 0 else ["chain", "ceiling"]
            for name in order:
                if name == "ceiling":
                    runs[name].append(ghz.run(ceiling, RLS_CALL, _rls_schema(), hot, ceiling_pid))
                    continue
                before = cpu_seconds(up_pid)
                run = ghz.run(f"127.0.0.1:{chain_port}", RLS_CALL, _rls_schema(), hot, chain_pid)
                runs["chain"].append(run)
                upstream_us = (cpu_seconds(up_pid) - before) / max(run.count, 1) * 1e6
                runs["upstream"].append(Run(0, 0, 0, run.count, 0, upstream_us, ""))
                print(f"round {n + 1}: chain {run}; upstream {upstream_us:.0f} µs/call", flush=True)
            print(f"round {n + 1}: ceiling {runs['ceiling'][-1]}", flush=True)
    finally:
        procs.stop_all()
    _report(args, runs, load_before)


def _report(args: argparse.Namespace, runs: dict[str, list[Run]], load_before: str) -> None:
    def median(name: str, attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in runs[name]))

    print(f"# c={args.c} -z {args.z}s rounds={args.rounds} load {load_before} -> {load_average()}")
    for name in ("ceiling", "chain"):
        print(
            f"{name:8s} rps {median(name, 'rps'):7.0f}  p99 {median(name, 'p99'):6.1f} ms  "
            f"server CPU {median(name, 'cpu_us'):5.0f} µs/call  "
            f"(rps runs: {', '.join(f'{r.rps:.0f}' for r in runs[name])})"
        )
    print(f"upstream server CPU {median('upstream', 'cpu_us'):5.0f} µs per chained call")
    rps = median("chain", "rps") / median("ceiling", "rps")
    p99 = median("chain", "p99") / median("ceiling", "p99")
    print(f"chain/ceiling: rps {rps:.2f}, p99 {p99:.2f} (Consume's target: >= 0.4, <= 2.0)")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-c", type=int, default=50, help="ghz concurrency")
    parser.add_argument("-z", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--serve", choices=("chain", "upstream"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
