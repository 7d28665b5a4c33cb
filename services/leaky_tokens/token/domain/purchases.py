"""The purchase use cases: start a saga (idempotently per user), show it, list the caller's."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leaky_tokens.runtime.errors import AlreadyExistsError, NotFoundError, Validator
from leaky_tokens.runtime.identity import Caller, refuse_api_key
from leaky_tokens.runtime.ports import Clock, Randomness
from leaky_tokens.token.domain import access
from leaky_tokens.token.domain.peers import Membership, NotOrgMemberError, PolicySource
from leaky_tokens.token.domain.saga import EventType, Purchase, SagaEvent, SagaStatus, event_id
from leaky_tokens.token.domain.saga_ports import SagaStore

DEFAULT_PAGE = 20
MAX_PAGE = 100


class PurchaseKeyReusedError(AlreadyExistsError):
    """The caller's idempotency key started a purchase of something else (HTTP 409)."""

    def __init__(self, first: Purchase) -> None:
        org = f", org {first.org_id}" if first.org_id else ""
        super().__init__(
            "the idempotency key was used for a different purchase "
            f"({first.tokens} tokens of {first.provider!r} for user {first.user_id}{org}); "
            "use a new key for a new purchase",
            reason="IDEMPOTENCY_KEY_REUSED",
            metadata={"sagaId": first.saga_id},
        )


@dataclass(frozen=True, slots=True)
class Started:
    """The purchase Purchase answers with, and whether it is an earlier one (a replay)."""

    purchase: Purchase
    replayed: bool


@dataclass(frozen=True, slots=True)
class PurchasePage:
    """One page of the caller's purchases and the token of the next ("" on the last)."""

    purchases: Sequence[Purchase]
    next_page_token: str


class Purchases:
    """Purchase, GetPurchase and ListPurchases; the saga itself runs elsewhere (the engine)."""

    def __init__(
        self,
        *,
        store: SagaStore,
        policy: PolicySource,
        membership: Membership,
        clock: Clock,
        ids: Randomness,
        limits: access.Limits,
        on_started: Callable[[], None] = lambda: None,
    ) -> None:
        self._store, self._policy, self._members = store, policy, membership
        self._clock, self._ids, self._limits = clock, ids, limits
        self._on_started = on_started  # wakes the relay: the saga's first event is waiting

    async def purchase(
        self, caller: Caller, credential: str, user_id: str, org_id: str, provider: str,
        tokens: int, key: str,
    ) -> Started:  # fmt: skip
        """Record a STARTED saga and its PurchaseRequested in one transaction; a key the
        caller used before answers with that saga, or 409 when it named another purchase."""
        refuse_api_key(caller, "purchase tokens")
        check = Validator()
        access.check_subject(check, self._policy.current, user_id, provider, org_id)
        access.check_tokens(check, "tokens", tokens, self._limits, 1)
        ikey = access.check_key(check, key)
        check.raise_if_any()
        user_id = access.acting_user(caller, user_id)
        await self._check_member(caller, credential, org_id)
        now = self._clock.now()
        saga_id = self._ids.new_id()
        fresh = Purchase(
            saga_id, user_id, org_id or None, provider, tokens, ikey, SagaStatus.STARTED, now, now
        )
        first = SagaEvent(
            EventType.PURCHASE_REQUESTED, fresh,
            event_id(saga_id, EventType.PURCHASE_REQUESTED.value), "", now,
        )  # fmt: skip
        stored = await self._store.start(fresh, first)
        if stored.saga_id == saga_id:
            self._on_started()
            return Started(stored, replayed=False)
        if not stored.same_request(user_id, org_id or None, provider, tokens):
            raise PurchaseKeyReusedError(stored)
        return Started(stored, replayed=True)

    async def get(self, caller: Caller, credential: str, saga_id: str) -> Purchase:
        """The purchase, for its buyer, a member of its org, or ADMIN; NOT_FOUND for anyone
        else, exactly as for a saga that does not exist (existence is not revealed)."""
        check = Validator()
        if check.require("sagaId", saga_id) and len(saga_id) > access.MAX_ID:
            check.fail("sagaId", f"must be at most {access.MAX_ID} characters")
        check.raise_if_any()
        found = await self._store.get(saga_id)
        if found is None or not await self._may_see(caller, credential, found):
            raise NotFoundError(f"no purchase {saga_id}", reason="PURCHASE_NOT_FOUND")
        return found

    async def list(self, caller: Caller, page_size: int, page_token: str) -> PurchasePage:
        """The caller's own purchases (those it bought), newest first."""
        check = Validator()
        if not 0 <= page_size <= MAX_PAGE:
            check.fail("pageSize", f"must be between 0 and {MAX_PAGE} (0: {DEFAULT_PAGE})")
        cursor = _cursor(page_token)
        if cursor is None:
            check.fail("pageToken", "is not a token from an earlier page")
        check.raise_if_any()
        page = await self._store.list_for(caller.user_id, page_size or DEFAULT_PAGE, cursor or 0)
        token = _token(page.next_cursor) if page.next_cursor else ""
        return PurchasePage(page.purchases, token)

    async def _check_member(self, caller: Caller, credential: str, org_id: str) -> None:
        # Membership now, not at login: the JWT's org list may be stale (ADR 0023).
        if (
            org_id
            and not caller.is_admin
            and org_id not in await self._members.org_ids(caller.user_id, credential)
        ):
            raise NotOrgMemberError(org_id)

    async def _may_see(self, caller: Caller, credential: str, p: Purchase) -> bool:
        if caller.is_admin or p.user_id == caller.user_id:
            return True
        if p.org_id is None:
            return False
        return p.org_id in await self._members.org_ids(caller.user_id, credential)


def _token(cursor: int) -> str:
    return base64.urlsafe_b64encode(f"p{cursor}".encode()).decode().rstrip("=")


def _cursor(token: str) -> int | None:
    """The cursor a page token carries (0 for none), None for a token we did not make."""
    if not token:
        return 0
    if len(token) > 40:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not text.startswith("p") or not text[1:].isdigit():
        return None
    return int(text[1:]) or None
