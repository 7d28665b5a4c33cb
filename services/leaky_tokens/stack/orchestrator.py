"""Starts, health-waits, supervises and stops stack components by PID; `up` is idempotent."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from leaky_tokens.loopback import format_table, tcp_open
from leaky_tokens.stack.component import Component, ComponentError, StackPaths


@dataclass(frozen=True)
class Status:
    """One row of `leaky stack status`."""

    name: str
    address: str
    pid: int | None
    state: str  # healthy | unhealthy | stopped


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot), to tell a PID from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped (our own child during start-up)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return fields[19]


def _detach(process: subprocess.Popen[bytes]) -> None:
    """Let go of the handle of a daemon we keep running on purpose: from here it is tracked
    by its pid file, stopped by PID and reaped by `_start_time`/`_stop`. Without a return code
    Popen.__del__ would warn "still running" (ResourceWarning) and queue it for reaping."""
    process.returncode = 0  # not its exit status: a mark that nobody waits on this handle


class Stack:
    """The components and what this project started of them (pid files)."""

    def __init__(
        self,
        components: Sequence[Component],
        paths: StackPaths,
        say: Callable[[str], None] = print,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.components = list(components)
        self.paths = paths
        self._say = say
        self._monotonic = monotonic

    def select(self, names: Sequence[str]) -> list[Component]:
        """Components by name, in stack order; all when `names` is empty."""
        known = {c.name: c for c in self.components}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ComponentError(f"unknown component(s) {unknown}; known: {sorted(known)}")
        return [c for c in self.components if not names or c.name in names]

    def pid(self, component: Component) -> int | None:
        """The PID this project started for the component, if that process still runs."""
        try:
            pid_text, started = self.paths.pidfile(component.name).read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if _start_time(pid) == started else None

    def _spawn(self, component: Component) -> int:
        launch = component.launch(self.paths)
        log = self.paths.log(component.name).open("ab")
        log.write(f"\n--- leaky stack: starting {component.name} ---\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                launch.argv,
                env={**os.environ, **launch.env},
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
                user=launch.user if os.geteuid() == 0 else None,
            )
        except OSError as exc:
            raise ComponentError(f"{component.name}: cannot run {launch.argv[0]}: {exc}") from exc
        finally:
            log.close()
        started = _start_time(process.pid) or "0"
        self.paths.pidfile(component.name).write_text(f"{process.pid} {started}\n")
        _detach(process)
        return process.pid

    def _wait_ready(self, pending: dict[str, tuple[Component, int]]) -> None:
        deadlines = {n: self._monotonic() + c.startup_timeout for n, (c, _) in pending.items()}
        while pending:
            for name, (component, pid) in list(pending.items()):
                log = self.paths.log(name)
                # Liveness first: another server answering on the port is not ours being ready.
                if _start_time(pid) is None:
                    raise ComponentError(f"{name} exited during start-up; see its log: {log}")
                if component.ready(self.paths) and _start_time(pid) is not None:
                    try:
                        component.after_ready(self.paths)
                    except Exception as error:  # name the component whatever the driver raised
                        raise ComponentError(
                            f"{name}: set-up after start failed: {error}; see its log: {log}"
                        ) from error
                    self._say(f"{name}: ready at {component.address} (pid {pid})")
                    del pending[name]
                elif self._monotonic() > deadlines[name]:
                    raise ComponentError(
                        f"{name} not ready after {component.startup_timeout:.0f} s; "
                        f"see its log: {self.paths.log(name)}"
                    )
            time.sleep(0.2)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One `up`/`down` at a time per stack directory (a second one waits)."""
        lock = (self.paths.root / "run").joinpath(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def up(self, names: Sequence[str] = ()) -> None:
        """Provision, prepare, start and health-wait; running healthy components are kept, and
        one of ours that runs but is not ready yet is waited for, never killed."""
        with self._exclusive():
            pending: dict[str, tuple[Component, int]] = {}
            for component in self.select(names):
                self._stopped_marker(component).unlink(missing_ok=True)
                pid = self.pid(component)
                if pid is not None and component.ready(self.paths):
                    self._say(f"{component.name}: already running (pid {pid})")
                    continue
                if pid is not None:
                    self._say(f"{component.name}: running (pid {pid}), not ready yet; waiting")
                    pending[component.name] = (component, pid)
                    continue
                if tcp_open(component.address):
                    raise ComponentError(
                        f"{component.name}: {component.address} is already taken by a process "
                        f"this stack did not start; stop it, or move the port with "
                        f"LEAKY_STACK_{component.name.upper().replace('-', '_')}_PORT"
                    )
                self._say(f"{component.name}: provisioning")
                component.provision(self.paths)
                component.prepare(self.paths)
                pending[component.name] = (component, self._spawn(component))
            self._wait_ready(pending)

    def provision(self, names: Sequence[str] = ()) -> None:
        """Only download or build what the components need (no start): the slow, cacheable
        part of a cold `up`, runnable ahead of time."""
        for component in self.select(names):
            self._say(f"{component.name}: provisioning")
            component.provision(self.paths)

    def _stopped_marker(self, component: Component) -> Path:
        return self.paths.pidfile(component.name).with_suffix(".down")

    def _stop(self, component: Component, pid: int) -> None:
        stop_signal = getattr(component, "stop_signal", signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, stop_signal)
        deadline = self._monotonic() + getattr(component, "stop_timeout", 30.0)
        while _start_time(pid) is not None and self._monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if _start_time(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.paths.pidfile(component.name).unlink(missing_ok=True)

    def down(self, names: Sequence[str] = ()) -> None:
        """Stop, in reverse order, only what this project started (by recorded PID). A
        supervising `up --watch` leaves components stopped this way alone."""
        with self._exclusive():
            for component in reversed(self.select(names)):
                self._stopped_marker(component).touch()
                self._down_one(component)

    def _down_one(self, component: Component) -> None:
        pid = self.pid(component)
        if pid is None:
            self.paths.pidfile(component.name).unlink(missing_ok=True)
            return
        self._say(f"{component.name}: stopping pid {pid}")
        self._stop(component, pid)

    def status(self, names: Sequence[str] = ()) -> list[Status]:
        """Each component's address, PID and health."""
        rows = []
        for component in self.select(names):
            pid = self.pid(component)
            if pid is None:
                state = "stopped"
            else:
                state = "healthy" if component.ready(self.paths) else "unhealthy"
            rows.append(Status(component.name, component.address, pid, state))
        return rows

    def supervise(self, names: Sequence[str] = (), interval: float = 2.0) -> None:
        """Keep the components running: restart any that dies. Returns on KeyboardInterrupt."""
        chosen = self.select(names)
        while True:
            for component in chosen:
                stopped_on_purpose = self._stopped_marker(component).exists()
                if self.pid(component) is None and not stopped_on_purpose:
                    self._say(f"{component.name}: not running; restarting")
                    try:
                        self.up([component.name])
                    except ComponentError as error:
                        self._say(f"{component.name}: restart failed: {error}")
            time.sleep(interval)


def format_status(rows: list[Status]) -> str:
    """A fixed-width table."""
    table = [("component", "address", "pid", "health")]
    table += [(r.name, r.address, str(r.pid or "-"), r.state) for r in rows]
    return format_table(table)
