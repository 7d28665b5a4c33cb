"""envoy.service.ratelimit.v3.RateLimitService over gRPC: Envoy's ratelimit filter calls it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from leaky.vendor.envoy.config.core.v3.base_pb2 import HeaderValue
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky.vendor.envoy.type.v3 import ratelimit_unit_pb2 as units_pb
from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.token.domain.rate_counter import RequestCounterStore
from leaky_tokens.token.domain.rls_config import UNIT_SECONDS, RateLimitConfig, Unit
from leaky_tokens.token.domain.rls_decision import (
    UINT32_MAX,
    Descriptor,
    Status,
    Verdict,
    charges,
    counted,
    plan,
    verdict,
)
from leaky_tokens.token.domain.rls_tokens import TokenDescriptors
from leaky_tokens.token.domain.units import to_ms

Context = grpc.aio.ServicerContext[Any, Any]

RLS_SERVICE = pb.DESCRIPTOR.services_by_name["RateLimitService"]
SHOULD_RATE_LIMIT = f"/{RLS_SERVICE.full_name}/ShouldRateLimit"
MAX_DESCRIPTORS = 64
MAX_ENTRIES = 32
MAX_HITS = 2**32 - 1  # the request-level hits_addend is a uint32 upstream
_R = pb.RateLimitResponse
# RLS's Unit numbers (envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit).
_UNIT_CODES = {u: _R.RateLimit.Unit.Value(u.value) for u in Unit}
# Envoy's override carries envoy.type.v3.RateLimitUnit (its own enum, the same names).
_OVERRIDE_UNITS = {
    units_pb.RateLimitUnit.Value(u.value): u
    for u in Unit
    if u.value in units_pb.RateLimitUnit.keys()  # noqa: SIM118 (an EnumTypeWrapper)
}


class RlsMetrics:
    """Counters of the decisions, by domain and outcome, and of shadow-mode hits by rule."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.decisions = Counter(
            "leaky_token_rls_decisions",
            "ShouldRateLimit answers by domain and overall code.",
            ["domain", "code"],
            registry=registry,
        )
        self.shadow = Counter(
            "leaky_token_rls_shadow_mode",
            "Hits over a shadow_mode rule's limit (answered OK), by rule.",
            ["rule"],
            registry=registry,
        )


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """ShouldRateLimit: descriptors matched by the config in force, counted in one step.

    `config` is read per request, so a policy reload applies to the next request while one in
    flight keeps the rules it matched. `headers` adds X-RateLimit-* (upstream's
    LIMIT_RESPONSE_HEADERS_ENABLED) and the IETF RateLimit / RateLimit-Policy fields.
    """

    def __init__(
        self,
        config: Callable[[], RateLimitConfig],
        counter: RequestCounterStore,
        clock: Clock,
        *,
        headers: bool = True,
        metrics: RlsMetrics | None = None,
        tokens: TokenDescriptors | None = None,
    ) -> None:
        self._config = config
        self._counter = counter
        self._clock = clock
        self._headers = headers
        self.metrics = metrics or RlsMetrics()
        self._tokens = tokens

    async def ShouldRateLimit(
        self, request: pb.RateLimitRequest, context: Context
    ) -> pb.RateLimitResponse:
        descriptors = decode(request)
        planned = plan(self._config(), request.domain, descriptors)
        now_ms = to_ms(self._clock.now())
        step = await self._counter.hit(counted(planned), now_ms)
        # Tokens are charged only once the request counters admitted it: two stores, two
        # steps; a token refusal leaves the request counted, as upstream counts refusals.
        wanted = charges(planned)
        tokens = None
        if wanted and step.admitted and self._tokens is not None:
            tokens = await self._tokens.charge(wanted, now_ms)
        result = verdict(planned, step, tokens)
        for status in result.statuses:
            if status.shadowed and status.limit is not None:
                self.metrics.shadow.labels(status.limit.name or status.limit.full_key).inc()
        code = _R.OVER_LIMIT if result.over else _R.OK
        self.metrics.decisions.labels(request.domain, _R.Code.Name(code)).inc()
        return encode(result, code, self._headers)


