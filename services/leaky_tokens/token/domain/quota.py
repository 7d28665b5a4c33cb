"""Quota windows and purchased balances: debit window first, refund to where it came from."""

from __future__ import annotations

from dataclasses import dataclass

from leaky_tokens.token.domain.units import SAFE_LIMIT


@dataclass(frozen=True, slots=True)
class QuotaLimit:
    """The window allowance (tokens) and the bounds of the window that holds now."""

    allowance: int
    window_start_ms: int
    window_end_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.allowance < SAFE_LIMIT:
            raise ValueError(f"quota allowance out of range: {self.allowance}")
        if self.window_end_ms <= self.window_start_ms:
            raise ValueError("a quota window must end after it starts")


@dataclass(frozen=True, slots=True)
class QuotaState:
    """Tokens `used` in the window starting at `window_start_ms`, and the purchased `balance`.

    The balance is a separate account: a new window resets `used`, never the balance, so a
    purchase is spent once and never turns into a recurring allowance.
    """

    window_start_ms: int = 0
    used: int = 0
    balance: int = 0


@dataclass(frozen=True, slots=True)
class QuotaDebit:
    """Where a debit came from: `from_window` in the window starting at `window_start_ms`."""

    window_start_ms: int
    from_window: int = 0
    from_balance: int = 0

    @property
    def total(self) -> int:
        """Tokens debited."""
        return self.from_window + self.from_balance

    def last(self, tokens: int) -> QuotaDebit:
        """The part of this debit a refund of `tokens` gives back: balance first (LIFO)."""
        tokens = min(tokens, self.total)
        from_balance = min(tokens, self.from_balance)
        return QuotaDebit(self.window_start_ms, tokens - from_balance, from_balance)


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """Whether tokens fit: the rolled state, the state and debit if so, and the wait if not.

    `wait_ms` is 0 when the tokens fit, the time until the window ends when a fresh window
    would hold them, and None when no window can (they exceed allowance plus balance).
    """

    state: QuotaState
    after: QuotaState | None
    debit: QuotaDebit | None
    wait_ms: int | None


def roll(limit: QuotaLimit, state: QuotaState) -> QuotaState:
    """Start the current window if the stored one is older; a clock gone back keeps the newer."""
    if limit.window_start_ms > state.window_start_ms:
        return QuotaState(limit.window_start_ms, 0, state.balance)
    return state


def window_remaining(limit: QuotaLimit, state: QuotaState) -> int:
    """Allowance left in the window (zero when a reload lowered it below what was used)."""
    return max(0, limit.allowance - state.used)


def check(limit: QuotaLimit, state: QuotaState, tokens: int, now_ms: int) -> QuotaCheck:
    """Roll the window, then debit `tokens` from the window allowance first, then the balance.

    As for buckets, a zero-token check passes only while one token is still available.
    """
    if tokens < 0:
        raise ValueError("tokens must not be negative")
    current = roll(limit, state)
    available = window_remaining(limit, current)
    probe = max(tokens, 1)
    # Compared as "the part beyond the window fits the balance": no sum that could pass 2**53.
    if probe - min(probe, available) <= current.balance:
        from_window = min(tokens, available)
        debit = QuotaDebit(current.window_start_ms, from_window, tokens - from_window)
        after = QuotaState(
            current.window_start_ms,
            current.used + from_window,
            current.balance - debit.from_balance,
        )
        return QuotaCheck(current, after, debit, 0)
    fits_next_window = probe - min(probe, limit.allowance) <= current.balance
    wait = max(0, limit.window_end_ms - now_ms) if fits_next_window else None
    return QuotaCheck(current, None, None, wait)


def refund(limit: QuotaLimit, state: QuotaState, debit: QuotaDebit) -> QuotaState:
    """Give `debit` back where it came from.

    The balance part always returns to the balance. The window part returns to the window
    only while that window is current: a window that has ended was replaced by a full new
    allowance, and crediting that one would hand out tokens no window ever granted.
    """
    current = roll(limit, state)
    used = current.used
    if current.window_start_ms == debit.window_start_ms:
        used -= min(used, debit.from_window)
    return QuotaState(current.window_start_ms, used, current.balance + debit.from_balance)


def charge_fitting(
    limit: QuotaLimit, state: QuotaState, tokens: int
) -> tuple[QuotaState, QuotaDebit, int]:
    """Charge up to `tokens` (window, then balance); returns state, debit and the overage."""
    if tokens < 0:
        raise ValueError("tokens must not be negative")
    current = roll(limit, state)
    from_window = min(tokens, window_remaining(limit, current))
    from_balance = min(tokens - from_window, current.balance)
    debit = QuotaDebit(current.window_start_ms, from_window, from_balance)
    after = QuotaState(
        current.window_start_ms, current.used + from_window, current.balance - from_balance
    )
    return after, debit, tokens - debit.total


def credit(state: QuotaState, tokens: int) -> QuotaState:
    """Add purchased tokens to the balance (a grant or a completed purchase)."""
    if tokens < 0:
        raise ValueError("a credit must not be negative")
    if state.balance + tokens >= SAFE_LIMIT:
        raise ValueError("the purchased balance would reach 2**53")
    return QuotaState(state.window_start_ms, state.used, state.balance + tokens)
