"""RLS config files (LEAKY_TOKEN_RLS_CONFIG) reload as the policy does: on change and on
SIGHUP; a bad file is refused naming file:line and the old rules stay; a request in flight
is decided by the rules it matched, never by a mix of old and new."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import pytest

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.runtime.server import start_server
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.bootstrap import TokenComponents, TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep
from leaky_tokens.token.domain.rls_tokens import TokenDescriptors
from leaky_tokens.token.rls_servicer import RateLimitServicer
from leaky_tokens.token.rls_wiring import RlsSettings, config_source, rls_config_file, token_policy
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet
from tests.support.token_service import POLICY
from tests.support.wait import eventually

R = pb.RateLimitResponse


def rules(limit: int, domain: str = "leaky", key: str = "api_key") -> str:
    return (
        f"domain: {domain}\ndescriptors:\n  - key: {key}\n    rate_limit:\n"
        f"      unit: minute\n      requests_per_unit: {limit}\n"
    )


def rewrite(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # a different mtime even on a coarse clock


def request(value: str, domain: str = "leaky", key: str = "api_key") -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain=domain)
    req.descriptors.add().entries.add(key=key, value=value)
    return req


async def limit_of(stub: rls_pb2_grpc.RateLimitServiceAsyncStub, value: str = "k") -> int:
    got = await stub.ShouldRateLimit(request(value))
    return int(got.statuses[0].current_limit.requests_per_unit)


@asynccontextmanager
async def serve(
    config: Path, **settings: Any
) -> AsyncIterator[tuple[rls_pb2_grpc.RateLimitServiceAsyncStub, TokenComponents]]:
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    options = {"policy_poll_seconds": 0.0, **settings}
    token_settings = TokenSettings(port=0, metrics_port=0, rls_config=str(config), **options)
    token = await build_token(token_settings, clock=FakeClock(), jwks=keys.fetch)
    server = await start_server(token.spec, token_settings, token.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield rls_pb2_grpc.RateLimitServiceStub(channel), token
    finally:
        await server.stop(0)
        await token.close()


async def test_a_changed_file_sets_the_new_limit(tmp_path: Path) -> None:
    path = tmp_path / "rls.yaml"
    path.write_text(rules(2))
    async with serve(path) as (stub, token):
        assert await limit_of(stub) == 2
        rewrite(path, rules(5), 1)
        assert token.rls_config is not None
        assert token.rls_config.check()
        assert await limit_of(stub) == 5
        codes = [(await stub.ShouldRateLimit(request("fresh"))).overall_code for _ in range(6)]
        assert codes == [R.OK] * 5 + [R.OVER_LIMIT]  # enforced, not only reported


async def test_a_bad_file_is_refused_naming_file_and_line_and_the_old_rules_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rls.yaml"
    path.write_text(rules(2))
    async with serve(path) as (stub, token):
        config = token.rls_config
        assert config is not None
        rewrite(path, rules(2).replace("unit: minute", "unit: fortnight"), 2)
        with caplog.at_level(logging.ERROR):
            assert not config.check()
        assert f"{path}:5:" in caplog.text
        assert "invalid rate limit unit 'FORTNIGHT'" in caplog.text
        assert not config.check()  # refused once, not re-read until the file changes again
        assert await limit_of(stub) == 2
        path.unlink()  # a file gone is refused the same way
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert not config.check()
        assert "cannot read rate limit config" in caplog.text
        assert await limit_of(stub) == 2
        assert config.reloads == 0


async def test_sighup_reloads_the_rls_config_and_the_policy_alike(tmp_path: Path) -> None:
    path, policy = tmp_path / "rls.yaml", tmp_path / "policy.yaml"
    path.write_text(rules(2))
    policy.write_text(POLICY)
    async with serve(path, policy_file=str(policy)) as (stub, token):
        assert token.policy is not None
        assert token.rls_config is not None
        path.write_text(rules(7))
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: token.rls_config and token.rls_config.reloads, 5, what="SIGHUP")
        # One handler for both: the policy is not left out by the RLS file's registration.
        assert token.policy.reloads == 1
        assert await limit_of(stub) == 7


async def test_the_file_is_polled_for_changes(tmp_path: Path) -> None:
    path = tmp_path / "rls.yaml"
    path.write_text(rules(2))
    async with serve(path, policy_poll_seconds=0.02) as (stub, token):
        rewrite(path, rules(4), 3)
        assert token.rls_config is not None
        config = token.rls_config
        await eventually(lambda: config.reloads, 10, what="the polled reload")
        assert await limit_of(stub) == 4


async def test_a_directory_reloads_as_one_config(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "a.yaml").write_text(rules(2))
    async with serve(folder) as (stub, token):
        assert token.rls_config is not None
        (folder / "b.yaml").write_text(rules(3, domain="other", key="user"))
        assert token.rls_config.check()  # a new file in the directory is a change
        other = await stub.ShouldRateLimit(request("u", domain="other", key="user"))
        assert other.statuses[0].current_limit.requests_per_unit == 3
        rewrite(folder / "b.yaml", rules(3, domain="leaky"), 4)  # a domain defined twice
        assert not token.rls_config.check()
        assert await limit_of(stub) == 2
        other = await stub.ShouldRateLimit(request("u", domain="other", key="user"))
        assert other.statuses[0].current_limit.requests_per_unit == 3  # both files' old rules


async def test_a_bad_file_at_start_stops_the_service_naming_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rls.yaml"
    path.write_text(rules(2).replace("unit: minute", "unit: fortnight"))
    settings = TokenSettings(port=0, metrics_port=0, rls_config=str(path))
    with pytest.raises(SystemExit) as stopped:
        await build_token(settings, jwks=KeySet().fetch)
    assert str(stopped.value).startswith(f"token: bad rls_config: {path}:5: ")


class GatedCounter(InMemoryRequestCounter):
    """Holds each hit until the test opens the gate: the request is mid-decision."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        self.entered.set()
        await self.gate.wait()
        return await super().hit(hits, now_ms)


