"""A Faust worker (`python -m ...`) as a test's subprocess: started with its log in the test's
directory, stopped by its PID only (SIGTERM, then SIGKILL after 30 s)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch(module: str, env: Mapping[str, str], root: Path) -> subprocess.Popen[bytes]:
    """Start `python -m module` with `env`, appending its output to root/worker.log."""
    with (root / "worker.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=dict(env), cwd=ROOT, stdout=out, stderr=out
        )


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> int:
    """Send `sig` and wait for the exit code (0 for no process); kill it if it hangs."""
    if process is None:
        return 0
    process.send_signal(sig)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(30)


def log_tail(root: Path) -> str:
    return (root / "worker.log").read_text()[-3000:]
