"""Composition root of the auth service: settings -> adapters -> domain -> servicer -> server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from leaky.auth.v1 import auth_pb2_grpc
from leaky_tokens.auth.adapters.argon2_password_hasher import Argon2PasswordHasher
from leaky_tokens.auth.adapters.migrate import migrate
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.ports import AuthStore, PasswordHasher, TokenCrypto
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.auth.servicer import PUBLIC_METHODS, SERVICE_NAME, AuthServicer
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.paths import sqlite_url
from leaky_tokens.runtime.ports import Clock, Randomness
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
    max_api_keys_per_user: int = field(
        default=100,
        metadata=doc(
            "Active (unrevoked, unexpired) API keys a user may hold; one more is refused "
            "with FAILED_PRECONDITION, reason API_KEY_LIMIT."
        ),
    )
    max_owned_orgs_per_user: int = field(
        default=20,
        metadata=doc(
            "Organizations a user may own; one more is refused with FAILED_PRECONDITION, "
            "reason OWNED_ORG_LIMIT."
        ),
    )


@dataclass
class AuthComponents:
    """Everything the auth process runs, built once."""

    app: AuthApp
    store: AuthStore
    spec: ServiceSpec
    verifier: JwtVerifier
    # Releases what build() opened itself (the SQL engine); an injected store is the caller's.
    release: Callable[[], Awaitable[None]] | None = None

    async def close(self) -> None:
        """Release database connections opened by build()."""
        if self.release is not None:
            await self.release()


async def open_sql_store(settings: AuthSettings) -> SqlAuthStore:
    """The production store: SQLite or PostgreSQL from settings, migrated if configured."""
    engine = make_engine(settings.database_url or sqlite_url("auth.db"))
    store = SqlAuthStore(engine)
    try:
        if settings.auto_migrate:
            await migrate(engine)
    except BaseException:
        await store.close()
        raise
    return store


async def build(
    settings: AuthSettings,
    *,
    store: AuthStore | None = None,
    clock: Clock | None = None,
    randomness: Randomness | None = None,
    hasher: PasswordHasher | None = None,
    crypto: TokenCrypto | None = None,
) -> AuthComponents:
    """Wire adapters, domain and servicer and ensure a usable signing key exists.

    Each collaborator defaults to the production one (the SQL store from `database_url`, the
    system clock and CSPRNG, argon2id, RSA); tests pass in-memory fakes instead.
    """
    if settings.published_keys < 1:
        raise SettingsError("LEAKY_AUTH_PUBLISHED_KEYS must be at least 1")
    if settings.max_api_keys_per_user < 1 or settings.max_owned_orgs_per_user < 1:
        raise SettingsError(
            "LEAKY_AUTH_MAX_API_KEYS_PER_USER and LEAKY_AUTH_MAX_OWNED_ORGS_PER_USER must be "
            "at least 1"
        )
    release = None
    if store is None:
        sql_store = await open_sql_store(settings)
        store, release = sql_store, sql_store.close
    try:
        if crypto is None:
            if not settings.signing_key_passphrase:
                log.warning(
                    "signing keys are stored unencrypted; set LEAKY_AUTH_SIGNING_KEY_PASSPHRASE"
                )
            crypto = RsaTokenCrypto(settings.signing_key_passphrase)
        if hasher is None:
            hasher = Argon2PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        app = AuthApp(
            store=store,
            hasher=hasher,
            crypto=crypto,
            clock=clock or SystemClock(),
            randomness=randomness or SystemRandomness(),
            policy=policy_of(settings),
        )
        await app.ensure_signing_key()
        return _components(settings, app, store, release)
    except BaseException:
        if release is not None:
            await release()
        raise


def policy_of(settings: AuthSettings) -> AuthPolicy:
    """The domain's tunables from the settings."""
    return AuthPolicy(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_ttl=timedelta(seconds=settings.token_ttl_seconds),
        published_keys=settings.published_keys,
        max_api_keys_per_user=settings.max_api_keys_per_user,
        max_owned_orgs_per_user=settings.max_owned_orgs_per_user,
    )


def _components(
    settings: AuthSettings,
    app: AuthApp,
    store: AuthStore,
    release: Callable[[], Awaitable[None]] | None,
) -> AuthComponents:
    servicer = AuthServicer(app)

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)

    spec = ServiceSpec("auth", (SERVICE_NAME,), register, PUBLIC_METHODS)
    verifier = JwtVerifier(app.jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    return AuthComponents(app, store, spec, verifier, release)
