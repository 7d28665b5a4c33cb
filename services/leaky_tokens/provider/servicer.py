"""ProviderService over gRPC: decode the chat request, call the stub, encode its reply."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2

from leaky.provider.v1 import provider_pb2 as pb
from leaky.provider.v1 import provider_pb2_grpc
from leaky_tokens.provider.domain.chat import ChatStub
from leaky_tokens.runtime.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]

PROVIDER_SERVICE = pb.DESCRIPTOR.services_by_name["ProviderService"]
# Chat needs a verified caller (any role), as the original gateway required on the stub
# routes: an open stub would be an unmetered way around the token service (ADR 0022).
PUBLIC_METHODS: frozenset[str] = frozenset()


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """ProviderService: Chat answers for every configured provider stub."""

    def __init__(self, stub: ChatStub) -> None:
        self._stub = stub

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        reply = await self._stub.chat(request.provider, request.prompt, request.max_tokens)
        # The request as a JSON client wrote it (the original echoed its body).
        received = struct_pb2.Struct()
        received.update({"prompt": request.prompt})
        if request.max_tokens:
            received.update({"maxTokens": request.max_tokens})
        return pb.ChatResponse(
            id=reply.id,
            provider=reply.provider,
            received=received,
            created=timestamp(reply.created),
            message=reply.message,
            usage=pb.ChatUsage(
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                total_tokens=reply.total_tokens,
            ),
        )
