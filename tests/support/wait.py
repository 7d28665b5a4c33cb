"""Waiting in tests: poll a condition until a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time; says what was awaited and the last failure."""


def _timed_out(what: str, timeout: float, last: BaseException | None) -> WaitTimeout:
    tail = f" (last error: {last!r})" if last is not None else ""
    return WaitTimeout(f"{what}: not true after {timeout:g} s{tail}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    what: str = "condition",
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy, and return that. Exceptions of the
    `ignoring` types count as "not yet" (a port not open yet); any other propagates."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if result := predicate():
                return result
        except ignoring as error:
            last = error
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,  # noqa: ASYNC109
    *,
    what: str = ...,
    interval: float = ...,
    ignoring: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T],
    timeout: float,  # noqa: ASYNC109
    *,
    what: str = ...,
    interval: float = ...,
    ignoring: tuple[type[Exception], ...] = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], Any],
    timeout: float,  # noqa: ASYNC109 - the failure names what it waited for and the last error
    *,
    what: str = "condition",
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> Any:
    """`wait_until` for async tests: `predicate` may be a plain or a coroutine function."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except ignoring as error:
            last = error
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)
