"""`leaky up` checks its ports before it starts anything."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.up import bound_ports


def test_leaky_up_refuses_a_port_another_process_listens_on(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        port, admin = bound_ports(2)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "leaky_tokens",
                "up",
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--grpc-base-port",
                str(taken - 2),  # token's gRPC port is base + 2
                "--metrics-base-port",
                "0",
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {taken} (token gRPC) on 127.0.0.1 is already in use" in result.stderr
    assert "--grpc-base-port" in result.stderr
    assert not (tmp_path / "logs").exists(), "nothing may start"
