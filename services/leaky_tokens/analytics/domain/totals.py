"""Rollup totals: what one bucket (or a merge of buckets) of usage adds up to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from leaky_tokens.analytics.domain.facts import UsageFact


@dataclass(slots=True)
class UserShare:
    """One user's decisions in a bucket: tokens requested (denied included) and events."""

    tokens: int = 0
    events: int = 0


@dataclass(slots=True)
class Totals:
    """Sums over a set of usage facts; `users` has an entry per user with a decision."""

    events: int = 0
    allowed_events: int = 0
    tokens: int = 0
    allowed_tokens: int = 0
    refunded_tokens: int = 0
    users: dict[str, UserShare] = field(default_factory=dict)

    @property
    def denied_events(self) -> int:
        return self.events - self.allowed_events

    @property
    def denied_tokens(self) -> int:
        return self.tokens - self.allowed_tokens

    @property
    def unique_users(self) -> int:
        return len(self.users)

    def add(self, fact: UsageFact) -> None:
        """Count one fact in."""
        if not self.add_sums(fact):
            return
        share = self.users.get(fact.user_id)
        if share is None:
            share = self.users[fact.user_id] = UserShare()
        share.tokens += fact.tokens
        share.events += 1

    def add_sums(self, fact: UsageFact) -> bool:
        """Count one fact into the sums only (not `users`); whether it was a decision."""
        if not fact.kind.is_decision:
            self.refunded_tokens += fact.tokens
            return False
        self.events += 1
        self.tokens += fact.tokens
        if fact.allowed:
            self.allowed_events += 1
            self.allowed_tokens += fact.tokens
        return True

    def merge(self, other: Totals) -> None:
        """Add another bucket's totals in."""
        self.events += other.events
        self.allowed_events += other.allowed_events
        self.tokens += other.tokens
        self.allowed_tokens += other.allowed_tokens
        self.refunded_tokens += other.refunded_tokens
        for user, theirs in other.users.items():
            share = self.users.get(user)
            if share is None:
                self.users[user] = UserShare(theirs.tokens, theirs.events)
            else:
                share.tokens += theirs.tokens
                share.events += theirs.events

    def subtract(self, other: Totals) -> None:
        """Take out a bucket's totals that were merged in as part of a bigger one (see
        windows.signed_split); a user left with no events drops out.

        Exact when both were read at one state. A projection writing between the two reads
        (a late event in the smaller bucket) can take out a user the bigger one did not have
        yet: such a user is skipped, as one left with no events is dropped.
        """
        self.events -= other.events
        self.allowed_events -= other.allowed_events
        self.tokens -= other.tokens
        self.allowed_tokens -= other.allowed_tokens
        self.refunded_tokens -= other.refunded_tokens
        users = self.users
        for user, theirs in other.users.items():
            share = users.get(user)
            if share is None:
                continue
            share.tokens -= theirs.tokens
            share.events -= theirs.events
            if share.events <= 0:
                del users[user]

    def top_users(self, n: int) -> list[tuple[str, UserShare]]:
        """The n users with the most tokens, most first, ties by user id."""
        ranked = sorted(self.users.items(), key=lambda item: (-item[1].tokens, item[0]))
        return ranked[:n]

    @classmethod
    def of(cls, facts: Iterable[UsageFact]) -> Totals:
        """Totals of these facts (the brute-force reference the rollups must equal)."""
        totals = cls()
        for fact in facts:
            totals.add(fact)
        return totals
