"""AnalyticsService over gRPC; only GetHealth is implemented so far."""

from __future__ import annotations

from typing import Any

import grpc

from leaky.analytics.v1 import analytics_pb2 as pb
from leaky.analytics.v1 import analytics_pb2_grpc
from leaky_tokens.runtime.convert import timestamp
from leaky_tokens.runtime.ports import Clock

Context = grpc.aio.ServicerContext[Any, Any]

ANALYTICS_SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
# RPCs this class does not define answer UNIMPLEMENTED with this reason (the interceptor).
PENDING = "usage, reports and anomalies land with the analytics issue"
PUBLIC_METHODS = frozenset({f"/{ANALYTICS_SERVICE.full_name}/GetHealth"})


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """AnalyticsService: the health probe; usage, reports and anomalies are still to come."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def GetHealth(
        self, request: pb.GetHealthRequest, context: Context
    ) -> pb.GetHealthResponse:
        return pb.GetHealthResponse(
            service="analytics-service", status="ok", timestamp=timestamp(self._clock.now())
        )
