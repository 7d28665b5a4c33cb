"""Installs Debian packages the stack needs, only when their commands are missing."""

from __future__ import annotations

import os
import shutil
import subprocess

from leaky_tokens.stack.component import ComponentError


def ensure_packages(commands: dict[str, str]) -> None:
    """`commands` maps a command that must exist to the Debian package providing it."""
    missing = sorted({pkg for cmd, pkg in commands.items() if not _present(cmd)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ComponentError(
            f"missing packages {missing}: run `sudo apt-get install {' '.join(missing)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ComponentError(f"{' '.join(argv)} failed: {result.stderr.strip()[-500:]}")


def _present(command: str) -> bool:
    return shutil.which(command) is not None or os.path.exists(command)
