"""TokenService over gRPC: decode, call the metering use cases, encode (mapping.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc

from leaky.token.v1 import token_pb2 as pb
from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.runtime.convert import timestamp
from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.runtime.identity import current_caller
from leaky_tokens.runtime.jwt_verifier import bearer_token
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.response_headers import add_response_headers
from leaky_tokens.token import mapping
from leaky_tokens.token.domain.metering import LimitDeniedError, Metering
from leaky_tokens.token.domain.purchases import Purchases
from leaky_tokens.token.purchase_mapping import page_message, purchase_message

Context = grpc.aio.ServicerContext[Any, Any]

TOKEN_SERVICE = pb.DESCRIPTOR.services_by_name["TokenService"]
# RPCs this class does not define answer UNIMPLEMENTED with this reason (the interceptor).
PENDING = "it has not been written yet"
PUBLIC_METHODS = frozenset({f"/{TOKEN_SERVICE.full_name}/GetStatus"})


def _credential(context: Context) -> str:
    """The caller's bearer token (already verified by the interceptor), to forward."""
    return bearer_token(context.invocation_metadata()) or ""  # type: ignore[arg-type]


def _key(field: str, context: Context) -> str:
    """The idempotency key: the field, else the Idempotency-Key header."""
    if field:
        return field
    for key, value in context.invocation_metadata() or ():
        if key == "idempotency-key" and isinstance(value, str):
            return value
    return ""


@contextlib.contextmanager
def _denials() -> Iterator[None]:
    """A limit denial leaves with its LimitDecision detail and rate-limit headers."""
    try:
        yield
    except LimitDeniedError as error:
        raise mapping.denial(error) from None


class TokenServicer(token_pb2_grpc.TokenServiceServicer):
    """TokenService: status, consume, reservations, quotas, grants and purchases."""

    def __init__(self, clock: Clock, metering: Metering, purchases: Purchases) -> None:
        self._clock, self._m, self._p = clock, metering, purchases

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(
            service="token-service", status="ok", timestamp=timestamp(self._clock.now())
        )

    async def Consume(self, request: pb.ConsumeRequest, context: Context) -> pb.ConsumeResponse:
        r = request
        with _denials():
            done = await self._m.consume(
                current_caller(), _credential(context), r.user_id, r.org_id, r.provider,
                r.tokens, r.prompt, _key(r.idempotency_key, context),
            )  # fmt: skip
        out, headers = mapping.consume_response(done)
        add_response_headers(headers)
        return out

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        r = request
        ttl = r.ttl.ToTimedelta() if r.HasField("ttl") else None
        with _denials():
            held = await self._m.reserve(
                current_caller(), _credential(context), r.user_id, r.org_id, r.provider,
                r.tokens, ttl, _key(r.idempotency_key, context),
            )  # fmt: skip
        out, headers = mapping.reserve_response(held)
        add_response_headers(headers)
        return out

    async def Settle(self, request: pb.SettleRequest, context: Context) -> pb.SettleResponse:
        done = await self._m.settle(current_caller(), request.reservation_id, request.actual_tokens)
        return mapping.settle_response(done)

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        done = await self._m.settle(current_caller(), request.reservation_id, None)
        return mapping.release_response(done)

    async def GetQuota(self, request: pb.GetQuotaRequest, context: Context) -> pb.Quota:
        view = await self._m.quota(
            current_caller(), _credential(context), request.user_id, "", request.provider
        )
        return mapping.quota_message(view)

    async def GetOrgQuota(self, request: pb.GetOrgQuotaRequest, context: Context) -> pb.Quota:
        caller = current_caller()
        if not request.org_id:
            # An empty org id would read the caller's own quota; say what is missing instead.
            raise InvalidArgumentError([FieldViolation("orgId", "is required")])
        view = await self._m.quota(
            caller, _credential(context), caller.user_id, request.org_id, request.provider
        )
        return mapping.quota_message(view)

    async def GrantTokens(
        self, request: pb.GrantTokensRequest, context: Context
    ) -> pb.GrantTokensResponse:
        r = request
        view = await self._m.grant(
            current_caller(), r.user_id, r.org_id, r.provider, r.tokens, r.reason,
            _key(r.idempotency_key, context),
        )  # fmt: skip
        return mapping.grant_response(view)

    async def Purchase(self, request: pb.PurchaseRequest, context: Context) -> pb.TokenPurchase:
        r = request
        started = await self._p.purchase(
            current_caller(), _credential(context), r.user_id, r.org_id, r.provider, r.tokens,
            _key(r.idempotency_key, context),
        )  # fmt: skip
        return purchase_message(started.purchase)

    async def GetPurchase(
        self, request: pb.GetPurchaseRequest, context: Context
    ) -> pb.TokenPurchase:
        found = await self._p.get(current_caller(), _credential(context), request.saga_id)
        return purchase_message(found)

    async def ListPurchases(
        self, request: pb.ListPurchasesRequest, context: Context
    ) -> pb.ListPurchasesResponse:
        page = await self._p.list(current_caller(), request.page_size, request.page_token)
        return page_message(page)
