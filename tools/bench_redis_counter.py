"""CPU per RedisRequestCounter.hit (or decide), ours and Redis's, at fixed concurrency (ADR 0028).

Starts a private redis-server on a free port, drives `hit` from `--concurrency` tasks and
prints the process CPU (time.process_time) and Redis's own CPU (INFO cpu) per hit. A script
for comparing client paths on a shared machine, never a test: nothing asserts on its output.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from redis.asyncio import Redis

from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_rate_counter import RedisRequestCounter
from leaky_tokens.token.adapters.settings import TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import redis_client, redis_counter, redis_store
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import DecisionRequest, Subject
from leaky_tokens.token.domain.rate_counter import CounterHit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _redis_cpu(admin: Redis) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _run(port: int, args: argparse.Namespace) -> None:
    settings = TokenStoreSettings(
        store_backend="redis",
        store_redis_url=f"redis://127.0.0.1:{port}/0",
        store_timeout_ms=5000,
    )
    counter: RedisRequestCounter | RedisDecisionStore
    if args.store:
        counter = redis_store(settings)
        if args.redis_py:
            counter._wire = None  # the script calls over redis-py's pipeline instead
    elif args.redis_py:
        counter = RedisRequestCounter(redis_client(settings), settings.store_key_prefix)
    else:
        counter = redis_counter(settings)
    admin = Redis(host="127.0.0.1", port=port)
    hits = [
        CounterHit(f"bench.k{i % args.keys}", 10**12, 60_000, 1, True)
        for i in range(args.descriptors)
    ]
    per_task = args.calls // args.concurrency

    limits = LevelLimits({Level.USER_BUCKET: BucketLimit.tokens(10**9, 10**9)}, {})

    async def one() -> None:
        now = int(time.time() * 1000)
        if isinstance(counter, RedisDecisionStore):
            subject = Subject(f"u{random.randrange(args.keys)}", "bench")  # noqa: S311
            await counter.decide(DecisionRequest(uuid.uuid4().hex, subject, limits, 1, now))
        else:
            await counter.hit(hits, now)

    async def task() -> None:
        for _ in range(per_task):
            await one()

    try:
        await asyncio.gather(*(task() for _ in range(args.concurrency // 5)))  # warm up
        for attempt in range(args.repeat):
            batches = counter.batches_sent
            before_cpu, before_redis = time.process_time(), await _redis_cpu(admin)
            await asyncio.gather(*(task() for _ in range(args.concurrency)))
            used, redis_used = time.process_time() - before_cpu, await _redis_cpu(admin)
            n = per_task * args.concurrency
            print(
                f"run {attempt + 1}: {n} hits, client {used / n * 1e6:.1f} us/hit, "
                f"redis {(redis_used - before_redis) / n * 1e6:.1f} us/hit, "
                f"{n / (counter.batches_sent - batches):.1f} hits per batch"
            )
    finally:
        await counter.close()
        await admin.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--descriptors", type=int, default=1, help="hits per request")
    parser.add_argument("--keys", type=int, default=1, help="distinct counters")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", action="store_true", help="RedisDecisionStore.decide")
    parser.add_argument("--redis-py", action="store_true", help="redis-py, not the fast wire")
    args = parser.parse_args()
    binary = shutil.which("redis-server") or "redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        server = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", home],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(_run(port, args))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
