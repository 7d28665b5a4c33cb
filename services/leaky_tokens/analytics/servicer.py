"""AnalyticsService over gRPC: decode, call the queries (domain/reports.py), encode."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from leaky.analytics.v1 import analytics_pb2 as pb
from leaky.analytics.v1 import analytics_pb2_grpc
from leaky.token.v1 import token_pb2
from leaky_tokens.analytics.domain.facts import PurchaseState, UsageFact
from leaky_tokens.analytics.domain.ports import PurchaseView, Scope, ScopeKind
from leaky_tokens.analytics.domain.reports import Queries, to_ms
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import Resolution
from leaky_tokens.runtime.convert import optional_datetime, timestamp
from leaky_tokens.runtime.errors import InvalidArgumentError, Validator
from leaky_tokens.runtime.identity import current_caller
from leaky_tokens.runtime.jwt_verifier import bearer_token
from leaky_tokens.runtime.ports import Clock

Context = grpc.aio.ServicerContext[Any, Any]

ANALYTICS_SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
PUBLIC_METHODS = frozenset({f"/{ANALYTICS_SERVICE.full_name}/GetHealth"})

_RESOLUTIONS = {
    pb.RESOLUTION_MINUTE: Resolution.MINUTE,
    pb.RESOLUTION_HOUR: Resolution.HOUR,
    pb.RESOLUTION_DAY: Resolution.DAY,
}
_RESOLUTION_ENUM = {domain: wire for wire, domain in _RESOLUTIONS.items()}
# The API's PurchaseStatus has no step for a captured payment before completion or for a
# compensation in progress; each shows as the last status the token service itself would
# show in most such sagas (ADR 0037): payment captured keeps TOKENS_ALLOCATED, compensating
# shows PAYMENT_RESERVED (a payment is held until it is released, then FAILED follows).
_STATUS = {
    PurchaseState.STARTED: token_pb2.PURCHASE_STATUS_STARTED,
    PurchaseState.PAYMENT_RESERVED: token_pb2.PURCHASE_STATUS_PAYMENT_RESERVED,
    PurchaseState.TOKENS_ALLOCATED: token_pb2.PURCHASE_STATUS_TOKENS_ALLOCATED,
    PurchaseState.PAYMENT_CAPTURED: token_pb2.PURCHASE_STATUS_TOKENS_ALLOCATED,
    PurchaseState.COMPENSATING: token_pb2.PURCHASE_STATUS_PAYMENT_RESERVED,
    PurchaseState.COMPLETED: token_pb2.PURCHASE_STATUS_COMPLETED,
    PurchaseState.FAILED: token_pb2.PURCHASE_STATUS_FAILED,
}


def _credential(context: Context) -> str:
    """The caller's bearer token (already verified by the interceptor), to forward."""
    return bearer_token(context.invocation_metadata()) or ""  # type: ignore[arg-type]


def _optional(message: Any, name: str) -> Any:
    """An optional scalar field's value, None when absent."""
    return getattr(message, name) if message.HasField(name) else None


def _optional_ms(message: Any, name: str, check: Validator) -> int | None:
    """A Timestamp field's epoch ms, None when absent; an invalid one is recorded in `check`
    (and is None) so that it is reported together with the request's other violations."""
    try:
        when = optional_datetime(message, name, name)
    except InvalidArgumentError as error:
        check.violations.extend(error.violations)
        return None
    return None if when is None else to_ms(when)


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromMilliseconds(ms)
    return out


def _ids(scope: Scope) -> tuple[str, str]:
    """The (user_id, org_id) a response echoes for the scope read."""
    if scope.kind is ScopeKind.USER:
        return scope.id, ""
    if scope.kind is ScopeKind.ORG:
        return "", scope.id
    return "", ""


def _item(fact: UsageFact) -> pb.UsageItem:
    return pb.UsageItem(
        key=pb.UsageKey(provider=fact.provider, timestamp=_ts(fact.occurred_at_ms)),
        user_id=fact.user_id,
        tokens=fact.tokens,
        allowed=fact.allowed,
        org_id=fact.org_id,
        event_id=fact.event_id,
    )


def _totals(t: Totals) -> pb.UsageTotals:
    return pb.UsageTotals(
        events=t.events,
        allowed_events=t.allowed_events,
        denied_events=t.denied_events,
        tokens=t.tokens,
        allowed_tokens=t.allowed_tokens,
        denied_tokens=t.denied_tokens,
        refunded_tokens=t.refunded_tokens,
        unique_users=t.unique_users,
    )


