"""Policy reload: on file change and SIGHUP, in-flight requests keep their snapshot, bad files
are refused with file:line and the old policy stays."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import grpc
import pytest

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.bootstrap import TokenSettings, build
from tests.support.grpc_errors import reason
from tests.support.jwks import KeySet
from tests.support.token_service import POLICY, token_service
from tests.support.wait import eventually

SMALLER = POLICY.replace(
    "openai: {capacity: 100, leak_rate: 1}", "openai: {capacity: 10, leak_rate: 1}"
)


def consume(tokens: int) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=tokens)


async def test_a_changed_file_applies_to_new_requests_not_to_those_in_flight(
    tmp_path: Path,
) -> None:
    async with token_service(tmp_path) as svc:
        svc.provider.gate = asyncio.Event()
        in_flight = asyncio.ensure_future(svc.stub.Consume(consume(20), metadata=svc.auth()))
        await asyncio.wait_for(svc.provider.entered.wait(), 10)  # decided, awaiting the provider
        svc.policy_path.write_text(SMALLER)
        os.utime(svc.policy_path, ns=(1, 1))  # a different mtime even on a coarse clock
        assert svc.components.policy is not None
        assert svc.components.policy.check()
        svc.provider.gate.set()
        done = await in_flight
        assert done.capacity == 100  # decided under the policy it started with
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.stub.Consume(consume(20), metadata=svc.auth())
        assert reason(info.value) == "REQUEST_EXCEEDS_CAPACITY"  # the new 10-token bucket


async def test_a_bad_file_is_refused_naming_file_and_line_and_the_old_policy_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with token_service(tmp_path) as svc:
        policy = svc.components.policy
        assert policy is not None
        svc.policy_path.write_text(POLICY.replace("leak_rate: 1}", "leak_rate: 1, burst: 3}"))
        os.utime(svc.policy_path, ns=(2, 2))
        with caplog.at_level(logging.ERROR):
            assert not policy.check()
        assert f"{svc.policy_path}:2:" in caplog.text
        assert "burst" in caplog.text
        assert not policy.check()  # refused once, not re-read until the file changes again
        got = await svc.stub.Consume(consume(60), metadata=svc.auth())
        assert got.capacity == 100


async def test_sighup_reloads_the_policy(tmp_path: Path) -> None:
    async with token_service(tmp_path) as svc:
        policy = svc.components.policy
        assert policy is not None
        policy.start(0)  # SIGHUP only, no polling
        try:
            svc.policy_path.write_text(SMALLER)
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: policy.reloads, 5, what="the SIGHUP reload")
            assert policy.reloads == 1
            assert policy.current.providers["openai"].capacity == 10
        finally:
            await policy.stop()


async def test_a_bad_file_at_start_stops_the_service_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  openai: {capacity: 1}\n")
    settings = TokenSettings(port=0, metrics_port=0, policy_file=str(bad))
    with pytest.raises(SystemExit) as stopped:
        await build(settings, jwks=KeySet().fetch)
    assert str(stopped.value) == (
        f"token: bad policy file: {bad}:2: providers.openai: missing required key 'leak_rate'"
    )
