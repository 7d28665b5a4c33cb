"""The catalog process describes every topology service through reflection (what grpcurl
needs through the gateway), loading their protos itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leaky_tokens.topology import public_services
from tests.support.net import serving_port
from tests.support.wait import wait_until


def test_catalog_process_resolves_every_public_service(tmp_path: Path) -> None:
    # Its own process: in this one, other tests have loaded the protos already.
    env = {**os.environ, "LEAKY_CATALOG_PORT": "0", "LEAKY_CATALOG_METRICS_PORT": "0"}
    log_path = tmp_path / "catalog.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "leaky_tokens.catalog"], env=env, stderr=log
        )
    try:
        port = serving_port(process, log_path)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
                for name in sorted(public_services())
            ]

            def described() -> list[reflection_pb2.ServerReflectionResponse]:
                replies = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
                ok = all(r.HasField("file_descriptor_response") for r in replies)
                return replies if ok else []

            replies = wait_until(described, 30, what="every public service described")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(replies) == len(requests)
