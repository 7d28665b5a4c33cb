"""Key layout: every key one request touches hashes to one Redis Cluster slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import Subject


def keys_of(layout: KeyLayout, subject: Subject) -> list[str]:
    base = layout.base_for(subject)
    levels = [Level.USER_BUCKET, Level.USER_QUOTA]
    if subject.org_id:
        levels += [Level.ORG_BUCKET, Level.ORG_QUOTA]
    return [
        *(layout.level_key(base, lv, subject) for lv in levels),
        layout.decision_key(base, "d-1"),
        layout.reservation_key(base, "r-1"),
        layout.idempotency_key(base, "c", subject, "k"),
        layout.grant_key(base, "g-1"),
        base + "ev",
        base + "rz",
    ]


@pytest.mark.parametrize(
    "subject", [Subject("alice", "openai"), Subject("alice", "openai", "acme{1}")]
)
def test_every_key_of_a_request_shares_one_slot(subject: Subject) -> None:
    keys = keys_of(KeyLayout(), subject)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert len(set(keys)) == len(keys)


def test_members_of_an_org_share_its_shard_and_keep_their_own_user_levels() -> None:
    layout = KeyLayout()
    alice, bob = Subject("alice", "openai", "acme"), Subject("bob", "openai", "acme")
    assert layout.base_for(alice) == layout.base_for(bob)
    base = layout.base_for(alice)
    assert layout.level_key(base, Level.ORG_BUCKET, alice) == layout.level_key(
        base, Level.ORG_BUCKET, bob
    )
    assert layout.level_key(base, Level.USER_BUCKET, alice) != layout.level_key(
        base, Level.USER_BUCKET, bob
    )
    # Alice inside the org and Alice alone are different user levels (ADR 0021).
    alone = Subject("alice", "openai")
    assert layout.level_key(layout.base_for(alone), Level.USER_BUCKET, alone) != (
        layout.level_key(base, Level.USER_BUCKET, alice)
    )


def test_ids_holding_the_field_separator_are_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        KeyLayout().base_for(Subject("al\x1fice", "openai"))
    with pytest.raises(ValueError, match="braces"):
        KeyLayout(prefix="a{b}")
