"""The token use cases: consume, reserve/settle/release, quota reads and grants."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from leaky_tokens.runtime.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Validator,
)
from leaky_tokens.runtime.identity import Caller, refuse_api_key
from leaky_tokens.runtime.ports import Clock, Randomness
from leaky_tokens.token.domain import access
from leaky_tokens.token.domain.decision import Allowed, Denied, Level, Snapshot
from leaky_tokens.token.domain.peers import (
    ChatCall,
    ChatProvider,
    Membership,
    NotOrgMemberError,
    PolicySource,
)
from leaky_tokens.token.domain.policy import LevelLimits, Policy
from leaky_tokens.token.domain.ports import (
    DecisionRequest,
    DecisionStore,
    ReserveRequest,
    Subject,
)
from leaky_tokens.token.domain.reservation import Reserved, Settlement
from leaky_tokens.token.domain.units import to_ms


@dataclass(frozen=True, slots=True)
class Scope:
    """What one request was decided under: the policy snapshot, the levels and the time."""

    policy: Policy
    subject: Subject
    limits: LevelLimits
    tier: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class Consumed:
    """An allowed consume and the provider's answer (None on a replay: no second call)."""

    scope: Scope
    decision_id: str
    allowed: Allowed
    replayed: bool
    provider_response: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class Held:
    """A granted reservation."""

    scope: Scope
    reserved: Reserved
    replayed: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """A settled or released reservation."""

    scope: Scope
    settlement: Settlement


@dataclass(frozen=True, slots=True)
class QuotaView:
    """A subject's levels read at `scope.now_ms` (nothing changed)."""

    scope: Scope
    snapshot: Snapshot
    grant_id: str = ""
    replayed: bool = False


class LimitDeniedError(ResourceExhaustedError):
    """A level refused the request; nothing was debited. The reason is the worst refusal."""

    def __init__(self, scope: Scope, decision_id: str, denied: Denied) -> None:
        wait = denied.retry_after_ms
        super().__init__(
            f"{denied.reason.value.lower().replace('_', ' ')} at {denied.level.value}",
            retry_after_seconds=0.0 if wait is None else wait / 1000,
            reason=denied.reason.value,
            metadata={"level": denied.level.value, "provider": scope.subject.provider},
        )
        self.scope, self.decision_id, self.denied = scope, decision_id, denied


