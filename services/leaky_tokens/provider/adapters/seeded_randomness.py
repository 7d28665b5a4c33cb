"""StubRandomness from Python's PRNG: OS-seeded by default, reproducible with a seed."""

from __future__ import annotations

import random
import uuid


class SeededRandomness:
    """Ids and draws from one `random.Random`; the same seed gives the same sequence.

    Not for secrets: the stubs draw only response ids and simulated faults.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # noqa: S311 (simulation, not security)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def uniform(self) -> float:
        return self._random.random()
