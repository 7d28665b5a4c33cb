"""CPU per call of the gRPC layer alone: the bare grpc.aio server beside ours on a trivial servicer.

A micro-benchmark, not a test (ADR 0027): no Envoy, no Redis. Each server kind runs in its own
process answering ShouldRateLimit the way ../shared/bench/rls-bench/ceiling.py does (OK for
every descriptor, no work); a load generator in another process (ghz from the bench cache, or
a Python grpc.aio client when ghz is missing) sends N calls at fixed concurrency, and the
figure is the server's utime+stime (/proc/<pid>/stat) over those calls divided by N. Rounds
interleave the kinds, so a busy neighbour weighs on all of them alike; medians are reported.

  python tools/bench_call_cost.py --kinds bare,ours,ours-headers --calls 20000 --rounds 5
  git archive <before> services tools | tar -x -C /tmp/before   # then, before/after:
  python tools/bench_call_cost.py --kinds bare,ours --against /tmp/before
  python tools/bench_call_cost.py --kinds bare,ours,ours+uvloop,ours+opt --option NAME=VALUE

ShouldRateLimit's own lane (ADR 0057): `ours-lane` answers fixed bytes on it, `ours-rls` runs
the real servicer there (the harness's config, counters in memory); `+burnN` adds N µs of
Python per call to ours-lane (what a µs of ours costs in the server), `+gcN` sets the
collector's first threshold; BENCH_CALL_KEY=api_key sends the over-limit request.

  BENCH_CALL_KEY=api_key python tools/bench_call_cost.py \
    --kinds bare,ours-lane+uvloop,ours-rls+uvloop,ours-lane+uvloop+burn10 --calls 60000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import grpc

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

# tools/ is also leaky_tokens.assets.tools (a symlink): imported by that name, mypy checks them.
from leaky_tokens.assets.tools.bench_procs import Processes, cpu_seconds, free_port, load_average

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "leaky-bench" / "erl"
CALL = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
METHOD = f"/{CALL}"
# user_id: the harness's allowed rule; api_key (BENCH_CALL_KEY=api_key): its 10 per minute.
KEY = os.environ.get("BENCH_CALL_KEY", "user_id")
REQUEST = {"domain": "leaky", "descriptors": [{"entries": [{"key": KEY, "value": "hot"}]}]}
# What each kind of server is; `ours*` go through runtime/server.py's start_server.
KINDS = {
    "bare": "grpc.aio.server() with the servicer, nothing else (the harness's ceiling)",
    "bare-intercepted": "bare with a pass-through interceptor (grpc.aio's own interceptor cost)",
    "ours": "start_server: our interceptor, health, reflection; a public no-work servicer",
    "ours-headers": "as ours, the servicer adding two response headers (Consume's path)",
    "ours-auth": "as ours, the method protected and called without a token (UNAUTHENTICATED)",
    "ours-lane": "as ours, the method on ShouldRateLimit's own lane (rls_lane), bytes in and out",
    "ours-lane-big": "as ours-lane, answering OVER_LIMIT with a limit and five headers",
    "ours-rls": "as ours-lane, the real ShouldRateLimit (the harness's config, counters in memory)",
}
OK = rls_pb2.RateLimitResponse.OK
HARNESS_CONFIG = (
    Path(__file__).resolve().parent.parent.parent
    / "shared/bench/rls-bench/runtime/ratelimit/config/leaky.yaml"
)


def _answer(request: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
    statuses = [
        rls_pb2.RateLimitResponse.DescriptorStatus(code=OK, limit_remaining=1)
        for _ in request.descriptors
    ]
    return rls_pb2.RateLimitResponse(overall_code=OK, statuses=statuses)


class _Trivial(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, headers: bool) -> None:
        self._headers = headers

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        if self._headers:
            from leaky_tokens.runtime.response_headers import add_response_headers

            add_response_headers({"x-ratelimit-limit": "10", "x-ratelimit-remaining": "9"})
        return _answer(request)


class _PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def _serve(kind: str, port: int, options: list[tuple[str, Any]]) -> None:
    if options:  # measured server options, added to whatever the server sets itself
        real = grpc.aio.server

        def with_options(*args: Any, **kwargs: Any) -> grpc.aio.Server:
            kwargs["options"] = [*kwargs.get("options", ()), *options]
            return real(*args, **kwargs)

        grpc.aio.server = with_options
    servicer = _Trivial(headers=kind == "ours-headers")
    if kind.startswith("bare"):
        chain = [_PassThrough()] if kind == "bare-intercepted" else []
        server = grpc.aio.server(interceptors=chain)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()
        return
    from leaky_tokens.runtime.jwt_verifier import JwtVerifier
    from leaky_tokens.runtime.server import ServerSettings, ServiceSpec, start_server

    def generated(server: grpc.aio.Server) -> None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)

    register = {"ours-lane": _lane_register, "ours-lane-big": _lane_big, "ours-rls": _rls_register}
    register_of = register.get(kind, generated)
    spec = ServiceSpec(
        "bench",
        ("envoy.service.ratelimit.v3.RateLimitService",),
        register_of,
        public_methods=frozenset() if kind == "ours-auth" else frozenset({METHOD}),
    )

    async def no_keys() -> Any:
        raise AssertionError("no token is ever sent")

    verifier = JwtVerifier(no_keys, issuer="bench", audience="bench")
    running = await start_server(spec, ServerSettings(port=port), verifier)
    await running.server.wait_for_termination()


def _rls_register(server: grpc.aio.Server) -> None:
    from leaky_tokens.runtime.system import SystemClock
    from leaky_tokens.token.adapters.settings import TokenStoreSettings
    from leaky_tokens.token.rls_wiring import RlsSettings, build_rls, rls_config_file

    config = HARNESS_CONFIG
    settings = RlsSettings(rls_config=str(config))
    wiring = build_rls(
        settings, TokenStoreSettings(), SystemClock(), config_file=rls_config_file(settings)
    )
    wiring.register(server)


def _lane_big(server: grpc.aio.Server) -> None:
    r = rls_pb2.RateLimitResponse
    status = r.DescriptorStatus(
        code=r.OVER_LIMIT,
        current_limit=r.RateLimit(name="api_key", requests_per_unit=10, unit=r.RateLimit.MINUTE),
        limit_remaining=0,
    )
    status.duration_until_reset.seconds = 41
    headers = [
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "41"),
        ("ratelimit-policy", '"api_key";q=10;w=60'),
        ("ratelimit", '"api_key";r=0;t=41'),
    ]
    response = r(overall_code=r.OVER_LIMIT, statuses=[status])
    for k, v in headers:
        response.response_headers_to_add.add(key=k, value=v)
    _lane_register(server, response.SerializeToString())


def _lane_register(server: grpc.aio.Server, answer_bytes: bytes | None = None) -> None:
    """As RlsWiring.register: the own lane, answering the trivial response's bytes."""
    from leaky_tokens.token.rls_lane import rls_lane

    request = rls_pb2.RateLimitRequest(domain="leaky")
    request.descriptors.add()
    answer_bytes = answer_bytes or _answer(request).SerializeToString()

    burn = float(os.environ.get("BENCH_BURN_US", "0")) / 1e6

    async def answer(data: bytes) -> bytes:
        if burn:  # BENCH_BURN_US: this much Python work per call, to see what it costs
            until = time.perf_counter() + burn
            while time.perf_counter() < until:
                pass
        return answer_bytes

    lane = rls_lane(METHOD, answer, 4 * 1024 * 1024)
    handlers = {"ShouldRateLimit": cast("grpc.RpcMethodHandler[Any, Any]", lane)}
    service = "envoy.service.ratelimit.v3.RateLimitService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def _serve_main(args: argparse.Namespace) -> None:
    options = [_option(o) for o in args.option]
    if os.environ.get("BENCH_GC0"):
        import gc

        gc.set_threshold(int(os.environ["BENCH_GC0"]), *gc.get_threshold()[1:])
    if args.uvloop:
        uvloop = importlib.import_module("uvloop")  # measured here, not a dependency
        uvloop.run(_serve(args.serve, args.port, options))
    else:
        asyncio.run(_serve(args.serve, args.port, options))


