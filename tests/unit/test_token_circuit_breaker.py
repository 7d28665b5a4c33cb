"""The provider circuit breaker on a fake monotonic clock."""

from __future__ import annotations

from leaky_tokens.token.adapters.circuit_breaker import BreakerState, CircuitBreaker


def state(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call (so a type checker does not pin it between calls)."""
    return breaker.state


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_circuit_opens_after_the_threshold_and_lets_one_trial_through_after_reset() -> None:
    t = Ticks()
    breaker = CircuitBreaker(3, 10.0, t)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert state(breaker) is BreakerState.CLOSED
    breaker.failed()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    t.now = 9.9
    assert not breaker.allow()
    t.now = 10.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while it is out
    breaker.failed()  # the trial failed: open again for a full reset time
    assert state(breaker) is BreakerState.OPEN
    t.now = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker(2, 1.0, Ticks())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert state(breaker) is BreakerState.CLOSED


def test_an_abandoned_call_counts_nothing_and_an_abandoned_trial_lets_the_next_call_try() -> None:
    t = Ticks()
    breaker = CircuitBreaker(2, 10.0, t)
    breaker.failed()
    for _ in range(5):  # callers gone mid-call: not failures
        assert breaker.allow()
        breaker.abandoned(trial=False)
    assert state(breaker) is BreakerState.CLOSED
    breaker.failed()  # the second failure in a row still opens it
    assert state(breaker) is BreakerState.OPEN
    t.now = 10.0
    assert breaker.allow()  # the trial ...
    breaker.abandoned(trial=False)  # ... an older call abandoned meanwhile changes nothing
    assert not breaker.allow()
    breaker.abandoned(trial=True)  # the trial's caller went away
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the next call is the trial now
    assert not breaker.allow()
    breaker.succeeded()
    assert state(breaker) is BreakerState.CLOSED
