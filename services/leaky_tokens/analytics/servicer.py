"""AnalyticsService over gRPC; only GetHealth is implemented so far."""

from __future__ import annotations

from typing import Any

import grpc

from leaky.analytics.v1 import analytics_pb2 as pb
from leaky.analytics.v1 import analytics_pb2_grpc
from leaky_tokens.runtime.convert import timestamp
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.unimplemented import with_unimplemented

Context = grpc.aio.ServicerContext[Any, Any]

ANALYTICS_SERVICE = pb.DESCRIPTOR.services_by_name["AnalyticsService"]
PENDING = "usage, reports and anomalies land with the analytics issue"
PUBLIC_METHODS = frozenset({f"/{ANALYTICS_SERVICE.full_name}/GetHealth"})


class _AnalyticsHealth(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def GetHealth(
        self, request: pb.GetHealthRequest, context: Context
    ) -> pb.GetHealthResponse:
        return pb.GetHealthResponse(
            service="analytics-service", status="ok", timestamp=timestamp(self._clock.now())
        )


AnalyticsServicer = with_unimplemented(_AnalyticsHealth, ANALYTICS_SERVICE, PENDING)
