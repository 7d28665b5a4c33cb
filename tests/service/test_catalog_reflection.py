"""The catalog process describes every topology service through reflection (what grpcurl
needs through the gateway), loading their protos itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leaky_tokens.topology import public_services
from tests.support.up import bound_ports


def test_catalog_process_resolves_every_public_service() -> None:
    # Its own process: in this one, other tests have loaded the protos already.
    (port,) = bound_ports(1)
    env = {**os.environ, "LEAKY_CATALOG_PORT": str(port), "LEAKY_CATALOG_METRICS_PORT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "leaky_tokens.catalog"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
                for name in sorted(public_services())
            ]
            deadline = time.monotonic() + 30
            while True:  # the port accepts a moment before the servicers are registered
                replies = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
                if all(r.HasField("file_descriptor_response") for r in replies):
                    break
                assert time.monotonic() < deadline, [r.error_response for r in replies]
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert len(replies) == len(requests)
