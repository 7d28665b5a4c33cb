"""Installs Debian packages the stack needs, only when their commands are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from leaky_tokens.stack.component import ComponentError

WHY = "the native stack (`leaky stack up`, the integration and e2e tests) runs it on loopback"


def ensure_packages(commands: dict[str, str]) -> None:
    """`commands` maps a command that must exist to the Debian package providing it."""
    wanted = {cmd: pkg for cmd, pkg in sorted(commands.items()) if not _present(cmd)}
    if not wanted:
        return
    missing = sorted(set(wanted.values()))
    needs = ", ".join(f"{pkg} (for {cmd})" for cmd, pkg in wanted.items())
    if not _present("apt-get"):
        raise ComponentError(
            f"missing {needs}, which {WHY}; this machine has no apt-get: "
            f"install {' '.join(missing)} with its package manager"
        )
    if os.geteuid() != 0:
        raise ComponentError(
            f"missing {needs}, which {WHY}; apt-get needs root: "
            f"run `sudo apt-get install -y {' '.join(missing)}` and try again"
        )
    # Said before the slow part, so a pause on a fresh machine has an explanation.
    print(f"installing Debian packages with apt-get: {needs}; {WHY}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ComponentError(f"{' '.join(argv)} failed: {result.stderr.strip()[-500:]}")


def _present(command: str) -> bool:
    return shutil.which(command) is not None or os.path.exists(command)
