"""A signing key retired by rotation: auth refuses its tokens at once, peers within the bound."""

from __future__ import annotations

from pathlib import Path

import grpc

from leaky.auth.v1 import auth_pb2 as pb
from leaky.auth.v1 import auth_pb2_grpc
from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky_tokens.auth.bootstrap import AuthSettings
from leaky_tokens.auth.bootstrap import build as build_auth
from leaky_tokens.runtime.server import start_server
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from tests.conftest import FAST_HASHER
from tests.support.fakes import FakeClock
from tests.support.jwks import bearer


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_retired_key_is_refused_by_auth_at_once_and_by_peers_after_the_bound(
    tmp_path: Path,
) -> None:
    auth_settings = AuthSettings(
        port=0,
        metrics_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}",
        argon2_time_cost=FAST_HASHER["time_cost"],
        argon2_memory_kib=FAST_HASHER["memory_kib"],
        published_keys=2,
        signing_key_lead_seconds=0,  # retirement is under test here, not the lead
    )
    auth = await build_auth(auth_settings)
    auth_server = await start_server(auth.spec, auth_settings, auth.verifier)
    clock = FakeClock()
    token_settings = TokenSettings(
        port=0, metrics_port=0, auth_target=f"127.0.0.1:{auth_server.port}"
    )
    token = await build_token(
        token_settings, clock=clock, monotonic=lambda: clock.now().timestamp()
    )
    token_server = await start_server(token.spec, token_settings, token.verifier)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as auth_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as token_channel,
        ):
            auth_stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
            token_stub = token_pb2_grpc.TokenServiceStub(token_channel)
            me = await auth_stub.Register(
                pb.RegisterRequest(username="alice", email="a@example.com", password="x" * 12)
            )
            await auth.app.grant_role("alice", "ADMIN")
            admin = await auth_stub.Login(pb.LoginRequest(username="alice", password="x" * 12))

            def list_keys(token_text: str) -> object:
                return auth_stub.ListApiKeys(
                    pb.ListApiKeysRequest(user_id=me.user_id), metadata=bearer(token_text)
                )

            def get_quota(token_text: str) -> object:
                # INVALID_ARGUMENT (no provider): authenticated, then the input was checked.
                return token_stub.GetQuota(
                    token_pb2.GetQuotaRequest(user_id=me.user_id), metadata=bearer(token_text)
                )

            old = me.token
            assert await _code(list_keys(old)) == grpc.StatusCode.OK
            assert await _code(get_quota(old)) == grpc.StatusCode.INVALID_ARGUMENT
            # Two rotations with two published keys: the first key is no longer published.
            for _ in range(2):
                await auth_stub.RotateSigningKey(
                    pb.RotateSigningKeyRequest(), metadata=bearer(admin.token)
                )
                admin = await auth_stub.Login(pb.LoginRequest(username="alice", password="x" * 12))
            published = await auth_stub.GetJwks(pb.GetJwksRequest())
            assert len(published.keys) == 2
            assert await _code(list_keys(old)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(list_keys(admin.token)) == grpc.StatusCode.OK
            # The peer still trusts its cached set (documented bound), then refetches.
            assert await _code(get_quota(old)) == grpc.StatusCode.INVALID_ARGUMENT
            clock.advance(seconds=token_settings.jwks_max_age_seconds + 1)
            assert await _code(get_quota(old)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(get_quota(admin.token)) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await token_server.stop(0)
        await auth_server.stop(0)
        await token.close()
        await auth.close()


async def test_with_one_published_key_rotation_retires_the_old_one_at_once(
    tmp_path: Path,
) -> None:
    settings = AuthSettings(
        port=0,
        metrics_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}",
        argon2_time_cost=FAST_HASHER["time_cost"],
        argon2_memory_kib=FAST_HASHER["memory_kib"],
        published_keys=1,
        signing_key_lead_seconds=0,  # retirement is under test here, not the lead
    )
    auth = await build_auth(settings)
    server = await start_server(auth.spec, settings, auth.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await stub.Register(
                pb.RegisterRequest(username="bob", email="b@example.com", password="y" * 12)
            )
            await auth.app.grant_role("bob", "ADMIN")
            admin = await stub.Login(pb.LoginRequest(username="bob", password="y" * 12))
            await stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=bearer(admin.token))
            code = await _code(
                stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=bearer(admin.token))
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
        await auth.close()
