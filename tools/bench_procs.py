"""Helpers of tools/bench.py: processes stopped by PID, /proc CPU ticks, ghz runs, ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nothing listens on now (racy; a clash makes the process fail loudly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (a supervisor and its workers)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return total


def free_ports(count: int) -> int:
    """A loopback port p with p .. p+count-1 all free now (racy, like free_port)."""
    for _ in range(100):
        base = free_port()
        taken = False
        for port in range(base + 1, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise SystemExit(f"bench: no {count} consecutive free ports")


def load_average() -> str:
    """The 1/5/15-minute load averages, as /proc/loadavg has them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Processes:
    """Every process the benchmark starts, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> int:
        """Start `argv` with `env` added, wait until it listens on `port`; its PID."""
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append((name, proc))
        self.await_port(name, proc, port)
        return proc.pid

    def await_port(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        """Wait until `proc` (started as `name`) or a child of it listens on `port`."""
        deadline = time.monotonic() + 60
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench: {name} did not start on port {port}:\n{tail}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Stop what was started, newest first, each by its own PID."""
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.started):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                print(f"bench: {name} (pid {proc.pid}) ignored SIGTERM; killing it")
                proc.kill()
                proc.wait()
        self.started.clear()


@dataclass(frozen=True)
class Run:
    """One ghz run: throughput, latency percentiles (ms), errors, CPU of the server."""

    rps: float
    p50: float
    p99: float
    count: int
    errors: int
    cpu_us: float  # CPU of the measured process per request, microseconds
    error_kinds: str = ""  # ghz's error distribution, when there were errors

    @staticmethod
    def median(runs: list[Run]) -> Run:
        """Per-field medians of several runs."""

        def med(name: str) -> float:
            return float(statistics.median(getattr(r, name) for r in runs))

        return Run(
            med("rps"),
            med("p50"),
            med("p99"),
            int(med("count")),
            int(med("errors")),
            med("cpu_us"),
            "; ".join(sorted({r.error_kinds for r in runs if r.error_kinds})),
        )


@dataclass(frozen=True)
class Ghz:
    """ghz from the harness's cache, with fixed concurrency and duration."""

    binary: Path
    concurrency: int
    seconds: int
    warmup: int = 3
    connections: int = 1  # TCP connections ghz spreads its calls over (processes sharing a port)

    def run(self, target: str, call: str, schema: list[str], data: list[str], pid: int) -> Run:
        """Warm up, then load `target` for the duration; CPU of `pid` (and its workers, if it
        supervises some) over the measured part."""
        base = [str(self.binary), "--insecure", *schema, "--call", call, *data]
        base += ["-c", str(self.concurrency), "--duration-stop=ignore"]
        base += ["--connections", str(self.connections)]
        subprocess.run([*base, "-z", f"{self.warmup}s", target], capture_output=True, check=False)
        before = tree_cpu_seconds(pid)
        done = subprocess.run(
            [*base, "-z", f"{self.seconds}s", "--format", "json", target],
            capture_output=True,
            check=False,
        )
        used = tree_cpu_seconds(pid) - before
        if done.returncode != 0 or not done.stdout.strip():
            raise SystemExit(f"bench: ghz failed against {target}: {done.stderr.decode()[-1000:]}")
        report: dict[str, Any] = json.loads(done.stdout)
        latency = {x["percentage"]: x["latency"] / 1e6 for x in report["latencyDistribution"]}
        count = int(report["count"])
        ok = int(report.get("statusCodeDistribution", {}).get("OK", 0))
        return Run(
            float(report["rps"]),
            latency.get(50, 0.0),
            latency.get(99, 0.0),
            count,
            count - ok,
            used / max(count, 1) * 1e6,
            "; ".join(f"{n} x {e[:120]}" for e, n in report.get("errorDistribution", {}).items()),
        )
