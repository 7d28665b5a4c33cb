"""The stack orchestrator with stand-in processes: idempotent up, safe down, clear errors."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import warnings
from pathlib import Path

import pytest

from leaky_tokens.stack.component import Component, ComponentError, Launch, StackPaths
from leaky_tokens.stack.orchestrator import Stack
from tests.support.wait import wait_until


class Sleeper(Component):
    """A process that runs until signalled; ready once it has written its marker file."""

    startup_timeout = 10.0
    stop_timeout = 5.0

    def __init__(self, name: str, exit_at_once: bool = False, never_ready: bool = False):
        self.name = name
        self.exit_at_once = exit_at_once
        self.never_ready = never_ready
        self.provisioned = 0

    @property
    def address(self) -> str:
        return "127.0.0.1:0"

    def provision(self, paths: StackPaths) -> None:
        self.provisioned += 1

    def launch(self, paths: StackPaths) -> Launch:
        marker = paths.data(self.name) / "up"
        marker.unlink(missing_ok=True)
        code = (
            "import sys; sys.exit(3)"
            if self.exit_at_once
            else (f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(300)")
        )
        return Launch([sys.executable, "-c", code])

    def ready(self, paths: StackPaths) -> bool:
        return not self.never_ready and (paths.data(self.name) / "up").exists()


def make_stack(tmp_path: Path, *components: Component, timeout: float | None = None) -> Stack:
    if timeout is not None:
        for c in components:
            c.startup_timeout = timeout
    return Stack(list(components), StackPaths(tmp_path / "stack", tmp_path / "cache"), say=print)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_up_is_idempotent_and_down_stops_what_it_started(tmp_path: Path) -> None:
    a, b = Sleeper("a"), Sleeper("b")
    stack = make_stack(tmp_path, a, b)
    stack.up()
    pids = {c.name: stack.pid(c) for c in (a, b)}
    assert all(pids.values())
    stack.up()  # already running and healthy: nothing restarts
    assert {c.name: stack.pid(c) for c in (a, b)} == pids
    assert a.provisioned == 1
    assert [r.state for r in stack.status()] == ["healthy", "healthy"]
    stack.down()
    assert [r.state for r in stack.status()] == ["stopped", "stopped"]
    assert not any(alive(p) for p in pids.values() if p)


def test_down_never_signals_a_reused_pid(tmp_path: Path) -> None:
    a = Sleeper("a")
    stack = make_stack(tmp_path, a)
    # A pid file naming a live process that is not ours (our own pid, wrong start time).
    stack.paths.pidfile("a").write_text(f"{os.getpid()} 1\n")
    assert stack.pid(a) is None
    stack.down()
    assert alive(os.getpid())


def test_a_component_that_dies_at_start_is_named_with_its_log(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, Sleeper("broken", exit_at_once=True))
    with pytest.raises(ComponentError, match=r"broken exited during start-up.*broken\.log"):
        stack.up()


def test_a_component_that_never_gets_ready_times_out_by_name(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, Sleeper("slow", never_ready=True), timeout=1.0)
    try:
        with pytest.raises(ComponentError, match=r"slow not ready after 1 s.*slow\.log"):
            stack.up()
    finally:
        stack.down()


def test_a_crashed_component_is_restarted_by_up(tmp_path: Path) -> None:
    a = Sleeper("a")
    stack = make_stack(tmp_path, a)
    stack.up()
    first = stack.pid(a)
    assert first is not None
    os.killpg(first, signal.SIGKILL)
    wait_until(lambda: stack.pid(a) is None, 5, what="the killed component gone")
    assert [r.state for r in stack.status()] == ["stopped"]
    stack.up()
    second = stack.pid(a)
    assert second is not None
    assert second != first
    stack.down()


def test_unknown_component_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComponentError, match="unknown component"):
        make_stack(tmp_path, Sleeper("a")).up(["nope"])


class Squatter(Sleeper):
    """A component whose port is already taken by someone else."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(name)
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self, paths: StackPaths) -> bool:
        return True  # whatever holds the port answers: that must not count as ours


def test_a_port_held_by_a_stranger_is_refused_not_reported_ready(tmp_path: Path) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        squatter = Squatter("redis", stranger.getsockname()[1])
        stack = make_stack(tmp_path, squatter)
        with pytest.raises(ComponentError, match=r"redis: 127\.0\.0\.1:\d+ is already taken"):
            stack.up()
        assert squatter.provisioned == 0
        assert [r.state for r in stack.status()] == ["stopped"]


def test_down_marks_components_so_supervision_leaves_them_stopped(tmp_path: Path) -> None:
    a = Sleeper("a")
    stack = make_stack(tmp_path, a)
    stack.up()
    stack.down()
    assert stack.paths.pidfile("a").with_suffix(".down").exists()
    stack.up()  # an explicit up clears the mark
    assert not stack.paths.pidfile("a").with_suffix(".down").exists()
    stack.down()


def test_the_handle_of_a_started_daemon_is_let_go_without_a_resource_warning(
    tmp_path: Path,
) -> None:
    stack = make_stack(tmp_path, Sleeper("a"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack.up()
        gc.collect()  # drops the Popen handle while the daemon runs
    try:
        assert stack.pid(stack.components[0]) is not None
        assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []
    finally:
        stack.down()
