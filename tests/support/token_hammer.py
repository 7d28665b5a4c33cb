"""Many concurrent deciders on the same user and org keys (the over-admission test), also run
as a second process: `python -m tests.support.token_hammer <redis|cluster> <port> <prefix>`."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Allowed, Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import DecisionRequest, DecisionStore, Subject
from leaky_tokens.token.domain.quota import QuotaLimit

T0 = 1_780_000_000_000
STEP_MS = 100  # each round's clock reading is T0 + round * STEP_MS (never wall time)
ROUNDS = 25
TOKENS = 7
SHARDS = 8
USERS = (Subject("alice", "openai", "acme"), Subject("bob", "openai", "acme"))
LIMITS = LevelLimits(
    {
        Level.USER_BUCKET: BucketLimit.tokens(1000, 10_000),  # 1000 tokens, 10 per s
        Level.ORG_BUCKET: BucketLimit.tokens(1500, 20_000),  # 1500 tokens, 20 per s
    },
    {
        Level.ORG_QUOTA: QuotaLimit(
            1_000_000, T0 - T0 % 86_400_000, T0 - T0 % 86_400_000 + 86_400_000
        )
    },
)


async def hammer(store: DecisionStore, tasks: int, lane: int) -> dict[str, int]:
    """`tasks` concurrent loops of ROUNDS decisions each; tokens admitted per user."""
    admitted: Counter[str] = Counter()

    async def one(task: int) -> None:
        subject = USERS[task % len(USERS)]
        for round_ in range(ROUNDS):
            # Readings interleave out of order across tasks: the store must not over-admit.
            now = T0 + round_ * STEP_MS + (task * 7 + lane) % STEP_MS
            request = DecisionRequest(uuid.uuid4().hex, subject, LIMITS, TOKENS, now)
            if isinstance((await store.decide(request)).result, Allowed):
                admitted[subject.user_id] += TOKENS

    await asyncio.gather(*(one(t) for t in range(tasks)))
    return dict(admitted)


def client_for(kind: str, port: int) -> Redis | RedisCluster:
    """A client of the single Redis or of the cluster."""
    if kind == "cluster":
        return RedisCluster(host="127.0.0.1", port=port)
    return Redis(host="127.0.0.1", port=port)


def wire_for(kind: str, port: int) -> RedisWire | None:
    """The fast RESP client the store sends its scripts over ("wire"), else None (redis-py)."""
    if kind != "wire":
        return None
    return RedisWire(Endpoint(port=port), timeout_s=5.0, connect_timeout_s=5.0)


async def _main(kind: str, port: int, prefix: str, tasks: int) -> None:
    layout = KeyLayout(prefix=prefix, shards=SHARDS)
    store = RedisDecisionStore(client_for(kind, port), layout, wire=wire_for(kind, port))
    await store.load_scripts()
    try:
        print(json.dumps(await hammer(store, tasks, lane=1)))
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
