"""Envoy's endpoint discovery over REST-JSON (`POST /v3/discovery:endpoints`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from leaky_tokens.discovery.consul_catalog import Catalog

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def load_assignment(cluster: str, endpoints: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """A ClusterLoadAssignment in proto3 JSON."""
    return {
        "@type": CLA_TYPE,
        "cluster_name": cluster,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                    for h, p in endpoints
                ]
            }
        ],
    }


def discovery_response(catalog: Catalog, request: dict[str, Any]) -> dict[str, Any]:
    """The DiscoveryResponse for a DiscoveryRequest: every requested cluster, known or not."""
    names = request.get("resource_names") or request.get("resourceNames") or []
    return {
        "version_info": str(catalog.version),
        "type_url": CLA_TYPE,
        "resources": [load_assignment(n, catalog.endpoints.get(n, ())) for n in names],
    }


def make_app(catalog: Catalog) -> web.Application:
    """The HTTP app Envoy polls; /healthz answers 200 once every service was read once."""

    async def endpoints(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError:
            return web.json_response({"message": "body must be a DiscoveryRequest"}, status=400)
        return web.json_response(discovery_response(catalog, body))

    async def healthz(request: web.Request) -> web.Response:
        ok = catalog.synced.is_set()
        return web.json_response(
            {"synced": ok, "version": catalog.version}, status=200 if ok else 503
        )

    async def catalog_view(request: web.Request) -> web.Response:
        return web.json_response(
            {name: [f"{h}:{p}" for h, p in eps] for name, eps in catalog.endpoints.items()}
        )

    app = web.Application()
    app.router.add_post("/v3/discovery:endpoints", endpoints)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/endpoints", catalog_view)
    return app
