"""Where a tenant's state lives: its shard (one hash tag, one Cluster slot) and key names."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import Subject

# Separate the fields of one script argument, and the arguments packed into one; an id
# holding either would be ambiguous.
SEP = "\x1f"
RS = "\x1e"

_BUCKET = {
    Level.USER_BUCKET: "b",
    Level.ORG_BUCKET: "b",
    Level.USER_QUOTA: "q",
    Level.ORG_QUOTA: "q",
}


def check_id(value: str, what: str) -> str:
    """An id usable in key names: non-empty and without the field separator."""
    if not value or SEP in value or RS in value:
        raise ValueError(f"{what} must be non-empty and must not contain \\x1e or \\x1f")
    return value


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """`shards` hash tags; a tenant maps to one by CRC32, and all its keys carry that tag.

    The tag is the shard number, not the tenant, so the event streams and reservation
    deadlines are a fixed, known set of `shards` keys the relay and the sweeper can walk.
    Changing `shards` moves every tenant: it is a deployment constant (ADR 0021).
    """

    prefix: str = "lt"
    shards: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 16384:
            raise ValueError("shards must be between 1 and 16384 (Redis Cluster slots)")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain braces (they form the hash tag)")

    def shard(self, tenant: str) -> int:
        """The shard of a tenant (stable across processes and restarts)."""
        return zlib.crc32(tenant.encode()) % self.shards

    def base(self, shard: int) -> str:
        """The common start of every key in one shard, hash tag included."""
        return f"{self.prefix}{{{shard}}}:"

    def base_for(self, subject: Subject) -> str:
        """The key base of the subject's tenant."""
        check_id(subject.user_id, "user id")
        check_id(subject.provider, "provider")
        if subject.org_id is not None:
            check_id(subject.org_id, "org id")
        return self.base(self.shard(subject.tenant))

    def level_key(self, base: str, level: Level, subject: Subject) -> str:
        """The state key of one level.

        A user's levels inside an org live under the org's tenant (`o=<org>:u=<user>`), so one
        script touches one slot; they are the user's share within that org, separate from the
        user's own levels outside any org (`u=<user>`).
        """
        if level in (Level.ORG_BUCKET, Level.ORG_QUOTA):
            owner = f"o={subject.org_id}"
        elif subject.org_id:
            owner = f"o={subject.org_id}:u={subject.user_id}"
        else:
            owner = f"u={subject.user_id}"
        return f"{base}{_BUCKET[level]}:{owner}:{subject.provider}"

    def decision_key(self, base: str, decision_id: str) -> str:
        """The record of one decision (its debit, for refunds and replays)."""
        return f"{base}d:{check_id(decision_id, 'decision id')}"

    def reservation_key(self, base: str, reservation_id: str) -> str:
        """The record of one reservation."""
        return f"{base}r:{check_id(reservation_id, 'reservation id')}"

    def idempotency_key(self, base: str, op: str, subject: Subject, key: str) -> str:
        """A client idempotency key, scoped to the operation, the tenant and the user (ADR 0031).

        The fields are joined by the separator ids cannot hold, so no two scopes share a name;
        the provider is not in the scope: a key reused for another provider is refused.
        """
        scope = SEP.join((subject.tenant, subject.user_id, check_id(key, "idempotency key")))
        return f"{base}i:{op}:{scope}"

    def grant_key(self, base: str, grant_id: str) -> str:
        """The record of one balance grant (a repeat is a no-op)."""
        return f"{base}g:{check_id(grant_id, 'grant id')}"
