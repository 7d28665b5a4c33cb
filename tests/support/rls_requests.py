"""ShouldRateLimit requests as Envoy's ratelimit filter builds them, for tests."""

from __future__ import annotations

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb


def descriptor_request(*entries: tuple[str, str], hits: int = 0) -> pb.RateLimitRequest:
    """One descriptor of `entries` (key, value) in domain leaky; hits_addend 0 means 1."""
    req = pb.RateLimitRequest(domain="leaky", hits_addend=hits)
    added = req.descriptors.add().entries
    for key, value in entries:
        added.add(key=key, value=value)
    return req


def token_request(user: str, hits: int) -> pb.RateLimitRequest:
    """A token_bucket descriptor of the shipped policy: `hits` LLM tokens of openai."""
    return descriptor_request(("provider", "openai"), ("user_id", user), hits=hits)
