"""ProviderService over gRPC; no RPC is implemented yet (the stubs are their own task)."""

from __future__ import annotations

from leaky.provider.v1 import provider_pb2 as pb
from leaky.provider.v1 import provider_pb2_grpc

PROVIDER_SERVICE = pb.DESCRIPTOR.services_by_name["ProviderService"]
# RPCs this class does not define answer UNIMPLEMENTED with this reason (the interceptor).
PENDING = "the provider stubs land with the token issue (issue 7, section 3)"
# Chat needs a verified caller, as the original gateway required on the stub routes.
PUBLIC_METHODS: frozenset[str] = frozenset()


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """ProviderService: Chat is still to come."""
