"""Purchase, GetPurchase and ListPurchases: idempotency per user, who sees what, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.adapters.stub_payment import StubPaymentGateway
from tests.service.test_token_purchases import balance, buy, settled
from tests.support.grpc_errors import violations
from tests.support.token_service import token_service

USER, OTHER, ORG = "user-1", "user-2", "org-1"


async def test_a_replayed_key_returns_the_saga_and_a_changed_payload_is_409(
    tmp_path: Path,
) -> None:
    async with token_service(tmp_path) as h:
        first = await buy(h, 40, key="key-1")
        again = await buy(h, 40, key="key-1")
        assert again.saga_id == first.saga_id
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await buy(h, 41, key="key-1")
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "different purchase" in str(refused.value.details())
        # The key is the caller's own: another user's same key is another purchase.
        theirs = await buy(h, 40, key="key-1", user=OTHER)
        assert theirs.saga_id != first.saga_id
        # The header (gRPC metadata idempotency-key) works as the field does.
        request = pb.PurchaseRequest(user_id=USER, provider="openai", tokens=40)
        by_header = await h.stub.Purchase(
            request, metadata=(*h.auth(USER), ("idempotency-key", "key-1"))
        )
        assert by_header.saga_id == first.saga_id
        await settled(h, first.saga_id)
        assert await balance(h) == 40


async def test_twenty_concurrent_purchases_with_one_key_make_one_saga_and_one_credit(
    tmp_path: Path,
) -> None:
    payment = StubPaymentGateway()
    async with token_service(tmp_path, payment=payment) as h:
        answers = await asyncio.gather(*(buy(h, 35, key="same") for _ in range(20)))
        assert len({a.saga_id for a in answers}) == 1
        await settled(h, answers[0].saga_id)
        assert await balance(h) == 35
        assert (payment.reserved, payment.captured) == (1, 1)
        page = await h.stub.ListPurchases(pb.ListPurchasesRequest(), metadata=h.auth(USER))
        assert [p.saga_id for p in page.purchases] == [answers[0].saga_id]


async def test_only_the_buyer_an_org_member_or_admin_see_a_purchase(tmp_path: Path) -> None:
    async with token_service(tmp_path) as h:
        h.members.members = {USER: {ORG}, "member": {ORG}}
        mine = await buy(h, 10)
        org = await h.stub.Purchase(
            pb.PurchaseRequest(user_id=USER, org_id=ORG, provider="openai", tokens=10),
            metadata=h.auth(USER),
        )
        assert org.org_id == ORG

        async def get(saga_id: str, *caller: str) -> pb.TokenPurchase:
            request = pb.GetPurchaseRequest(saga_id=saga_id)
            return await h.stub.GetPurchase(request, metadata=h.auth(*caller))

        assert (await get(mine.saga_id, USER)).saga_id == mine.saga_id
        assert (await get(mine.saga_id, "admin", "ADMIN")).saga_id == mine.saga_id
        assert (await get(org.saga_id, "member")).saga_id == org.saga_id
        for saga_id, caller in ((mine.saga_id, OTHER), (mine.saga_id, "member"),
                                (org.saga_id, OTHER), ("no-such-saga", USER)):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await get(saga_id, caller)
            assert hidden.value.code() is grpc.StatusCode.NOT_FOUND  # existence not revealed
        # Buying for another user needs ADMIN; for an org, membership now.
        with pytest.raises(grpc.aio.AioRpcError) as not_yours:
            await h.stub.Purchase(
                pb.PurchaseRequest(user_id=USER, provider="openai", tokens=10),
                metadata=h.auth(OTHER),
            )
        assert not_yours.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as outsider:
            await h.stub.Purchase(
                pb.PurchaseRequest(user_id=OTHER, org_id=ORG, provider="openai", tokens=10),
                metadata=h.auth(OTHER),
            )
        assert outsider.value.code() is grpc.StatusCode.PERMISSION_DENIED
        for_them = await h.stub.Purchase(
            pb.PurchaseRequest(user_id=OTHER, provider="openai", tokens=10),
            metadata=h.auth("admin", "ADMIN"),
        )
        assert for_them.user_id == OTHER
        await settled(h, for_them.saga_id, OTHER)
        assert await balance(h, OTHER) == 10


async def test_purchases_list_newest_first_a_page_at_a_time(tmp_path: Path) -> None:
    async with token_service(tmp_path) as h:
        made = [(await buy(h, n)).saga_id for n in (1, 2, 3)]
        await buy(h, 4, user=OTHER)

        async def page(size: int, token: str = "") -> pb.ListPurchasesResponse:
            request = pb.ListPurchasesRequest(page_size=size, page_token=token)
            return await h.stub.ListPurchases(request, metadata=h.auth(USER))

        first = await page(2)
        assert [p.saga_id for p in first.purchases] == made[::-1][:2]
        assert first.next_page_token
        last = await page(2, first.next_page_token)
        assert ([p.saga_id for p in last.purchases], last.next_page_token) == ([made[0]], "")
        for size, token, field in ((101, "", "pageSize"), (2, "not-a-token", "pageToken")):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await page(size, token)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert violations(bad.value) == [field]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.PurchaseRequest(user_id=USER, provider="openai", tokens=0), ["tokens"]),
        (pb.PurchaseRequest(user_id=USER, provider="nope", tokens=5), ["provider"]),
        (pb.PurchaseRequest(provider="openai", tokens=5), ["userId"]),
        (
            pb.PurchaseRequest(
                user_id=USER, provider="openai", tokens=5, idempotency_key="k" * 101
            ),
            ["idempotencyKey"],
        ),
    ],
)
async def test_bad_input_names_the_fields(
    tmp_path: Path, request_: pb.PurchaseRequest, fields: list[str]
) -> None:
    async with token_service(tmp_path) as h:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await h.stub.Purchase(request_, metadata=h.auth(USER))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(bad.value) == fields
