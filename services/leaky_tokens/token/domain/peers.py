"""Ports the token use cases need beyond the store: the policy, org membership, the provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from leaky_tokens.runtime.errors import PermissionDeniedError, UnavailableError
from leaky_tokens.runtime.ports import Membership as Membership  # shared with analytics
from leaky_tokens.token.domain.policy import Policy


class PolicySource(Protocol):
    """The policy in force; a reload swaps it by one reference assignment (ADR 0018)."""

    @property
    def current(self) -> Policy:
        """The policy now. A request reads it once and keeps that snapshot to the end."""


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One provider call after an allowed decision."""

    provider: str
    prompt: str
    credential: str


class ChatProvider(Protocol):
    """The LLM provider behind an allowed consume (resilience lives in the adapter)."""

    async def chat(self, call: ChatCall) -> Mapping[str, object]:
        """The provider's JSON answer; ProviderUnavailableError when it cannot be had."""


class ProviderUnavailableError(UnavailableError):
    """The provider call failed (timeout, retries spent, open circuit, concurrency limit)."""

    reason = "PROVIDER_UNAVAILABLE"


class NotOrgMemberError(PermissionDeniedError):
    """The caller is not (or no longer) a member of the organization named."""

    reason = "NOT_ORG_MEMBER"

    def __init__(self, org_id: str) -> None:
        super().__init__(f"not a member of organization {org_id}", metadata={"orgId": org_id})
