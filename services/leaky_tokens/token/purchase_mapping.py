"""Purchase sagas -> leaky.token.v1 messages (TokenPurchase, ListPurchasesResponse)."""

from __future__ import annotations

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.runtime.convert import timestamp
from leaky_tokens.token.domain.purchases import PurchasePage
from leaky_tokens.token.domain.saga import Purchase, SagaStatus

_STATUS = {
    SagaStatus.STARTED: pb.PURCHASE_STATUS_STARTED,
    SagaStatus.PAYMENT_RESERVED: pb.PURCHASE_STATUS_PAYMENT_RESERVED,
    SagaStatus.TOKENS_ALLOCATED: pb.PURCHASE_STATUS_TOKENS_ALLOCATED,
    SagaStatus.COMPLETED: pb.PURCHASE_STATUS_COMPLETED,
    SagaStatus.FAILED: pb.PURCHASE_STATUS_FAILED,
}


def purchase_message(p: Purchase) -> pb.TokenPurchase:
    """The saga as the API shows it (failure_reason only once FAILED)."""
    return pb.TokenPurchase(
        saga_id=p.saga_id,
        user_id=p.user_id,
        org_id=p.org_id or "",
        provider=p.provider,
        tokens=p.tokens,
        idempotency_key=p.idempotency_key or "",
        status=_STATUS[p.status],
        created_at=timestamp(p.created_at),
        updated_at=timestamp(p.updated_at),
        failure_reason=p.failure_reason if p.status is SagaStatus.FAILED else "",
    )


def page_message(page: PurchasePage) -> pb.ListPurchasesResponse:
    """One page of purchases."""
    return pb.ListPurchasesResponse(
        purchases=[purchase_message(p) for p in page.purchases],
        next_page_token=page.next_page_token,
    )
