"""A stub payment provider: holds, captures and releases in memory, failing as configured."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from leaky_tokens.token.domain.saga import Outcome, Purchase


@dataclass(frozen=True, slots=True)
class PaymentStubConfig:
    """How the stub behaves (the saga_payment_* settings)."""

    latency_ms: int = 0  # each call sleeps this long, as a real provider's round trip
    failure_rate: float = 0.0  # share of reserves declined, 0.0 to 1.0
    decline_reason: str = "card declined"
    decline_above_tokens: int = 0  # reserves for more tokens are declined; 0 = no such rule
    capture_failure_rate: float = 0.0  # share of captures that fail, 0.0 to 1.0
    seed: str = ""  # mixes into each saga's draw; another seed, other sagas fail


class StubPaymentGateway:
    """PaymentGateway without money: decisions are a deterministic draw per saga id.

    The draw hashes the seed and the saga id, so a saga's answer is the same on every
    redelivery and in every process (a Faust worker restarted mid-saga answers alike), and a
    test picks outcomes with the rates 0.0 and 1.0 or `decline_above_tokens`. Holds live in
    this process only; a real provider would be one more adapter of the port. The counters
    say how often each effect really happened (tests check compensation ran exactly once).
    """

    def __init__(self, config: PaymentStubConfig | None = None) -> None:
        self._c = config or PaymentStubConfig()
        self._state: dict[str, str] = {}  # saga id -> reserved | captured | released
        self.reserved = self.captured = self.released = 0

    async def reserve(self, purchase: Purchase) -> Outcome:
        await self._wait()
        sid = purchase.saga_id
        state = self._state.get(sid)
        if state == "released":  # released (recovery) before this reserve came: too late
            return Outcome(ok=False, reason="payment released before it was reserved")
        if state is None:
            if self._declines(purchase):
                return Outcome(ok=False, reason=self._c.decline_reason)
            self._state[sid] = "reserved"
            self.reserved += 1
        return Outcome(ok=True, payment_id=payment_id(sid))

    async def capture(self, purchase: Purchase) -> Outcome:
        await self._wait()
        sid = purchase.saga_id
        state = self._state.get(sid)
        if state == "captured":
            return Outcome(ok=True, payment_id=payment_id(sid))
        # An unknown saga was held by this stub before a restart: it is captured as held.
        if state == "released" or self._draw(sid, "capture") < self._c.capture_failure_rate:
            return Outcome(ok=False, reason="payment capture failed")
        self._state[sid] = "captured"
        self.captured += 1
        return Outcome(ok=True, payment_id=payment_id(sid))

    async def release(self, purchase: Purchase) -> None:
        await self._wait()
        if self._state.get(purchase.saga_id) in (None, "reserved"):
            if self._state.get(purchase.saga_id) == "reserved":
                self.released += 1
            self._state[purchase.saga_id] = "released"

    def _declines(self, p: Purchase) -> bool:
        if self._c.decline_above_tokens and p.tokens > self._c.decline_above_tokens:
            return True
        return self._draw(p.saga_id, "reserve") < self._c.failure_rate

    def _draw(self, saga_id: str, what: str) -> float:
        digest = hashlib.sha256(f"{self._c.seed}\0{what}\0{saga_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    async def _wait(self) -> None:
        if self._c.latency_ms > 0:
            await asyncio.sleep(self._c.latency_ms / 1000)


def payment_id(saga_id: str) -> str:
    """The stub's hold id of a saga (stable, so a repeated reserve answers alike)."""
    return f"pay_{saga_id}"
