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
from leaky_tokens.token.domain.rls_decision import Descriptor, Status, Verdict, plan, verdict
from leaky_tokens.token.domain.units import to_ms

Context = grpc.aio.ServicerContext[Any, Any]

RLS_SERVICE = pb.DESCRIPTOR.services_by_name["RateLimitService"]
SHOULD_RATE_LIMIT = f"/{RLS_SERVICE.full_name}/ShouldRateLimit"
MAX_DESCRIPTORS = 64
MAX_ENTRIES = 32
MAX_HITS = 2**32 - 1
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
    ) -> None:
        self._config = config
        self._counter = counter
        self._clock = clock
        self._headers = headers
        self.metrics = metrics or RlsMetrics()

    async def ShouldRateLimit(
        self, request: pb.RateLimitRequest, context: Context
    ) -> pb.RateLimitResponse:
        descriptors = decode(request)
        planned = plan(self._config(), request.domain, descriptors)
        now_ms = to_ms(self._clock.now())
        hits = [p.hit for p in planned if p.hit is not None]
        step = await self._counter.hit(hits, now_ms)
        result = verdict(planned, step)
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


def _status(s: Status) -> _R.DescriptorStatus:
    out = _R.DescriptorStatus(code=_R.OVER_LIMIT if s.over else _R.OK, limit_remaining=s.remaining)
    if s.limit is not None and s.limit.unit is not None:
        out.current_limit.requests_per_unit = s.limit.requests_per_unit
        out.current_limit.unit = _UNIT_CODES[s.limit.unit]
        if s.limit.name:
            out.current_limit.name = s.limit.name
        out.duration_until_reset.FromMilliseconds(s.reset_after_ms)
    return out


def _seconds(ms: int) -> int:
    return math.ceil(ms / 1000)


def headers(result: Verdict) -> list[HeaderValue]:
    """X-RateLimit-* of the headline status; RateLimit-Policy / RateLimit of every counted
    rule, the headline first (the same shape as the TokenService's 429s, ADR 0017)."""
    head = result.headline
    if head is None or head.limit is None or head.limit.unit is None:
        return []
    rules = [head, *(s for s in result.statuses if s is not head and s.limit is not None)]
    policy, state = [], []
    for s in rules:
        lim = s.limit
        if lim is None or lim.unit is None:
            continue
        name = lim.name or lim.full_key
        window = UNIT_SECONDS[lim.unit]
        policy.append(f'"{name}";q={lim.requests_per_unit};w={window}')
        state.append(f'"{name}";r={s.remaining};t={_seconds(s.reset_after_ms)}')
    return [
        HeaderValue(key="x-ratelimit-limit", value=str(head.limit.requests_per_unit)),
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
