"""Composition root of the auth service: settings -> adapters -> domain -> servicer -> server."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from leaky.auth.v1 import auth_pb2_grpc
from leaky_tokens.auth.adapters.argon2_password_hasher import Argon2PasswordHasher
from leaky_tokens.auth.adapters.bounded_password_hasher import BoundedPasswordHasher
from leaky_tokens.auth.adapters.in_memory_throttle_store import InMemoryThrottleStore
from leaky_tokens.auth.adapters.migrate import migrate
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.auth.domain.throttle import LoginThrottle, ThrottlePolicy, ThrottleRule
from leaky_tokens.auth.servicer import PUBLIC_METHODS, SERVICE_NAME, AuthServicer
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.paths import sqlite_url
from leaky_tokens.runtime.server import ServerSettings, ServiceSpec
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.runtime.system import SystemClock, SystemRandomness

log = logging.getLogger(__name__)

ENV_PREFIX = "LEAKY_AUTH"


@dataclass(frozen=True)
class AuthSettings(ServerSettings):
    """Auth service settings (LEAKY_AUTH_<FIELD>)."""

    port: int = field(default=50051, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9101, metadata=doc("Prometheus /metrics port; 0 disables."))
    database_url: str = field(
        default="",
        metadata=doc(
            "SQLAlchemy URL (sqlite+aiosqlite:///... or postgresql+psycopg://...); "
            "empty = SQLite file auth.db in LEAKY_DATA_DIR."
        ),
    )
    auto_migrate: bool = field(default=True, metadata=doc("Apply schema migrations at start."))
    token_ttl_seconds: int = field(default=3600, metadata=doc("Access-token lifetime."))
    published_keys: int = field(
        default=2, metadata=doc("Signing keys in the JWKS: the current one and previous ones.")
    )
    signing_key_passphrase: str = field(
        default="", metadata=doc("Encrypts signing keys at rest; empty stores them unencrypted.")
    )
    argon2_time_cost: int = field(default=3, metadata=doc("argon2id iterations."))
    argon2_memory_kib: int = field(default=65536, metadata=doc("argon2id memory in KiB."))
    # -- login throttling and hashing bounds (ADR 0012)
    hash_concurrency: int = field(
        default=0, metadata=doc("Password hashes computed at once; 0 = one per CPU core.")
    )
    hash_queue: int = field(
        default=16,
        metadata=doc("Hashes that may wait for a slot; beyond it logins/registrations get 429."),
    )
    login_free_failures: int = field(
        default=5, metadata=doc("Failed logins per username before each retry must wait.")
    )
    login_lockout_failures: int = field(
        default=10, metadata=doc("Failed logins per username that lock it for the lockout time.")
    )
    login_address_free_failures: int = field(
        default=20, metadata=doc("Failed logins per client address before each retry must wait.")
    )
    login_address_lockout_failures: int = field(
        default=100, metadata=doc("Failed logins per client address that lock it.")
    )
    login_base_delay_seconds: float = field(
        default=1.0, metadata=doc("First wait after the free failures; doubles per failure.")
    )
    login_max_delay_seconds: float = field(
        default=60.0, metadata=doc("Longest wait between failures before the lockout.")
    )
    login_lockout_seconds: float = field(
        default=900.0,
        metadata=doc("Lockout time; a key with no failure for this long is forgotten."),
    )

    def throttle_policy(self) -> ThrottlePolicy:
        """The login throttle rules these settings describe; SettingsError if they make none."""
        if self.hash_concurrency < 0 or self.hash_queue < 0:
            raise SettingsError("LEAKY_AUTH_HASH_CONCURRENCY and _HASH_QUEUE must be >= 0")
        for free, lockout in (
            (self.login_free_failures, self.login_lockout_failures),
            (self.login_address_free_failures, self.login_address_lockout_failures),
        ):
            if not 0 <= free < lockout:
                raise SettingsError(
                    "LEAKY_AUTH_LOGIN_*FREE_FAILURES must be >= 0 and below *LOCKOUT_FAILURES"
                )
        if min(self.login_base_delay_seconds, self.login_lockout_seconds) <= 0:
            raise SettingsError("LEAKY_AUTH_LOGIN_*_SECONDS must be positive")

        def rule(free: int, lockout_after: int) -> ThrottleRule:
            return ThrottleRule(
                free_failures=free,
                base_delay=timedelta(seconds=self.login_base_delay_seconds),
                max_delay=timedelta(seconds=self.login_max_delay_seconds),
                lockout_after=lockout_after,
                lockout=timedelta(seconds=self.login_lockout_seconds),
            )

        return ThrottlePolicy(
            username=rule(self.login_free_failures, self.login_lockout_failures),
            address=rule(self.login_address_free_failures, self.login_address_lockout_failures),
        )

    # -- end login throttling


@dataclass
class AuthComponents:
    """Everything the auth process runs, built once."""

    app: AuthApp
    store: SqlAuthStore
    spec: ServiceSpec
    verifier: JwtVerifier

    async def close(self) -> None:
        """Release database connections."""
        await self.store.close()


async def build(settings: AuthSettings) -> AuthComponents:
    """Wire adapters, domain and servicer; migrate and ensure a usable signing key exists."""
    if settings.published_keys < 1:
        raise SettingsError("LEAKY_AUTH_PUBLISHED_KEYS must be at least 1")
    engine = make_engine(settings.database_url or sqlite_url("auth.db"))
    store = SqlAuthStore(engine)
    try:
        return await _build(settings, store, engine)
    except BaseException:
        await store.close()
        raise


async def _build(
    settings: AuthSettings, store: SqlAuthStore, engine: AsyncEngine
) -> AuthComponents:
    throttle_policy = settings.throttle_policy()  # check the settings before touching the DB
    if settings.auto_migrate:
        await migrate(engine)
    if not settings.signing_key_passphrase:
        log.warning("signing keys are stored unencrypted; set LEAKY_AUTH_SIGNING_KEY_PASSPHRASE")
    clock = SystemClock()
    hasher = BoundedPasswordHasher(
        Argon2PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib),
        concurrency=settings.hash_concurrency or os.cpu_count() or 1,
        queue=settings.hash_queue,
    )
    # Per instance: each auth instance throttles what it sees (ADR 0012).
    throttle = LoginThrottle(InMemoryThrottleStore(), clock, throttle_policy)
    app = AuthApp(
        store=store,
        hasher=hasher,
        crypto=RsaTokenCrypto(settings.signing_key_passphrase),
        clock=clock,
        randomness=SystemRandomness(),
        policy=AuthPolicy(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            token_ttl=timedelta(seconds=settings.token_ttl_seconds),
            published_keys=settings.published_keys,
        ),
        throttle=throttle,
    )
    await app.ensure_signing_key()
    servicer = AuthServicer(app)

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)

    spec = ServiceSpec("auth", (SERVICE_NAME,), register, PUBLIC_METHODS)
    # max_age=0: no cache; local keys are read on every call, so retired keys fail at once.
    verifier = JwtVerifier(
        app.jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience, max_age=0
    )
    return AuthComponents(app, store, spec, verifier)