def decode(request: pb.RateLimitRequest) -> list[Descriptor]:
    """The request's descriptors, checked; hits_addend 0 means 1 (as upstream reads it)."""
    bad: list[FieldViolation] = []
    if not request.domain:
        bad.append(FieldViolation("domain", "must not be empty"))
    if not request.descriptors:
        bad.append(FieldViolation("descriptors", "must not be empty"))
    elif len(request.descriptors) > MAX_DESCRIPTORS:
        bad.append(FieldViolation("descriptors", f"at most {MAX_DESCRIPTORS} descriptors"))
    if bad:
        raise InvalidArgumentError(bad)
    default_hits = request.hits_addend or 1
    out = []
    for i, d in enumerate(request.descriptors):
        where = f"descriptors[{i}]"
        if not d.entries or len(d.entries) > MAX_ENTRIES:
            bad.append(FieldViolation(f"{where}.entries", f"1 to {MAX_ENTRIES} entries"))
            continue
        if any(not e.key for e in d.entries):
            bad.append(FieldViolation(f"{where}.entries", "every entry needs a key"))
        hits = d.hits_addend.value if d.HasField("hits_addend") else default_hits
        if hits > MAX_HITS:
            bad.append(FieldViolation(f"{where}.hits_addend", f"at most {MAX_HITS}"))
        override = None
        # As upstream: an override with an unknown unit is ignored (the configured rule holds).
        if d.HasField("limit") and d.limit.unit in _OVERRIDE_UNITS:
            override = (d.limit.requests_per_unit, _OVERRIDE_UNITS[d.limit.unit])
        out.append(Descriptor(tuple((e.key, e.value) for e in d.entries), hits, override))
    if bad:
        raise InvalidArgumentError(bad)
    return out


def described(s: Status) -> tuple[str, int, int | None] | None:
    """(name, limit, window seconds or None) of the rule a status reports, if any."""
    if s.limit is None:
        return None
    if s.tokens is not None:
        return (f"{s.limit.token_bucket}:{s.tokens.level.value}", s.tokens.limit, None)
    if s.limit.unit is None:
        return None
    return (s.limit.name or s.limit.full_key, s.limit.requests_per_unit, UNIT_SECONDS[s.limit.unit])


def _status(s: Status) -> _R.DescriptorStatus:
    out = _R.DescriptorStatus(code=_R.OVER_LIMIT if s.over else _R.OK, limit_remaining=s.remaining)
    rule = described(s)
    if rule is None or s.limit is None:
        return out
    name, limit, _ = rule
    out.current_limit.requests_per_unit = min(limit, UINT32_MAX)
    # A token bucket has no calendar unit: UNKNOWN, named after its provider and level.
    out.current_limit.unit = _UNIT_CODES[s.limit.unit] if s.limit.unit else _R.RateLimit.UNKNOWN
    if s.limit.name or s.tokens is not None:
        out.current_limit.name = name
    out.duration_until_reset.FromMilliseconds(s.reset_after_ms)
    return out


def _seconds(ms: int) -> int:
    return math.ceil(ms / 1000)


def headers(result: Verdict) -> list[HeaderValue]:
    """X-RateLimit-* of the headline status; RateLimit-Policy / RateLimit of every rule that
    counted, the headline first (the TokenService's 429 shape, ADR 0017; a token bucket has
    no window, so no `w`)."""
    head = result.headline
    top = described(head) if head is not None else None
    if head is None or top is None:
        return []
    rules = [head, *(s for s in result.statuses if s is not head)]
    policy, state = [], []
    for s in rules:
        rule = described(s)
        if rule is None:
            continue
        name, limit, window = rule
        policy.append(f'"{name}";q={limit}' + (f";w={window}" if window else ""))
        state.append(f'"{name}";r={s.remaining};t={_seconds(s.reset_after_ms)}')
    return [
        HeaderValue(key="x-ratelimit-limit", value=str(top[1])),
        HeaderValue(key="x-ratelimit-remaining", value=str(head.remaining)),
        HeaderValue(key="x-ratelimit-reset", value=str(_seconds(head.reset_after_ms))),
        HeaderValue(key="ratelimit-policy", value=", ".join(policy)),
        HeaderValue(key="ratelimit", value=", ".join(state)),
    ]


def encode(result: Verdict, code: _R.Code.ValueType, with_headers: bool) -> pb.RateLimitResponse:
    """The wire answer of a verdict."""
    out = pb.RateLimitResponse(overall_code=code)
    out.statuses.extend(_status(s) for s in result.statuses)
    if with_headers:
        out.response_headers_to_add.extend(headers(result))
    return out
