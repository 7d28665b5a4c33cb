"""N processes of one service sharing its gRPC port (SO_REUSEPORT), under one supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from leaky_tokens.runtime.server import ServerSettings
from leaky_tokens.runtime.settings import env_name

log = logging.getLogger(__name__)

# Set by the supervisor in each worker's environment: serve the shared port with SO_REUSEPORT.
# Not a setting (no LEAKY_<SVC>_ prefix): only the supervisor sets it.
WORKER_VARIABLE = "LEAKY_SHARED_PORT_WORKER"
_PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    """Whether this process is one of a supervisor's workers."""
    return os.environ.get(WORKER_VARIABLE, "") != ""


def supervise(slug: str, settings: ServerSettings, env_prefix: str) -> int:
    """Run `settings.processes` copies of this service on one port until SIGTERM/SIGINT.

    Each worker is this same command line started again, told its share: the port (a free
    one reserved here when the setting is 0), its own metrics port (metrics_port + index, so
    counters stay in-process and fast) and, for all but the first, no Consul registration
    (the port is one instance to the mesh). The kernel spreads new connections over the
    workers. A worker that exits stops them all: the supervisor exits non-zero and whatever
    started it (leaky up, systemd, a container) sees the failure.
    """
    holder = _reserve(settings.host, settings.port)
    port = int(holder.getsockname()[1])
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    workers = [
        _start(_worker_env(settings, env_prefix, index, port))
        for index in range(settings.processes)
    ]
    log.info(
        "supervising",
        extra={"service": slug, "processes": len(workers), "address": f"{settings.host}:{port}"},
    )
    try:
        while not stopping:
            ended = [w for w in workers if w.poll() is not None]
            if ended:
                log.error(
                    "worker exited; stopping the others",
                    extra={"pid": ended[0].pid, "returncode": ended[0].returncode},
                )
                return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop(workers, settings.shutdown_delay_seconds + settings.shutdown_grace_seconds + 5)
        holder.close()


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) host:port with SO_REUSEPORT: picks the port when 0 and fails early,
    and clearly, when a process that does not share it holds it. Never accepts a connection:
    the kernel hands them only to listening sockets, i.e. the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError as error:
        holder.close()
        raise SystemExit(f"cannot share {host}:{port}: {error.strerror}") from error
    return holder


def _worker_env(settings: ServerSettings, prefix: str, index: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env[WORKER_VARIABLE] = str(index)
    env[env_name(prefix, "processes")] = "1"
    env[env_name(prefix, "port")] = str(port)
    metrics = settings.metrics_port + index if settings.metrics_port else 0
    env[env_name(prefix, "metrics_port")] = str(metrics)
    if index > 0:
        env[env_name(prefix, "consul_address")] = ""
    return env


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    # The same interpreter and arguments (python -m leaky_tokens.<svc>, or a console script).
    argv = [sys.executable, *sys.orig_argv[1:]]
    # preexec_fn is unsafe with threads; the supervisor starts none.
    return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL, so no
    orphan keeps serving the port (Linux prctl; elsewhere a no-op)."""
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(workers: list[subprocess.Popen[bytes]], patience: float) -> None:
    """SIGTERM every worker still running (each drains as a single process does), then wait;
    SIGKILL what outlives `patience`."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + patience
    for worker in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(max(0.0, deadline - time.monotonic()))
        if worker.poll() is None:
            log.warning("worker ignored SIGTERM; killing it", extra={"pid": worker.pid})
            worker.kill()
            worker.wait()