async def test_a_request_in_flight_is_decided_by_the_rules_it_matched(tmp_path: Path) -> None:
    path = tmp_path / "rls.yaml"
    path.write_text(rules(2))
    config = rls_config_file(RlsSettings(rls_config=str(path)))
    assert config is not None
    counter = GatedCounter()
    servicer = RateLimitServicer(lambda: config.current, counter, FakeClock())
    context: Any = None  # ShouldRateLimit reads nothing from its context
    in_flight = asyncio.ensure_future(servicer.ShouldRateLimit(request("k"), context))
    await asyncio.wait_for(counter.entered.wait(), 10)
    rewrite(path, rules(5), 5)
    assert config.check()
    counter.gate.set()
    done = await in_flight
    assert done.statuses[0].current_limit.requests_per_unit == 2  # the rules it started with
    after = await servicer.ShouldRateLimit(request("k"), context)
    assert after.statuses[0].current_limit.requests_per_unit == 5


TOKEN_POLICY = """\
providers:
  openai: {capacity: 100, leak_rate: 1}
rate_limits:
  domain: leaky
  descriptors:
    - key: provider
      value: openai
      descriptors:
        - key: user_id
          token_bucket: openai
"""


def token_request(tokens: int) -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain="leaky", hits_addend=tokens)
    entries = req.descriptors.add().entries
    entries.add(key="provider", value="openai")
    entries.add(key="user_id", value="u1")
    return req


async def test_a_policy_reload_mid_request_never_mixes_two_policies(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TOKEN_POLICY)
    policy = PolicyFile(path)
    rules = config_source(None, lambda: policy.current)
    tokens = TokenDescriptors(
        InMemoryDecisionStore(), token_policy(None, lambda: policy.current), lambda: uuid4().hex
    )
    counter = GatedCounter()
    servicer = RateLimitServicer(rules, counter, FakeClock(), tokens=tokens)
    context: Any = None
    in_flight = asyncio.ensure_future(servicer.ShouldRateLimit(token_request(50), context))
    await asyncio.wait_for(counter.entered.wait(), 10)
    rewrite(path, TOKEN_POLICY.replace("capacity: 100", "capacity: 10"), 6)
    assert policy.check()
    counter.gate.set()
    # Matched under the first policy, charged under it too: 50 tokens fit its 100.
    assert (await in_flight).overall_code == R.OK
    later = await servicer.ShouldRateLimit(token_request(50), context)
    assert later.overall_code == R.OVER_LIMIT  # the new 10-token bucket
