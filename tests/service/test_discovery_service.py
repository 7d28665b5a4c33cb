"""The discovery service built by its bootstrap, fed by a fixed source, answers Envoy's EDS."""

from __future__ import annotations

import aiohttp

from leaky_tokens.discovery.bootstrap import DiscoverySettings, build, start
from leaky_tokens.discovery.sources import FixedEndpoints


async def test_eds_answers_the_endpoints_its_source_knows() -> None:
    settings = DiscoverySettings(port=0, services=("auth", "token"))
    endpoints = {"auth": (("127.0.0.1", 50051),), "token": ()}
    components = build(settings, source=lambda catalog: FixedEndpoints(catalog, endpoints))
    running = await start(components, settings)
    base = f"http://127.0.0.1:{running.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as health:
                assert health.status == 200
            request = {"resource_names": ["auth", "token", "unknown"]}
            async with http.post(f"{base}/v3/discovery:endpoints", json=request) as reply:
                assert reply.status == 200
                body = await reply.json()
    finally:
        await running.stop()
    assignments = {r["cluster_name"]: r["endpoints"][0]["lb_endpoints"] for r in body["resources"]}
    (auth,) = assignments["auth"]
    assert auth["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 50051,
    }
    assert assignments["token"] == []
    assert assignments["unknown"] == []


async def test_discovery_is_unhealthy_until_its_source_has_synced() -> None:
    settings = DiscoverySettings(port=0, services=("auth",))

    class Silent:
        def start(self) -> None:
            """Never reports anything (Consul not answering yet)."""

        async def stop(self) -> None:
            """Nothing to release."""

    running = await start(build(settings, source=lambda catalog: Silent()), settings)
    try:
        url = f"http://127.0.0.1:{running.port}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url) as health:
            assert health.status == 503
    finally:
        await running.stop()
