"""Composition root of the auth service: settings -> adapters -> domain -> servicer -> server."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from leaky.auth.v1 import auth_pb2_grpc
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from leaky_tokens.auth.adapters.argon2_password_hasher import Argon2PasswordHasher
from leaky_tokens.auth.adapters.bounded_password_hasher import BoundedPasswordHasher
from leaky_tokens.auth.adapters.in_memory_throttle_store import InMemoryThrottleStore
from leaky_tokens.auth.adapters.migrate import migrate
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.api_key_gate import MAX_CACHE_SECONDS, ApiKeyGate
from leaky_tokens.auth.domain.audit import client_address_var
from leaky_tokens.auth.domain.ports import AuthStore, PasswordHasher, ThrottleStore, TokenCrypto
from leaky_tokens.auth.domain.registration_throttle import RegistrationRule, RegistrationThrottle
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.auth.domain.throttle import (
    LoginThrottle,
    ThrottlePolicy,
    ThrottleRule,
    address_key,
)
from leaky_tokens.auth.edge_check import AUTHORIZATION_SERVICE, CHECK, EdgeAuthorizationServicer
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
    signing_key_lead_seconds: int = field(
        default=15,
        metadata=doc(
            "A rotated signing key is published in the JWKS this long before it signs tokens, "
            "so the edge's JWKS cache (refetched every 5 s) and the services' hold it first; "
            "0 makes it current at once."
        ),
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
        default=-1,
        metadata=doc(
            "Hashes that may wait for a slot; beyond it logins/registrations get 429; "
            "-1 = as many as HASH_CONCURRENCY (at most about one hash of waiting)."
        ),
    )
    hash_per_client: int = field(
        default=2,
        metadata=doc(
            "Hashes one client address may have running or waiting; one more gets 429 at "
            "once, so one client cannot occupy the hasher; 0 = no per-address cap."
        ),
    )
    register_per_address: int = field(
        default=20,
        metadata=doc(
            "Registrations one client address may make per REGISTER_WINDOW_SECONDS; one "
            "more gets 429 REGISTRATION_THROTTLED before any hashing."
        ),
    )
    register_window_seconds: float = field(
        default=3600.0, metadata=doc("The fixed window of the registration budget.")
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
        if self.hash_concurrency < 0 or self.hash_queue < -1 or self.hash_per_client < 0:
            raise SettingsError(
                "LEAKY_AUTH_HASH_CONCURRENCY and _HASH_PER_CLIENT must be >= 0, _HASH_QUEUE >= -1"
            )
        if self.register_per_address < 1 or self.register_window_seconds <= 0:
            raise SettingsError(
                "LEAKY_AUTH_REGISTER_PER_ADDRESS must be >= 1 and "
                "LEAKY_AUTH_REGISTER_WINDOW_SECONDS positive"
            )
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

    def hash_bounds(self) -> tuple[int, int]:
        """(concurrency, queue) of the hashing bound: one per core, a queue as long."""
        concurrency = self.hash_concurrency or os.cpu_count() or 1
        return concurrency, concurrency if self.hash_queue == -1 else self.hash_queue

    def registration_rule(self) -> RegistrationRule:
        """The per-address registration budget."""
        return RegistrationRule(
            self.register_per_address, timedelta(seconds=self.register_window_seconds)
        )

    # -- end login throttling
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
    # -- API keys at the edge (ADR 0041)
    api_key_cache_seconds: float = field(
        default=0.5,
        metadata=doc(
            "How long Envoy's API-key check (Authorization/Check) reuses a key's answer: "
            "a revoked or expired key is refused within this bound; below 1; 0 = no cache."
        ),
    )
    mesh_token_ttl_seconds: int = field(
        default=60,
        metadata=doc(
            "Lifetime of the token Check mints for an API-key call (audience <aud>#mesh, "
            "refused at the edge); reused per key while more than half of it is left."
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
    throttle_store: ThrottleStore | None = None,
) -> AuthComponents:
    """Wire adapters, domain and servicer and ensure a usable signing key exists.

    Each collaborator defaults to the production one (the SQL store from `database_url`, the
    system clock and CSPRNG, argon2id behind the hashing bound, RSA, the per-instance throttle
    store); tests pass in-memory fakes instead.
    """
    throttle_policy = settings.throttle_policy()  # check the settings before touching the DB
    if settings.published_keys < 1:
        raise SettingsError("LEAKY_AUTH_PUBLISHED_KEYS must be at least 1")
    if settings.signing_key_lead_seconds < 0:
        raise SettingsError("LEAKY_AUTH_SIGNING_KEY_LEAD_SECONDS must be at least 0")
    if settings.max_api_keys_per_user < 1 or settings.max_owned_orgs_per_user < 1:
        raise SettingsError(
            "LEAKY_AUTH_MAX_API_KEYS_PER_USER and LEAKY_AUTH_MAX_OWNED_ORGS_PER_USER must be "
            "at least 1"
        )
    if not 0 <= settings.api_key_cache_seconds < MAX_CACHE_SECONDS:
        raise SettingsError("LEAKY_AUTH_API_KEY_CACHE_SECONDS must be >= 0 and below 1")
    if settings.mesh_token_ttl_seconds < 2:
        raise SettingsError("LEAKY_AUTH_MESH_TOKEN_TTL_SECONDS must be at least 2")
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
        # The bound wraps any hasher, so a flood is refused quickly whatever hashes (ADR 0012).
        concurrency, queue = settings.hash_bounds()
        bounded = BoundedPasswordHasher(
            hasher,
            concurrency=concurrency,
            queue=queue,
            per_client=settings.hash_per_client,
            client=current_client,
        )
        clock = clock or SystemClock()
        # Per instance by default: each auth instance throttles what it sees (ADR 0012).
        throttle_store = throttle_store or InMemoryThrottleStore()
        throttle = LoginThrottle(throttle_store, clock, throttle_policy)
        registrations = RegistrationThrottle(throttle_store, clock, settings.registration_rule())
        app = AuthApp(
            store=store,
            hasher=bounded,
            crypto=crypto,
            clock=clock,
            randomness=randomness or SystemRandomness(),
            policy=policy_of(settings),
            throttle=throttle,
            registrations=registrations,
        )
        await app.ensure_signing_key()
        return _components(settings, app, store, release)
    except BaseException:
        if release is not None:
            await release()
        raise


def current_client() -> str:
    """The hashing bound's client: the address the servicer took for this request
    (servicer.client_address), keyed as the login throttle keys it (an IPv6 /64 is one
    client); "" for in-process calls."""
    address = client_address_var.get()
    return address_key(address) if address else ""


def policy_of(settings: AuthSettings) -> AuthPolicy:
    """The domain's tunables from the settings."""
    return AuthPolicy(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_ttl=timedelta(seconds=settings.token_ttl_seconds),
        published_keys=settings.published_keys,
        signing_key_lead=timedelta(seconds=settings.signing_key_lead_seconds),
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
    gate = ApiKeyGate(
        app,
        cache_seconds=settings.api_key_cache_seconds,
        token_ttl=timedelta(seconds=settings.mesh_token_ttl_seconds),
    )
    edge = EdgeAuthorizationServicer(gate)

    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(edge, server)

    # Check is called by Envoy without a JWT: public to the interceptor. Only the key's own
    # secret buys an answer; the gateway routes no client to it (it is no topology service).
    spec = ServiceSpec(
        "auth",
        (SERVICE_NAME, AUTHORIZATION_SERVICE.full_name),
        register,
        PUBLIC_METHODS | {CHECK},
    )
    # max_age=0: no cache; local keys are read on every call, so retired keys fail at once.
    verifier = JwtVerifier(
        app.jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience, max_age=0
    )
    return AuthComponents(app, store, spec, verifier, release)
