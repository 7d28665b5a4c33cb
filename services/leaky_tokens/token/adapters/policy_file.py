"""The policy file in force: loaded at start, reloaded on SIGHUP and when the file changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from leaky_tokens.token.adapters.config_files import load_policy
from leaky_tokens.token.domain.policy import Policy
from leaky_tokens.token.domain.policy_parse import PolicyError

log = logging.getLogger(__name__)


class PolicyFile:
    """A PolicySource over one file (ADR 0023).

    The Policy is immutable and `current` is replaced by one reference assignment, so a
    request that took its snapshot keeps deciding by it while a reload swaps in the next.
    A file that does not load is refused with an error naming file:line; the old policy stays.
    """

    def __init__(self, path: Path, policy: Policy | None = None) -> None:
        self.path = path
        self._policy = policy if policy is not None else load_policy(path)
        self._seen = self._stamp()
        self._task: asyncio.Task[None] | None = None
        self._signal = False
        self.reloads = 0  # policies swapped in since start (tests and logs read it)

    @property
    def current(self) -> Policy:
        return self._policy

    def reload(self) -> bool:
        """Load the file again; True when a new policy is in force."""
        self._seen = self._stamp()
        try:
            policy = load_policy(self.path)
        except PolicyError as error:
            log.error("policy reload refused, the old policy stays: %s", error)
            return False
        self._policy = policy
        self.reloads += 1
        log.info("policy reloaded", extra={"policy": str(self.path)})
        return True

    def check(self) -> bool:
        """Reload when the file's mtime, size or inode changed since the last load."""
        if self._stamp() == self._seen:
            return False
        return self.reload()

    def start(self, poll_seconds: float, *, on_sighup: bool = True) -> None:
        """Poll the file every `poll_seconds` (0: never) and reload on SIGHUP if asked."""
        if on_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                # Only the main thread's loop may own a signal (tests run elsewhere too).
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
                self._signal = True
        if poll_seconds > 0:
            self._task = asyncio.create_task(self._poll(poll_seconds), name="policy-file")

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
            self.check()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
