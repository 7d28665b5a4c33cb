"""envoy.service.ratelimit.v3.RateLimitService over gRPC: Envoy's ratelimit filter calls it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky.vendor.envoy.type.v3 import ratelimit_unit_pb2 as units_pb
from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.token.domain.rate_counter import CounterHit, RequestCounterStore
from leaky_tokens.token.domain.rls_config import RateLimitConfig, Unit
from leaky_tokens.token.domain.rls_decision import (
    Descriptor,
    Planned,
    Verdict,
    charges,
    counted,
    plan,
    verdict,
)
from leaky_tokens.token.domain.rls_tokens import TokenCharge, TokenDescriptors
from leaky_tokens.token.domain.units import to_ms
from leaky_tokens.token.rls_encode import Shown, encode, encode_bytes, shown_of

Context = grpc.aio.ServicerContext[Any, Any]

RLS_SERVICE = pb.DESCRIPTOR.services_by_name["RateLimitService"]
SHOULD_RATE_LIMIT = f"/{RLS_SERVICE.full_name}/ShouldRateLimit"
MAX_DESCRIPTORS = 64
MAX_ENTRIES = 32
MAX_HITS = 2**32 - 1  # the request-level hits_addend is a uint32 upstream
PLAN_CACHE_SIZE = 4096  # distinct requests remembered (ADR 0029)
MAX_CACHED_REQUEST = 1024  # bytes; Envoy's are a few dozen
_R = pb.RateLimitResponse
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

    Envoy sends the same few requests again and again, so what a request's bytes decode and
    match to is remembered (`cache_size` requests of at most MAX_CACHED_REQUEST bytes, least
    recently used dropped first, all forgotten when the config object changes): a request
    seen before is neither parsed nor matched again (ADR 0029).
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
        cache_size: int = PLAN_CACHE_SIZE,
    ) -> None:
        self._config = config
        self._counter = counter
        self._clock = clock
        self._headers = headers
        self.metrics = metrics or RlsMetrics()
        self._tokens = tokens
        self._cache_size = cache_size
        self._plans: OrderedDict[bytes, Prepared] = OrderedDict()
        self._plans_for: RateLimitConfig | None = None

    @property
    def plans_cached(self) -> int:
        """How many requests' plans are remembered now (at most `cache_size`)."""
        return len(self._plans)

    async def ShouldRateLimit(
        self, request: pb.RateLimitRequest, context: Context
    ) -> pb.RateLimitResponse:
        return await self._answer(self._prepared(request.SerializeToString(), request))

    async def from_wire(self, data: bytes, context: Context) -> pb.RateLimitResponse:
        """ShouldRateLimit on the request's bytes, as the server registers it (rls_wiring)."""
        return await self._answer(self._prepared(data, None))

    async def answer_wire(self, data: bytes) -> bytes:
        """The request's bytes to the response's: what the server runs (rls_lane, ADR 0034)."""
        return await self._answer_bytes(self._prepared(data, None))

    def _prepared(self, data: bytes, request: pb.RateLimitRequest | None) -> Prepared:
        config = self._config()
        if config is not self._plans_for:  # a reload: plans of the old rules are stale
            self._plans.clear()
            self._plans_for = config
        found = self._plans.get(data)
        if found is not None:
            self._plans.move_to_end(data)
            return found
        if request is None:
            try:
                request = pb.RateLimitRequest.FromString(data)
            except DecodeError:
                bad = FieldViolation("request", "request is not a valid protobuf message")
                raise InvalidArgumentError([bad]) from None
        found = prepare(config, request, self.metrics)
        # Requests past the size bound are answered uncached: memory stays bounded by
        # cache_size x MAX_CACHED_REQUEST whatever a caller sends.
        if self._cache_size > 0 and len(data) <= MAX_CACHED_REQUEST:
            self._plans[data] = found
            if len(self._plans) > self._cache_size:
                self._plans.popitem(last=False)
        return found

    async def _answer(self, p: Prepared) -> pb.RateLimitResponse:
        result, code = await self._decide(p)
        return encode(result, code, self._headers, p.shown)

    async def _answer_bytes(self, p: Prepared) -> bytes:
        result, code = await self._decide(p)
        return encode_bytes(result, code, self._headers, p.shown)

    async def _decide(self, p: Prepared) -> tuple[Verdict, _R.Code.ValueType]:
        now_ms = to_ms(self._clock.now())
        step = await self._counter.hit(p.hits, now_ms)
        # Tokens are charged only once the request counters admitted it: two stores, two
        # steps; a token refusal leaves the request counted, as upstream counts refusals.
        tokens = None
        if p.charges and step.admitted and self._tokens is not None:
            tokens = await self._tokens.charge(p.charges, now_ms)
        result = verdict(p.planned, step, tokens)
        if p.shadowable:
            for status in result.statuses:
                if status.shadowed and status.limit is not None:
                    self.metrics.shadow.labels(status.limit.name or status.limit.full_key).inc()
        (p.over if result.over else p.ok).inc()
        return result, _R.OVER_LIMIT if result.over else _R.OK


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request decoded, checked and matched against one config, with what answers reuse."""

    planned: tuple[Planned, ...]
    hits: tuple[CounterHit, ...]
    charges: dict[int, TokenCharge]
    shown: tuple[Shown | None, ...]  # by descriptor; None: no counted rule (or tokens)
    shadowable: bool
    ok: Any  # the decisions counter's children for this domain
    over: Any


def prepare(config: RateLimitConfig, request: pb.RateLimitRequest, metrics: RlsMetrics) -> Prepared:
    """Everything of an answer that depends on the request and the config alone."""
    planned = tuple(plan(config, request.domain, decode(request)))
    shown = tuple(
        shown_of(p.limit) if p.hit is not None and p.limit is not None else None for p in planned
    )
    # A domain the config does not know is labelled "other": the port needs no credentials,
    # so labelling by whatever a caller sends would grow one series per made-up domain.
    label = request.domain if request.domain in config.domains else "other"
    return Prepared(
        planned,
        tuple(counted(planned)),
        charges(planned),
        shown,
        any(p.limit is not None and p.limit.shadow_mode for p in planned),
        metrics.decisions.labels(label, _R.Code.Name(_R.OK)),
        metrics.decisions.labels(label, _R.Code.Name(_R.OVER_LIMIT)),
    )


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
