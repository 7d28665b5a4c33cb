"""The native stack for integration tests: reuse what runs, start what does not, and stop
afterwards only what the tests started."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from leaky_tokens.stack.component import Component, StackPaths
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.registry import default_components

# Components this test session started (and will stop); others belong to someone else.
STARTED_BY_TESTS: set[str] = set()


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Every stack component up and healthy for the duration."""
    # The servers only: tests run their own saga workers on their own topics and groups, and
    # a stack worker would consume the real purchase topic with the real saga parts.
    components = default_components(workers=False)
    stack = Stack(components, StackPaths.default(), say=lambda line: print(line))
    # Running (a live PID) is someone else's, healthy or not: a component whose readiness probe
    # fails on a loaded machine, or that another session is starting, is waited for by `up`
    # and must not be stopped after this session (that restarted the shared Cassandra under
    # everyone's tests). Decided before `up`, so a start-up that fails half way is cleaned up.
    before = {row.name for row in stack.status() if row.state != "stopped"}
    started = [c.name for c in stack.components if c.name not in before]
    STARTED_BY_TESTS.update(started)
    try:
        stack.up()
        yield stack
    finally:
        if started:
            stack.down(started)


def component(stack: Stack, name: str) -> Component:
    """One component of the stack, by name."""
    (found,) = stack.select([name])
    return found
