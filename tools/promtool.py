"""Build Prometheus's promtool once from the Go module proxy into a cache.

Usage: python tools/promtool.py [--link PATH]   prints the cached binary's path; --link also
makes PATH (e.g. .venv/bin/promtool) a symlink to it. The version matches the Prometheus
image compose runs (prom/prometheus:v2.55.1, Go module v0.55.1). `go install` refuses the
module (its go.mod has replace directives), so its source is downloaded with `go mod download`
and built with `go build`: a few minutes on two cores the first time, then cached in
$LEAKY_TOOLS_DIR (default ~/.cache/leaky-tokens/tools), outside the clone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODULE = "github.com/prometheus/prometheus"
VERSION = "v0.55.1"  # Prometheus 2.55.1


def tools_dir() -> Path:
    """The download cache, created on first use."""
    default = Path.home() / ".cache" / "leaky-tokens" / "tools"
    path = Path(os.environ.get("LEAKY_TOOLS_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure() -> Path:
    """The cached promtool binary, built if it is not there yet."""
    target = tools_dir() / f"promtool-{VERSION}"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            "promtool is built from the Go module proxy and needs Go (1.22 or later): "
            "install it (https://go.dev/dl/ or apt-get install golang) and run again"
        )
    print(
        f"building promtool {VERSION} with {go} (once, cached in {target.parent})", file=sys.stderr
    )
    found = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    source = Path(json.loads(found.stdout)["Dir"])
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "prometheus"
        shutil.copytree(source, tree)  # the module cache is read-only; go build writes go.sum
        for path in tree.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        partial = target.with_suffix(".partial")
        subprocess.run(
            [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "./cmd/promtool"],
            cwd=tree, check=True,
        )  # fmt: skip
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
