"""Builds the purchase saga's parts from settings: what the token service and the worker run."""

from __future__ import annotations

from datetime import timedelta
from importlib.resources import files
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.runtime.paths import sqlite_url
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.runtime.system import SystemClock
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.saga_contract import Closeable, SagaParts
from leaky_tokens.token.adapters.saga_metrics import MeteredRecovery, MeteredSagaStore, SagaMetrics
from leaky_tokens.token.adapters.saga_participants import SagaTimeouts, participants
from leaky_tokens.token.adapters.saga_sql import make_engine, migrate
from leaky_tokens.token.adapters.settings import Backend
from leaky_tokens.token.adapters.sql_saga_store import SqlSagaStore
from leaky_tokens.token.adapters.store_factory import redis_store
from leaky_tokens.token.adapters.stub_payment import StubPaymentGateway
from leaky_tokens.token.domain.peers import PolicySource
from leaky_tokens.token.domain.policy_parse import DEFAULT_POLICY
from leaky_tokens.token.domain.ports import DecisionStore
from leaky_tokens.token.domain.saga_engine import SagaEngine
from leaky_tokens.token.domain.saga_ports import PaymentGateway


async def open_saga_store(
    settings: PurchaseSagaSettings, clock: Clock, engine: AsyncEngine | None = None
) -> SqlSagaStore:
    """The SQL saga store of `database_url` (SQLite token.db by default), migrated if asked."""
    engine = engine or make_engine(settings.database_url or sqlite_url("token.db"))
    try:
        if settings.auto_migrate:
            await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return SqlSagaStore(engine, settings.saga_topic, clock)


def shipped_policy() -> Path:
    """The policy file the package ships."""
    return Path(str(files("leaky_tokens.token") / DEFAULT_POLICY))


async def build_saga_parts(
    settings: PurchaseSagaSettings,
    *,
    clock: Clock | None = None,
    saga_store: SqlSagaStore | None = None,
    balances: DecisionStore | None = None,
    policy: PolicySource | None = None,
    payment: PaymentGateway | None = None,
) -> SagaParts:
    """The participants, outbox and recovery of the purchase saga.

    Collaborators default to the real ones: the SQL saga store of `database_url`, the
    decision store of `store_*` (Redis or a cluster: the balances the token service reads;
    an in-memory store would be the worker's own, so it is refused), the policy file and
    the stub payment. The token service passes its own store and policy in embedded mode.
    Resources the factory opened are in `resources`, to be closed in order.
    """
    clock = clock or SystemClock()
    resources: list[Closeable] = []
    if balances is None:
        if settings.backend is Backend.MEMORY:
            raise SettingsError(
                "the purchase saga credits the token service's balances: store_backend must "
                "be redis or cluster when the saga runs outside the token service"
            )
        redis = redis_store(settings)
        resources.append(redis)
        balances = redis
    if policy is None:
        policy = PolicyFile(
            Path(settings.policy_file) if settings.policy_file else shipped_policy()
        )
    if saga_store is None:
        saga_store = await open_saga_store(settings, clock)
        resources.append(saga_store)
    metrics = SagaMetrics()  # steps counted as they commit, whichever process runs them
    engine = SagaEngine(
        MeteredSagaStore(saga_store, metrics),
        payment or StubPaymentGateway(settings.payment_stub()),
        balances,
        policy,
        clock,
    )
    recovery = SagaTimeouts(engine, timedelta(seconds=settings.saga_timeout_seconds))
    return SagaParts(
        participants(engine), saga_store, MeteredRecovery(recovery, metrics), tuple(resources),
        metrics.collectors,
    )  # fmt: skip