class Metering:
    """Every token use case; one policy snapshot and one store call per decision."""

    def __init__(
        self,
        *,
        policy: PolicySource,
        store: DecisionStore,
        membership: Membership,
        provider: ChatProvider,
        clock: Clock,
        ids: Randomness,
        limits: access.Limits,
        max_reservation_ttl: timedelta,
    ) -> None:
        self._policy, self._store, self._members = policy, store, membership
        self._provider, self._clock, self._ids = provider, clock, ids
        self._limits, self._max_ttl = limits, max_reservation_ttl

    async def consume(
        self, caller: Caller, credential: str, user_id: str, org_id: str, provider: str,
        tokens: int, prompt: str, key: str,
    ) -> Consumed:  # fmt: skip
        """Check and debit every level, then call the provider; refund it all if that fails."""
        policy = self._policy.current
        check = Validator()
        access.check_subject(check, policy, user_id, provider, org_id)
        access.check_tokens(check, "tokens", tokens, self._limits, 1)
        ikey = access.check_key(check, key)
        check.raise_if_any()
        scope = await self._scope(policy, caller, credential, user_id, org_id, provider)
        did = self._ids.new_id()
        request = DecisionRequest(did, scope.subject, scope.limits, tokens, scope.now_ms, ikey)
        outcome = await self._store.decide(request)
        if isinstance(outcome.result, Denied):
            raise LimitDeniedError(scope, outcome.decision_id, outcome.result)
        if outcome.replayed:  # the same request again (the store refuses a key reused otherwise)
            return Consumed(scope, outcome.decision_id, outcome.result, True, None)
        try:
            answer = await self._provider.chat(ChatCall(provider, prompt, credential))
        except BaseException as error:
            # Whatever failed (the provider, or the client went away), nothing was served.
            now_ms = to_ms(self._clock.now())
            cancelled = isinstance(error, asyncio.CancelledError)
            why = "cancelled" if cancelled else "provider call failed"
            await self._store.refund(scope.subject, outcome.decision_id, tokens, now_ms, why)
            raise
        return Consumed(scope, outcome.decision_id, outcome.result, False, answer)

    async def reserve(
        self, caller: Caller, credential: str, user_id: str, org_id: str, provider: str,
        tokens: int, ttl: timedelta | None, key: str,
    ) -> Held:  # fmt: skip
        """Hold an estimate on every level until settled, released or expired."""
        policy = self._policy.current
        check = Validator()
        access.check_subject(check, policy, user_id, provider, org_id)
        access.check_tokens(check, "tokens", tokens, self._limits, 1)
        ikey = access.check_key(check, key)
        if ttl is not None and ttl <= timedelta(0):
            check.fail("ttl", "must be positive (or omitted for the maximum)")
        check.raise_if_any()
        scope = await self._scope(policy, caller, credential, user_id, org_id, provider)
        hold = min(ttl or self._max_ttl, self._max_ttl)
        rid = access.reservation_id(self._ids.new_id(), scope.subject)
        ttl_ms = max(1, hold // timedelta(milliseconds=1))
        request = ReserveRequest(
            rid, scope.subject, scope.limits, tokens, scope.now_ms, ttl_ms, ikey
        )
        outcome = await self._store.reserve(request)
        if isinstance(outcome.result, Denied):
            raise LimitDeniedError(scope, outcome.reservation_id, outcome.result)
        return Held(scope, outcome.result, outcome.replayed)

    async def settle(self, caller: Caller, rid: str, actual: int | None) -> Closed:
        """Settle at `actual` tokens, or release everything when `actual` is None."""
        check = Validator()
        if actual is not None:
            access.check_tokens(check, "actualTokens", actual, self._limits, 0)
        subject = access.reservation_subject(rid)
        if not rid:
            check.fail("reservationId", "is required")
        check.raise_if_any()
        if subject is None:
            raise NotFoundError(f"no reservation {rid}", reason="RESERVATION_NOT_FOUND")
        access.acting_user(caller, subject.user_id)
        policy = self._policy.current
        now_ms = to_ms(self._clock.now())
        if actual is None:
            done = await self._store.release(subject, rid, now_ms)
        else:
            done = await self._store.settle(subject, rid, actual, now_ms)
        if done is None:
            raise NotFoundError(f"no reservation {rid}", reason="RESERVATION_NOT_FOUND")
        _check_closed(done, actual, now_ms)
        limits = _limits_of(done)
        return Closed(Scope(policy, subject, limits, "", now_ms), done)

    async def quota(
        self, caller: Caller, credential: str, user_id: str, org_id: str, provider: str
    ) -> QuotaView:
        """A user's levels (org_id empty) or an organization's, read now."""
        policy = self._policy.current
        check = Validator()
        if org_id:
            check.require("orgId", org_id)
            user_id = caller.user_id
        access.check_subject(check, policy, user_id, provider, org_id)
        check.raise_if_any()
        scope = await self._scope(policy, caller, credential, user_id, org_id, provider)
        return QuotaView(scope, await self._store.read(scope.subject, scope.limits, scope.now_ms))

    async def grant(
        self, caller: Caller, user_id: str, org_id: str, provider: str, tokens: int,
        reason: str, key: str,
    ) -> QuotaView:  # fmt: skip
        """Credit a purchased balance (ADMIN only); a repeated idempotency key credits once."""
        refuse_api_key(caller, "grant tokens")
        if not caller.is_admin:
            raise PermissionDeniedError("only ADMIN may grant tokens", reason="ADMIN_ONLY")
        policy = self._policy.current
        check = Validator()
        access.check_subject(check, policy, user_id, provider, org_id)
        access.check_tokens(check, "tokens", tokens, self._limits, 1)
        access.check_reason(check, reason)
        ikey = access.check_key(check, key)
        check.raise_if_any()
        now = self._clock.now()
        subject = Subject(user_id, provider, org_id or None)
        level = Level.ORG_QUOTA if org_id else Level.USER_QUOTA
        grant_id = ikey or self._ids.new_id()
        credit = await self._store.credit_balance(
            subject, level, tokens, grant_id, to_ms(now), caller.user_id, reason
        )
        view = await self.quota(caller, "", user_id, org_id, provider)
        return QuotaView(view.scope, view.snapshot, credit.grant_id, not credit.changed)

    async def _scope(
        self, policy: Policy, caller: Caller, credential: str, user_id: str, org_id: str,
        provider: str,
    ) -> Scope:  # fmt: skip
        user_id = access.acting_user(caller, user_id)
        # Membership now, not at login: the JWT's org list may be stale (ADR 0023).
        if (
            org_id
            and not caller.is_admin
            and org_id not in await self._members.org_ids(caller.user_id, credential)
        ):
            raise NotOrgMemberError(org_id)
        roles = access.acting_roles(caller, user_id)
        now = self._clock.now()
        limits = policy.limits_for(roles, provider, org_id or None, now)
        tier = policy.tier_for(roles).name
        return Scope(policy, Subject(user_id, provider, org_id or None), limits, tier, to_ms(now))


def _limits_of(done: Settlement) -> LevelLimits:
    snap = done.snapshot
    return LevelLimits(
        {lv: s.limit for lv, s in snap.buckets.items()},
        {lv: s.limit for lv, s in snap.quotas.items()},
    )


def _check_closed(done: Settlement, actual: int | None, now_ms: int) -> None:
    """A repeat with the same outcome is fine; anything else on a closed reservation is not."""
    if done.changed:
        return
    held = done.reservation
    wanted = "released" if actual is None else "settled"
    if held.status.value == wanted and (actual is None or held.actual == actual):
        return
    if held.status.value == "released" and now_ms >= held.expires_at_ms:
        raise FailedPreconditionError("the reservation expired", reason="RESERVATION_EXPIRED")
    if held.status.value == "released":
        raise FailedPreconditionError("the reservation was released", reason="RESERVATION_RELEASED")
    raise FailedPreconditionError("the reservation was settled", reason="RESERVATION_SETTLED")
