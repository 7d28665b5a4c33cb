"""`leaky up --stack`: the same services against the real stack, reached through its Envoy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import consul
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky_tokens.loopback import envoy_binary
from leaky_tokens.stack.edge import Envoy
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.topology import slugs
from tests.e2e.conftest import Gateway, leaky_up
from tests.e2e.test_dashboard_metrics import DASHBOARD
from tests.e2e.test_gateway import call, register
from tests.e2e.test_token_consume import bearer, consume, create_org
from tests.support.net import free_port
from tests.support.promql import Exported, dashboard_exprs, metric_names
from tests.support.stack import component
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def saga_env(root: Path) -> dict[str, str]:
    """The saga worker's and the analytics projection's own consumer groups and topics (other
    runs share the stack's Kafka); the saga runs the real saga parts on the stack's PostgreSQL
    and Redis, the projection projects this run's usage and purchase topics into the stack's
    Cassandra (its shared keyspace: the tests read fresh users' and orgs' scopes). `leaky up`
    points the projection at the token service's topics (mesh/plan.py TOPIC_FOLLOWERS)."""
    run = uuid.uuid4().hex[:10]
    purchases, usage = f"leaky.purchase.e2e.{run}", f"leaky.usage.e2e.{run}"
    return {
        "LEAKY_TOKEN_SAGA_GROUP": f"leaky-token-saga-e2e-{run}",
        "LEAKY_TOKEN_SAGA_TOPIC": purchases,
        "LEAKY_TOKEN_EVENTS_USAGE_TOPIC": usage,
        "LEAKY_ANALYTICS_PROJECTION_GROUP": f"leaky-analytics-projection-e2e-{run}",
        "LEAKY_ANALYTICS_PROJECTION_DEAD_LETTER_TOPIC": f"leaky.analytics.dead.e2e.{run}",
    }


@pytest.fixture(scope="module")
def stack_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`leaky up --stack`: the gateway is the stack's Envoy, which finds the services only
    once they are registered in Consul."""
    root = tmp_path_factory.mktemp("stack-mesh")
    with leaky_up(
        ["--stack"],
        root,
        f"http://{component(stack, 'envoy').address}",
        ("/api/v1/tokens/status", "/oauth2/jwks", "/api/v1/analytics/health"),
        env=saga_env(root),
    ) as running:
        yield running


def test_auth_on_postgres_through_the_stack_envoy(stack_gateway: Gateway, stack: Stack) -> None:
    user = register(stack_gateway)
    name = user["username"]
    postgres = component(stack, "postgres")
    rows = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres.port),  # type: ignore[attr-defined]
            "-U",
            "postgres",
            "-d",
            "leaky_auth",
            "-tAc",
            f"SELECT id FROM users WHERE username = '{name}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert rows == [user["userId"]]  # stored in the stack's PostgreSQL, not SQLite


def test_services_are_registered_with_passing_grpc_checks(
    stack_gateway: Gateway, stack: Stack
) -> None:
    client = consul.Consul(host="127.0.0.1", port=component(stack, "consul").http_port)  # type: ignore[attr-defined]
    services = slugs()
    for service, port in zip(services, stack_gateway.grpc_ports, strict=True):
        _, nodes = client.health.service(service, passing=True)
        ports = {n["Service"]["Port"] for n in nodes}
        assert port in ports, f"{service} on {port} not passing in Consul"
    # The saga's Faust worker too: its check passes once its consumer joined its group.
    port = stack_gateway.worker_ports["token-saga"]

    def saga_passing() -> bool:
        _, nodes = client.health.service("token-saga", passing=True)
        return port in {n["Service"]["Port"] for n in nodes}

    wait_until(saga_passing, 30, what="token-saga passing in Consul")


def test_grpcurl_reflection_through_the_stack_envoy(grpcurl: Path, stack_gateway: Gateway) -> None:
    listed = subprocess.run(
        [str(grpcurl), "-plaintext", stack_gateway.grpc, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert "leaky.auth.v1.AuthService" in listed.stdout.split()
    jwks = subprocess.run(
        [str(grpcurl), "-plaintext", stack_gateway.grpc, "leaky.auth.v1.AuthService/GetJwks"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(jwks.stdout)["keys"][0]["kty"] == "RSA"


def test_token_decisions_live_in_the_stack_redis(stack_gateway: Gateway, stack: Stack) -> None:
    user = register(stack_gateway)
    body = {"userId": user["userId"], "provider": "qwen", "tokens": 10}
    status, _, held = call(
        stack_gateway,
        "POST",
        "/api/v1/tokens/reservations",
        body,
        {"authorization": f"Bearer {user['token']}"},
    )
    assert status == 200, held
    redis = component(stack, "redis")
    keys = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "--scan", "--pattern", f"*u={user['userId']}*"],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert keys  # the user's levels, kept by the token service in the stack's Redis


def test_provider_chat_through_the_stack_envoy(stack_gateway: Gateway) -> None:
    auth = {"authorization": f"Bearer {register(stack_gateway)['token']}"}

    def chat() -> tuple[int, Any] | None:
        # The provider has no GET probe for `leaky up --stack` to wait on: Envoy may not route
        # to it for a moment after it registers in Consul.
        status, _, reply = call(
            stack_gateway, "POST", "/api/v1/gemini/chat", {"prompt": "hi"}, auth
        )
        return None if status == 503 else (status, reply)

    answered = wait_until(chat, 30, what="the stack's Envoy routing to the provider")
    assert answered is not None
    status, reply = answered
    assert status == 200, reply
    assert reply["message"] == "Stubbed Gemini response"


def test_a_purchase_is_run_by_the_faust_worker_over_kafka(
    stack_gateway: Gateway, stack: Stack
) -> None:
    buyer = register(stack_gateway)
    auth = {"authorization": f"Bearer {buyer['token']}"}
    body = {"userId": buyer["userId"], "provider": "openai", "tokens": 120}
    keyed = {**auth, "idempotency-key": "stack-top-up"}
    status, _, started = call(stack_gateway, "POST", "/api/v1/tokens/purchase", body, keyed)
    assert status == 200, started
    assert started["status"] == "PURCHASE_STATUS_STARTED"
    saga_id = started["sagaId"]

    def completed() -> dict[str, Any] | None:
        path = f"/api/v1/tokens/purchase/{saga_id}"
        status, _, seen = call(stack_gateway, "GET", path, None, auth)
        assert status == 200, seen
        assert seen["status"] != "PURCHASE_STATUS_FAILED", seen
        return seen if seen["status"] == "PURCHASE_STATUS_COMPLETED" else None

    # The token service only recorded it (SAGA_RUNNER=external): the worker's agents ran it.
    wait_until(completed, 60, what="the purchase completed by the saga worker")
    quota_path = f"/api/v1/tokens/quota?userId={buyer['userId']}&provider=openai"
    status, _, quota = call(stack_gateway, "GET", quota_path, None, auth)
    assert status == 200, quota
    assert quota["purchasedBalance"] == "120"
    postgres = component(stack, "postgres")
    steps = subprocess.run(
        [
            *("psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres"),  # type: ignore[attr-defined]
            *("-d", "leaky_token", "-tAc"),
            f"SELECT status FROM purchases WHERE saga_id = '{saga_id}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert steps == ["COMPLETED"]  # the saga's state, in the stack's PostgreSQL


def test_the_saga_worker_exports_the_dashboards_saga_metrics(stack_gateway: Gateway) -> None:
    """With the stack the worker runs the saga, so its /metrics carries the saga panels'."""
    port = stack_gateway.worker_metrics_ports["token-saga"]
    worker, token = Exported(), Exported()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        worker.add_text(response.read().decode())
    token_port = stack_gateway.metrics_ports["token"]
    with urllib.request.urlopen(f"http://127.0.0.1:{token_port}/metrics", timeout=5) as response:
        token.add_text(response.read().decode())
    saga = [
        expr
        for expr in dashboard_exprs(DASHBOARD)
        if any(
            s.name.startswith(("leaky_token_purchases", "leaky_token_saga_"))
            for s in metric_names(expr)
        )
    ]
    assert len(saga) >= 3
    assert worker.missing(saga) == []
    assert token.missing(saga) != []  # the token service leaves the saga to the worker here


def test_usage_and_a_purchase_reach_report_through_kafka_the_projection_and_cassandra(
    stack_gateway: Gateway,
) -> None:
    """Consume and buy through the stack's Envoy; the token service publishes to Kafka, the
    projection worker writes Cassandra, the analytics service (LEAKY_ANALYTICS_STORE=cassandra)
    answers Report, Usage and the purchase history through the same Envoy."""
    owner, member = register(stack_gateway), register(stack_gateway)
    org = create_org(stack_gateway, owner, member)
    statuses = []
    for user, tokens in ((owner, 300), (owner, 300), (member, 100)):
        status, _, answer = consume(stack_gateway, user, tokens, provider="gemini", org=org)
        statuses.append(status)
    assert statuses == [200, 429, 200]  # gemini's bucket holds 500: the second 300 is denied
    auth = bearer(member)
    body = {"userId": member["userId"], "provider": "gemini", "tokens": 70}
    keyed = {**auth, "idempotency-key": "stack-analytics"}
    status, _, started = call(stack_gateway, "POST", "/api/v1/tokens/purchase", body, keyed)
    assert status == 200, started

    def read(path: str, done: Callable[[Any], bool]) -> Any:
        status, _, seen = call(stack_gateway, "GET", path, None, auth)
        if status == 503:  # Envoy may not route to a service just registered in Consul
            return None
        assert status == 200, seen
        return seen if done(seen) else None

    report_path = f"/api/v1/analytics/report?provider=gemini&orgId={org}"
    report = wait_until(
        lambda: read(report_path, lambda r: r.get("totalEvents") == "3"),
        60,
        what="Report shows the 3 consumes (Kafka -> projection -> Cassandra)",
    )
    assert (report["allowedEvents"], report["deniedEvents"]) == ("2", "1")
    assert (report["totalTokens"], report["uniqueUsers"]) == ("700", "2")
    assert report["averageTokensPerEvent"] == pytest.approx(700 / 3)
    assert report["topUsers"] == [
        {"userId": owner["userId"], "totalTokens": "600", "events": "2"},
        {"userId": member["userId"], "totalTokens": "100", "events": "1"},
    ]
    # Cassandra's store writes the rollup cells before the raw rows (ADR 0036): the latest
    # events can show a moment after the report does.
    usage_path = f"/api/v1/analytics/usage?provider=gemini&orgId={org}"
    usage = wait_until(
        lambda: read(usage_path, lambda u: u.get("count") == 3),
        60,
        what="Usage lists the 3 consumes",
    )
    assert [(i["userId"], i["tokens"]) for i in usage["items"]] == [
        (member["userId"], "100"),
        (owner["userId"], "300"),
        (owner["userId"], "300"),
    ]
    assert all(i["eventId"] for i in usage["items"])

    def completed(history: Any) -> bool:
        purchases = history.get("purchases", [])
        return bool(purchases) and purchases[0]["status"] == "PURCHASE_STATUS_COMPLETED"

    history = wait_until(
        lambda: read(f"/api/v1/analytics/purchases?userId={member['userId']}", completed),
        60,
        what="the purchase history shows the purchase COMPLETED",
    )
    (purchase,) = history["purchases"]
    assert (purchase["sagaId"], purchase["tokens"]) == (started["sagaId"], "70")
    assert (history["completedPurchases"], history["completedTokens"]) == ("1", "70")
    # This run's projection worker did it: facts projected from both topics, and SERVING.
    port = stack_gateway.worker_metrics_ports["analytics-projection"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        exported = response.read().decode()
    projected = {
        line.split('topic="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in exported.splitlines()
        if line.startswith("leaky_analytics_projected_facts_total{")
    }
    usage_topics = [t for t in projected if t.startswith("leaky.usage.e2e.")]
    purchase_topics = [t for t in projected if t.startswith("leaky.purchase.e2e.")]
    assert len(usage_topics) == len(purchase_topics) == 1, projected
    assert projected[usage_topics[0]] >= 3
    assert projected[purchase_topics[0]] >= 1
    channel = grpc.insecure_channel(
        f"127.0.0.1:{stack_gateway.worker_ports['analytics-projection']}"
    )
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def edge_with_this_config(stack_gateway: Gateway, stack: Stack, root: Path) -> Iterator[Gateway]:
    """The stack's Envoy if it runs this branch's config (ADR 0041's filters), else an Envoy
    of our own with the stack's config (Envoy().config(): EDS from the stack's discovery) on
    free ports, so the stack config is tested either way."""
    envoy = component(stack, "envoy")
    admin = envoy.admin_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=10) as dump:
        if b"envoy.filters.http.ext_authz" in dump.read():
            yield stack_gateway
            return
    port, admin = free_port(), free_port()
    config = root / "envoy.yaml"
    config.write_text(Envoy(port, admin, envoy.discovery_port).config())  # type: ignore[attr-defined]
    log = (root / "envoy.log").open("wb")
    process = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        gateway = Gateway(
            http=f"http://127.0.0.1:{port}",
            grpc=f"127.0.0.1:{port}",
            process=process,
            data_dir=root,
            grpc_ports=[],
        )

        def routed() -> bool:
            status, _, _ = call(gateway, "GET", "/api/v1/tokens/status")
            return status == 200 and _jwks_fetched(admin)

        wait_until(routed, 60, what="our Envoy routing through the stack", ignoring=(OSError,))
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _jwks_fetched(admin: int) -> bool:
    url = f"http://127.0.0.1:{admin}/stats?filter=jwks_fetch_success"
    with urllib.request.urlopen(url, timeout=2) as stats:
        return any(
            line.rpartition(":")[2].strip() not in ("", "0")
            for line in stats.read().decode().splitlines()
        )


def test_an_api_key_consumes_as_its_owner_through_the_stack_envoy(
    stack_gateway: Gateway, stack: Stack, tmp_path: Path
) -> None:
    # ADR 0041 on the stack config: EDS clusters, ext_authz to auth instances from Consul, the
    # JWKS through the listener itself.
    with edge_with_this_config(stack_gateway, stack, tmp_path) as edge:
        owner = register(edge)
        status, _, key = call(
            edge,
            "POST",
            "/api/v1/auth/api-keys",
            {"userId": owner["userId"], "name": "stack"},
            {"authorization": f"Bearer {owner['token']}"},
        )
        assert status == 200, key
        body = {"userId": owner["userId"], "provider": "openai", "tokens": 4}
        consume_path = "/api/v1/tokens/consume"
        status, _, answer = call(edge, "POST", consume_path, body, {"x-api-key": key["apiKey"]})
        assert status == 200, answer
        assert answer["allowed"] is True
        forged = {"x-api-key": key["apiKey"], "x-leaky-user-id": str(uuid.uuid4())}
        other = {**body, "userId": register(edge)["userId"]}
        status, _, refused = call(edge, "POST", consume_path, other, forged)
        assert status == 403, refused
        status, _, refused = call(edge, "POST", consume_path, body, {"x-api-key": "lt_not-a-key"})
        assert (status, refused["code"]) == (401, 16)
        tampered = owner["token"].split(".")
        tampered[1] = tampered[1][:-2] + ("AA" if not tampered[1].endswith("AA") else "BB")
        status, _, refused = call(
            edge, "POST", consume_path, body, {"authorization": "Bearer " + ".".join(tampered)}
        )
        assert status == 401, refused


def _cluster_hosts(admin: int, cluster: str) -> set[int]:
    """Ports of the healthy hosts Envoy's admin lists for `cluster`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as page:
        lines = page.read().decode().splitlines()
    return {
        int(line.split("::")[1].rpartition(":")[2])
        for line in lines
        if line.startswith(f"{cluster}::") and line.endswith("::health_flags::healthy")
    }


def _counter(admin: int, name: str) -> int:
    url = f"http://127.0.0.1:{admin}/stats?filter={urllib.parse.quote(f'^{name}$')}"
    with urllib.request.urlopen(url, timeout=5) as stats:
        text = stats.read().decode().strip()
    return int(text.rpartition(":")[2]) if text else 0


def test_the_stack_config_asks_the_ratelimit_deployment_found_in_consul(
    stack_gateway: Gateway, stack: Stack, tmp_path: Path
) -> None:
    # ADR 0047 on the stack config: the ratelimit filter's cluster is `ratelimit`, fed by
    # discovery from Consul, where this run's ratelimit (the token service serving the RLS
    # alone) registered. A discovery and an Envoy of our own render this branch's stack
    # config (the stack's own may predate the ratelimit cluster), on the stack's Consul.
    rls_port = stack_gateway.grpc_ports[slugs().index("ratelimit")]
    token_port = stack_gateway.grpc_ports[slugs().index("token")]
    discovery_port, port, admin = free_port(), free_port(), free_port()
    consul_address = component(stack, "consul").address
    env = {
        "LEAKY_DISCOVERY_HOST": "127.0.0.1",
        "LEAKY_DISCOVERY_PORT": str(discovery_port),
        "LEAKY_DISCOVERY_CONSUL_ADDRESS": consul_address,
        "LEAKY_DISCOVERY_SERVICES": ",".join(slugs()),
    }
    log = (tmp_path / "processes.log").open("wb")
    discovery = subprocess.Popen(
        [sys.executable, "-m", "leaky_tokens.discovery"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(Envoy(port, admin, discovery_port).config())
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: rls_port in _cluster_hosts(admin, "ratelimit"),
            60,
            what="this run's ratelimit healthy in our Envoy's ratelimit cluster",
            ignoring=(OSError,),
        )
        assert rls_port not in _cluster_hosts(admin, "token")
        assert token_port not in _cluster_hosts(admin, "ratelimit")
        gateway = Gateway(
            http=f"http://127.0.0.1:{port}",
            grpc=f"127.0.0.1:{port}",
            process=envoy,
            data_dir=tmp_path,
            grpc_ports=[],
        )
        wait_until(
            lambda: call(gateway, "GET", "/api/v1/tokens/status")[0] == 200,
            60,
            what="our Envoy routing to the token service",
            ignoring=(OSError,),
        )
        asked = "cluster.ratelimit.upstream_rq_completed"
        before = _counter(admin, asked)
        for _ in range(3):
            status, headers, _ = call(gateway, "GET", "/api/v1/tokens/status")
            assert status == 200
        assert _counter(admin, asked) >= before + 3  # one ShouldRateLimit per request
        assert "edge-address" in headers.get("ratelimit-policy", "")  # the RLS's answer
    finally:
        envoy.terminate()
        discovery.terminate()
        envoy.wait(timeout=10)
        discovery.wait(timeout=10)
        log.close()
