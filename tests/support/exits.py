"""A service module run as a process that is expected to exit (a bad setting, a refusal)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m module` with `env` added to this environment; it must exit within 60 s."""
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