def _purchase(p: PurchaseView) -> token_pb2.TokenPurchase:
    """A purchase as the token API shows it (failure_reason only once FAILED)."""
    return token_pb2.TokenPurchase(
        saga_id=p.saga_id,
        user_id=p.user_id,
        org_id=p.org_id,
        provider=p.provider,
        tokens=p.tokens,
        status=_STATUS[p.state],
        created_at=_ts(p.created_at_ms),
        updated_at=_ts(p.updated_at_ms),
        failure_reason=p.reason if p.state is PurchaseState.FAILED else "",
    )


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """AnalyticsService: health, usage, report, anomalies, series, comparison, purchases."""

    def __init__(self, clock: Clock, queries: Queries) -> None:
        self._clock, self._q = clock, queries

    async def GetHealth(
        self, request: pb.GetHealthRequest, context: Context
    ) -> pb.GetHealthResponse:
        return pb.GetHealthResponse(
            service="analytics-service", status="ok", timestamp=timestamp(self._clock.now())
        )

    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        r = request
        usage = await self._q.usage(
            current_caller(), _credential(context), r.provider, r.user_id, r.org_id,
            _optional(r, "limit"),
        )  # fmt: skip
        return pb.GetUsageResponse(
            provider=usage.provider,
            count=len(usage.items),
            items=[_item(f) for f in usage.items],
        )

    async def GetReport(
        self, request: pb.GetReportRequest, context: Context
    ) -> pb.GetReportResponse:
        r = request
        report = await self._q.report(
            current_caller(), _credential(context), r.provider, r.user_id, r.org_id,
            _optional(r, "window_minutes"), _optional(r, "limit"),
        )  # fmt: skip
        t = report.totals
        user_id, org_id = _ids(report.scope)
        return pb.GetReportResponse(
            provider=report.provider,
            window_start=_ts(report.window_start_ms),
            window_end=_ts(report.window_end_ms),
            total_events=t.events,
            allowed_events=t.allowed_events,
            denied_events=t.denied_events,
            total_tokens=t.tokens,
            average_tokens_per_event=report.average_tokens_per_event,
            unique_users=t.unique_users,
            sample_limit=report.sample_limit,
            top_users=[
                pb.TopUser(user_id=user, total_tokens=share.tokens, events=share.events)
                for user, share in report.top_users
            ],
            allowed_tokens=t.allowed_tokens,
            denied_tokens=t.denied_tokens,
            refunded_tokens=t.refunded_tokens,
            user_id=user_id,
            org_id=org_id,
        )

    async def GetAnomalies(
        self, request: pb.GetAnomaliesRequest, context: Context
    ) -> pb.GetAnomaliesResponse:
        r = request
        found = await self._q.anomalies(
            current_caller(), _credential(context), r.provider, r.user_id, r.org_id,
            _optional(r, "window_minutes"), _optional(r, "baseline_windows"),
            _optional(r, "threshold_multiplier"), _optional(r, "limit"),
        )  # fmt: skip
        return pb.GetAnomaliesResponse(
            provider=found.provider,
            window_start=_ts(found.window_start_ms),
            window_end=_ts(found.window_end_ms),
            baseline_windows=found.baseline_windows,
            current_tokens=found.current_tokens,
            baseline_average_tokens=found.baseline_average_tokens,
            ratio=found.ratio,
            threshold_multiplier=found.threshold_multiplier,
            anomaly=found.anomaly,
            sample_limit=found.sample_limit,
        )

    async def GetUsageSeries(
        self, request: pb.GetUsageSeriesRequest, context: Context
    ) -> pb.GetUsageSeriesResponse:
        r = request
        check = Validator()
        start, end = _optional_ms(r, "start", check), _optional_ms(r, "end", check)
        series = await self._q.series(
            current_caller(), _credential(context), r.provider, r.user_id, r.org_id,
            _RESOLUTIONS.get(r.resolution), start, end, check,
        )  # fmt: skip
        user_id, org_id = _ids(series.scope)
        return pb.GetUsageSeriesResponse(
            provider=series.provider,
            resolution=_RESOLUTION_ENUM[series.resolution],
            points=[pb.SeriesPoint(start=_ts(t), totals=_totals(v)) for t, v in series.points],
            user_id=user_id,
            org_id=org_id,
        )

    async def CompareProviders(
        self, request: pb.CompareProvidersRequest, context: Context
    ) -> pb.CompareProvidersResponse:
        r = request
        found = await self._q.compare(
            current_caller(), _credential(context), r.user_id, r.org_id,
            _optional(r, "window_minutes"),
        )  # fmt: skip
        user_id, org_id = _ids(found.scope)
        return pb.CompareProvidersResponse(
            window_start=_ts(found.window_start_ms),
            window_end=_ts(found.window_end_ms),
            providers=[
                pb.ProviderUsage(
                    provider=row.provider, totals=_totals(row.totals), token_share=row.token_share
                )
                for row in found.providers
            ],
            user_id=user_id,
            org_id=org_id,
        )

    async def GetPurchaseHistory(
        self, request: pb.GetPurchaseHistoryRequest, context: Context
    ) -> pb.GetPurchaseHistoryResponse:
        r = request
        history = await self._q.purchases(
            current_caller(), _credential(context), r.user_id, r.org_id, _optional(r, "limit")
        )
        user_id, org_id = _ids(history.scope)
        t = history.totals
        return pb.GetPurchaseHistoryResponse(
            purchases=[_purchase(p) for p in history.purchases],
            completed_purchases=t.completed_purchases,
            completed_tokens=t.completed_tokens,
            failed_purchases=t.failed_purchases,
            user_id=user_id,
            org_id=org_id,
        )
