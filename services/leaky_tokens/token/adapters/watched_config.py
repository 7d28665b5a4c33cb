"""A configuration file or directory in force: reloaded on SIGHUP and when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from leaky_tokens.token.domain.policy_parse import PolicyError

log = logging.getLogger(__name__)
T = TypeVar("T")
Stamp = tuple[tuple[str, int, int, int], ...] | None


class Reloadable(Protocol):
    """What a Reloader drives."""

    def reload(self) -> bool:
        """Load again now; True when a new value is in force."""

    def check(self) -> bool:
        """Reload if the source changed since the last load."""


class WatchedConfig(Generic[T]):
    """The value loaded from `path` (a file, or a directory of *.yaml), swapped on reload.

    The value is immutable and `current` is replaced by one reference assignment after the
    whole source parsed, so a request that took its snapshot decides by it alone while a
    reload swaps in the next: never a mix of an old and a new file. A source that does not
    load is refused with an error naming file:line; the old value stays (ADR 0023, 0031).
    """

    def __init__(
        self, path: Path, load: Callable[[Path], T], what: str, value: T | None = None
    ) -> None:
        self.path, self._load, self.what = path, load, what
        self._seen = self._stamp()
        self._value = value if value is not None else load(path)
        self._reloader: Reloader | None = None
        self.reloads = 0  # values swapped in since start (tests and logs read it)

    @property
    def current(self) -> T:
        return self._value

    def reload(self) -> bool:
        """Load the source again; True when a new value is in force."""
        self._seen = self._stamp()
        try:
            value = self._load(self.path)
        except (PolicyError, OSError, UnicodeDecodeError) as error:
            log.error("%s reload refused, the old %s stays: %s", self.what, self.what, error)
            return False
        self._value = value
        self.reloads += 1
        log.info("%s reloaded", self.what, extra={"config": str(self.path)})
        return True

    def check(self) -> bool:
        """Reload when a file's mtime, size or inode (or a directory's listing) changed."""
        if self._stamp() == self._seen:
            return False
        return self.reload()

    def start(self, poll_seconds: float, *, on_sighup: bool = True) -> None:
        """Watch this source alone (several sources share one `Reloader` instead)."""
        self._reloader = Reloader([self])
        self._reloader.start(poll_seconds, on_sighup=on_sighup)

    async def stop(self) -> None:
        """Stop what `start` started."""
        if self._reloader is not None:
            await self._reloader.stop()
            self._reloader = None

    def _stamp(self) -> Stamp:
        try:
            if self.path.is_dir():
                files = sorted(self.path.glob("*.yaml"))
                return tuple(_file_stamp(p) for p in [self.path, *files])
            return (_file_stamp(self.path),)
        except OSError:
            return None


def _file_stamp(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (path.name, st.st_mtime_ns, st.st_size, st.st_ino)


class Reloader:
    """One SIGHUP handler and one poll task for several sources.

    An event loop keeps one handler per signal, so the policy file and the RLS config files
    share this one rather than replacing each other's.
    """

    def __init__(self, sources: Sequence[Reloadable]) -> None:
        self._sources = tuple(sources)
        self._task: asyncio.Task[None] | None = None
        self._signal = False

    def reload(self) -> None:
        """Reload every source (what SIGHUP does); each refuses a bad file on its own."""
        for source in self._sources:
            source.reload()

    def start(self, poll_seconds: float, *, on_sighup: bool = True) -> None:
        """Poll every `poll_seconds` (0: never) and reload on SIGHUP if asked."""
        if not self._sources:
            return
        if on_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                # Only the main thread's loop may own a signal (tests run elsewhere too).
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
                self._signal = True
        if poll_seconds > 0:
            self._task = asyncio.create_task(self._poll(poll_seconds), name="config-files")

    async def stop(self) -> None:
        """Stop polling and give SIGHUP back."""
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            for source in self._sources:
                source.check()
