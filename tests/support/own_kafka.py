"""A Kafka broker of a test's own, on its own ports and data directory, that the test stops
and starts again (the shared stack's broker serves other tests and is never restarted).

The broker is the stack's own Kafka component (the jars the shared stack already cached),
launched by the test: `own_broker(root)` yields it started and stops it afterwards.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.kafka import Kafka, metadata_ready
from tests.support.net import quiet_port
from tests.support.wait import wait_until

STARTUP = 180.0  # a cold JVM on a loaded 2-core machine; a bound, never asserted on


class OwnBroker:
    """One KRaft broker on free ports under `root`; its data survives `stop()`/`start()`."""

    def __init__(self, root: Path) -> None:
        self.kafka = Kafka(port=quiet_port(), controller_port=quiet_port())
        self.paths = StackPaths(root, StackPaths.default().cache)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port to bootstrap from."""
        return self.kafka.address

    def start(self) -> None:
        """Launch the broker and wait until it answers a Metadata request."""
        self.kafka.provision(self.paths)  # the jars the shared stack already cached
        self.kafka.prepare(self.paths)
        launch = self.kafka.launch(self.paths)
        with self.paths.log("kafka").open("ab") as out:
            self.process = subprocess.Popen(
                launch.argv, cwd=launch.cwd, env={**os.environ, **launch.env},
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: metadata_ready(self.kafka.address), STARTUP, what="own kafka broker")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it hangs; a no-op when not running."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
            self.process = None


@contextmanager
def own_broker(root: Path) -> Iterator[OwnBroker]:
    """A started OwnBroker under `root`, stopped on exit (a fixture's body)."""
    broker = OwnBroker(root)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