def _option(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    return name, int(value) if value.lstrip("-").isdigit() else value


class _Load:
    """N calls at concurrency c against one address: ghz when cached, else a Python client."""

    def __init__(self, concurrency: int, connections: int) -> None:
        self.c = concurrency
        self.connections = connections
        self.ghz = CACHE / "bin" / "ghz"
        self.protoset = CACHE / "rls.protoset"
        self.use_ghz = self.ghz.exists() and self.protoset.exists()
        self.data = Path(tempfile.mkstemp(prefix="call-cost-", suffix=".json")[1])
        self.data.write_text(json.dumps(REQUEST))

    def run(self, target: str, calls: int) -> int:
        """Send `calls` calls; how many were answered (any status)."""
        if not self.use_ghz:
            return asyncio.run(_python_load(target, calls, self.c))
        done = subprocess.run(
            [
                *(str(self.ghz), "--insecure", "--protoset", str(self.protoset), "--call", CALL),
                *("-D", str(self.data), "-c", str(self.c), "-n", str(calls)),
                *("--connections", str(self.connections), "--format", "json", target),
            ],
            capture_output=True,
            check=False,
        )
        if not done.stdout.strip():
            raise SystemExit(f"ghz failed against {target}: {done.stderr.decode()[-800:]}")
        return int(json.loads(done.stdout)["count"])


async def _python_load(target: str, calls: int, concurrency: int) -> int:
    request = rls_pb2.RateLimitRequest(domain="leaky")
    request.descriptors.add().entries.add(key="user_id", value="hot")
    left = calls

    async def worker(stub: Any) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            with contextlib.suppress(grpc.aio.AioRpcError):  # UNAUTHENTICATED is an answer
                await stub.ShouldRateLimit(request)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        await asyncio.gather(*(worker(stub) for _ in range(concurrency)))
    return calls


def main() -> None:
    """Start one server per kind, interleave measured rounds, print the medians."""
    args = _options()
    if args.serve:
        _serve_main(args)
        return
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = {k.partition("@")[0].split("+")[0] for k in kinds} - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    procs = Processes(Path(tempfile.mkdtemp(prefix="call-cost-")))
    load = _Load(args.c, args.connections)
    started: dict[str, tuple[int, str]] = {}
    trees = dict.fromkeys(kinds, "")
    if args.against:  # the same `ours*` kinds from another checkout, e.g. before a change
        other = str(Path(args.against).resolve() / "services")
        trees |= {f"{k}@against": other for k in kinds if k.startswith("ours")}
        kinds = list(trees)
    load_before = load_average()
    try:
        for kind, tree in trees.items():
            port = free_port()
            serve, *variants = kind.partition("@")[0].split("+")
            argv = [sys.executable, __file__, "--serve", serve, "--port", str(port)]
            if args.uvloop or "uvloop" in variants:
                argv.append("--uvloop")
            if "opt" in variants:  # the --option list applies to +opt kinds only
                argv += [f"--option={o}" for o in args.option]
            env = {"PYTHONPATH": tree} if tree else {}
            gc0 = [v[2:] for v in variants if v.startswith("gc")]
            if gc0:  # KIND+gcN: the collector's first threshold set to N
                env["BENCH_GC0"] = gc0[0]
            burn = [v[4:] for v in variants if v.startswith("burn")]
            if burn:  # KIND+burnN: N µs of Python work per call (ours-lane)
                env["BENCH_BURN_US"] = burn[0]
            started[kind] = (procs.start(kind, argv, env, port), f"127.0.0.1:{port}")
        for _pid, target in started.values():  # warm up: connections, caches, the JIT-less rest
            load.run(target, max(args.calls // 10, 500))
        per_call: dict[str, list[float]] = {k: [] for k in kinds}
        for n in range(args.rounds):
            order = kinds if n % 2 == 0 else kinds[::-1]
            for kind in order:
                pid, target = started[kind]
                before = cpu_seconds(pid)
                answered = load.run(target, args.calls)
                per_call[kind].append((cpu_seconds(pid) - before) / max(answered, 1) * 1e6)
    finally:
        procs.stop_all()
    _report(args, kinds, per_call, load, load_before)


def _report(
    args: argparse.Namespace,
    kinds: list[str],
    per_call: dict[str, list[float]],
    load: _Load,
    load_before: str,
) -> None:
    client = "ghz" if load.use_ghz else "python grpc.aio client"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')} calls={args.calls} c={args.c} "
        f"connections={args.connections} rounds={args.rounds} client={client} "
        f"uvloop={args.uvloop} options={args.option or '-'} "
        f"load {load_before} -> {load_average()}"
    )
    base = statistics.median(per_call["bare"]) if "bare" in per_call else None
    for kind in kinds:
        median = statistics.median(per_call[kind])
        ratio = f" {median / base:.2f}x bare" if base else ""
        runs = ", ".join(f"{v:.0f}" for v in per_call[kind])
        print(f"{kind:22s} {median:7.1f} us/call{ratio}   (runs: {runs})")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default="bare,ours",
        help=f"of: {', '.join(KINDS)}; KIND+uvloop runs on uvloop, KIND+opt with --option",
    )
    parser.add_argument("--calls", type=int, default=20000, help="calls per measured run")
    parser.add_argument("--rounds", type=int, default=5, help="measured runs per kind")
    parser.add_argument("-c", type=int, default=50, help="concurrency")
    parser.add_argument("--connections", type=int, default=1, help="ghz connections")
    parser.add_argument("--uvloop", action="store_true", help="servers run on uvloop")
    parser.add_argument(
        "--against", help="a checkout whose services/ also serves each ours* kind (before/after)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="grpc server option NAME=VALUE (repeat) for the KIND+opt kinds",
    )
    parser.add_argument("--serve", choices=sorted(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
