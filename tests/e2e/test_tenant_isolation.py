"""Tenant isolation as one table (issue 10 section 2): subject x object x operation, each cell
called through Envoy (HTTP/JSON) and directly (gRPC to the service's own port), with the
expected answer of the cell. User A may act for itself and its organization, never for user B
or an organization it does not belong to; ADMIN may act for anyone. Then credentials: expired,
tampered, wrong-issuer, wrong-audience, wrong-key and unsigned JWTs, minted here, are refused
by every service through Envoy and directly, as is a direct call with no credential or with
identity headers only.

Login throttling at the edge is covered beside this module: per username in
test_login_throttling.py, per client address (which no header can change) in
test_edge_hardening.py::test_the_address_throttle_cannot_be_dodged_with_headers.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from leaky.analytics.v1 import analytics_pb2
from leaky.auth.v1 import auth_pb2
from leaky.token.v1 import token_pb2
from leaky_tokens.topology import SERVICES
from tests.e2e.conftest import Gateway
from tests.e2e.test_analytics import admin
from tests.e2e.test_gateway import call, register
from tests.e2e.test_token_consume import bearer, create_org
from tests.support.jwks import current_signing_key

pytestmark = pytest.mark.e2e

PROVIDER = "qwen"
SERVICE_OF = {  # proto package -> (full service name, module, topology slug)
    "token": ("leaky.token.v1.TokenService", token_pb2, "token"),
    "analytics": ("leaky.analytics.v1.AnalyticsService", analytics_pb2, "analytics"),
    "auth": ("leaky.auth.v1.AuthService", auth_pb2, "auth"),
}


@dataclass
class World:
    """Who exists: A (owns org_a), B (owns org_b, A is not a member), an ADMIN, and one
    purchase and one open reservation per object to read or release."""

    gateway: Gateway
    users: dict[str, dict[str, Any]]  # "A", "B", "ADMIN"
    orgs: dict[str, str]  # "org_a", "org_b" -> id
    purchases: dict[str, str]  # object -> saga id
    reservations: dict[str, str]  # user object -> reservation id
    api_keys: dict[str, str] = field(default_factory=dict)  # "A" -> the secret of A's key

    def port(self, slug: str) -> int:
        return dict(zip((s.slug for s in SERVICES), self.gateway.grpc_ports, strict=True))[slug]


def _ok(status: int, body: Any) -> Any:
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> World:
    a, b, root = register(gateway), register(gateway), admin(gateway)
    orgs = {"org_a": create_org(gateway, a), "org_b": create_org(gateway, b)}
    purchases, reservations = {}, {}
    buyers = (("A", a, ""), ("B", b, ""), ("org_a", a, "org_a"), ("org_b", b, "org_b"))
    for name, user, org in buyers:
        body = {"userId": user["userId"], "provider": PROVIDER, "tokens": 10}
        if org:
            body["orgId"] = orgs[org]
        _, _, bought = call(gateway, "POST", "/api/v1/tokens/purchase", body, bearer(user))
        purchases[name] = _ok(200, bought)["sagaId"]
    for name, user in (("A", a), ("B", b)):
        body = {"userId": user["userId"], "provider": PROVIDER, "tokens": 5, "ttl": "600s"}
        status, _, held = call(gateway, "POST", "/api/v1/tokens/reservations", body, bearer(user))
        reservations[name] = _ok(status, held)["reservation"]["reservationId"]
    body = {"userId": a["userId"], "name": "isolation"}
    _, _, key = call(gateway, "POST", "/api/v1/auth/api-keys", body, bearer(a))
    keys = {"A": _ok(200, key)["apiKey"]}
    return World(gateway, {"A": a, "B": b, "ADMIN": root}, orgs, purchases, reservations, keys)


@dataclass(frozen=True)
class Request:
    """One call, in terms both transports share: the RPC and its request's JSON fields."""

    package: str  # key of SERVICE_OF
    method: str  # RPC name
    http: str  # "GET /path/{field}" (fields in braces come from `fields`)
    fields: dict[str, Any]


# An operation: (world, subject user, object name) -> the request. Objects are "A" or "B"
# (users) and "org_a" or "org_b" (organizations).
Operation = Callable[[World, dict[str, Any], str], Request]


def _scope(w: World, subject: dict[str, Any], obj: str) -> dict[str, str]:
    """The subject acting on a user object names that user; on an org, itself and the org."""
    if obj.startswith("org_"):
        return {"userId": subject["userId"], "orgId": w.orgs[obj]}
    return {"userId": w.users[obj]["userId"]}


def consume(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {**_scope(w, subject, obj), "provider": PROVIDER, "tokens": 1}
    return Request("token", "Consume", "POST /api/v1/tokens/consume", fields)


def quota(w: World, subject: dict[str, Any], obj: str) -> Request:
    if obj.startswith("org_"):
        fields = {"orgId": w.orgs[obj], "provider": PROVIDER}
        return Request("token", "GetOrgQuota", "GET /api/v1/tokens/quota/org", fields)
    fields = {"userId": w.users[obj]["userId"], "provider": PROVIDER}
    return Request("token", "GetQuota", "GET /api/v1/tokens/quota", fields)


def purchase(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {**_scope(w, subject, obj), "provider": PROVIDER, "tokens": 1}
    return Request("token", "Purchase", "POST /api/v1/tokens/purchase", fields)


def read_purchase(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"sagaId": w.purchases[obj]}
    return Request("token", "GetPurchase", "GET /api/v1/tokens/purchase/{sagaId}", fields)


def release_reservation(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"reservationId": w.reservations[obj]}
    path = "POST /api/v1/tokens/reservations/{reservationId}/release"
    return Request("token", "Release", path, fields)


def _analytics_scope(w: World, obj: str) -> dict[str, str]:
    if obj.startswith("org_"):
        return {"orgId": w.orgs[obj]}
    return {"userId": w.users[obj]["userId"]}


def report(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"provider": PROVIDER, **_analytics_scope(w, obj)}
    return Request("analytics", "GetReport", "GET /api/v1/analytics/report", fields)


def usage(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"provider": PROVIDER, **_analytics_scope(w, obj)}
    return Request("analytics", "GetUsage", "GET /api/v1/analytics/usage", fields)


def purchase_history(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = _analytics_scope(w, obj)
    return Request("analytics", "GetPurchaseHistory", "GET /api/v1/analytics/purchases", fields)


def api_keys(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"userId": w.users[obj]["userId"]}
    return Request("auth", "ListApiKeys", "GET /api/v1/auth/api-keys", fields)


def create_api_key(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"userId": w.users[obj]["userId"], "name": "matrix"}
    return Request("auth", "CreateApiKey", "POST /api/v1/auth/api-keys", fields)


def org_members(w: World, subject: dict[str, Any], obj: str) -> Request:
    fields = {"orgId": w.orgs[obj]}
    path = "GET /api/v1/auth/orgs/{orgId}/members"
    return Request("auth", "ListOrganizationMembers", path, fields)


USERS, ORGS = ("A", "B"), ("org_a", "org_b")
# operation -> (the objects it applies to, how a refusal reads: HTTP status, gRPC code).
# A purchase someone may not see is NOT_FOUND, exactly like one that does not exist.
OPERATIONS: dict[str, tuple[Operation, tuple[str, ...], tuple[int, grpc.StatusCode]]] = {
    "consume": (consume, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "quota": (quota, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "purchase": (purchase, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "read-purchase": (read_purchase, USERS + ORGS, (404, grpc.StatusCode.NOT_FOUND)),
    "release": (release_reservation, USERS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "report": (report, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "usage": (usage, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "purchase-history": (purchase_history, USERS + ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "api-keys": (api_keys, USERS, (403, grpc.StatusCode.PERMISSION_DENIED)),
    "org-members": (org_members, ORGS, (403, grpc.StatusCode.PERMISSION_DENIED)),
}
# (subject, object) -> allowed. A's own user and org; B's and B's org; ADMIN on B's.
CELLS = {
    ("A", "A"): True,
    ("A", "org_a"): True,
    ("A", "B"): False,
    ("A", "org_b"): False,
    ("ADMIN", "B"): True,
    ("ADMIN", "org_b"): True,
}
MATRIX = [
    pytest.param(op, subject, obj, allowed, transport, id=f"{op}-{subject}-on-{obj}-{transport}")
    for op, (_, objects, _) in OPERATIONS.items()
    for (subject, obj), allowed in CELLS.items()
    if obj in objects
    for transport in ("envoy", "direct")
]


def over_http(w: World, request: Request, headers: dict[str, str]) -> tuple[int, Any]:
    method, template = request.http.split(" ", 1)
    fields = dict(request.fields)
    path = template
    for name in list(fields):
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", urllib.parse.quote(str(fields.pop(name)), ""))
    if method == "GET":
        path += "?" + urllib.parse.urlencode(fields) if fields else ""
        status, _, body = call(w.gateway, method, path, None, headers)
    else:
        status, _, body = call(w.gateway, method, path, fields, headers)
    return status, body


def over_grpc(
    w: World, request: Request, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, Any]:
    service, module, slug = SERVICE_OF[request.package]
    rpc = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[
        request.method
    ]
    request_type = message_factory.GetMessageClass(rpc.input_type)
    response_type = message_factory.GetMessageClass(rpc.output_type)
    message = json_format.ParseDict(request.fields, request_type())
    with grpc.insecure_channel(f"127.0.0.1:{w.port(slug)}") as channel:
        stub = channel.unary_unary(
            f"/{service}/{request.method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        try:
            answer: Message = stub(message, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, json_format.MessageToDict(answer)


@pytest.mark.parametrize(("op", "subject", "obj", "allowed", "transport"), MATRIX)
def test_tenant_isolation_matrix(
    world: World, op: str, subject: str, obj: str, allowed: bool, transport: str
) -> None:
    build, _, (refused_http, refused_grpc) = OPERATIONS[op]
    caller = world.users[subject]
    request = build(world, caller, obj)
    if transport == "envoy":
        status, body = over_http(world, request, bearer(caller))
        assert status == (200 if allowed else refused_http), body
    else:
        code, body = over_grpc(world, request, (("authorization", f"Bearer {caller['token']}"),))
        assert code == (grpc.StatusCode.OK if allowed else refused_grpc), body


# -- API-key callers (ADR 0048): A's key acts as A for metered work and reads, within A's
# tenancy, and is refused whatever administers identity or money, even on A's own objects.
KEY_OPERATIONS: dict[str, Operation] = {
    "consume": consume,
    "quota": quota,
    "report": report,
    "org-members": org_members,
    "purchase": purchase,
    "create-api-key": create_api_key,
    "api-keys": api_keys,
}
NOT_ALLOWED = "API_KEY_NOT_ALLOWED"
# (operation, object) -> (HTTP status through Envoy, ErrorInfo reason of a refusal).
KEY_CELLS: dict[tuple[str, str], tuple[int, str]] = {
    ("consume", "A"): (200, ""),
    ("consume", "org_a"): (200, ""),
    ("quota", "A"): (200, ""),
    ("report", "org_a"): (200, ""),
    ("org-members", "org_a"): (200, ""),
    ("consume", "B"): (403, "NOT_YOUR_USER_ID"),  # the key is A's: B's tenancy stays shut
    ("org-members", "org_b"): (403, "NOT_ORG_MEMBER"),
    ("purchase", "A"): (403, NOT_ALLOWED),
    ("purchase", "org_a"): (403, NOT_ALLOWED),
    ("create-api-key", "A"): (403, NOT_ALLOWED),
    ("api-keys", "A"): (403, NOT_ALLOWED),
}


@pytest.mark.parametrize(
    ("op", "obj"), sorted(KEY_CELLS), ids=[f"{op}-A-key-on-{obj}" for op, obj in sorted(KEY_CELLS)]
)
def test_an_api_key_caller_through_envoy(world: World, op: str, obj: str) -> None:
    expected, reason = KEY_CELLS[(op, obj)]
    request = KEY_OPERATIONS[op](world, world.users["A"], obj)
    status, body = over_http(world, request, {"x-api-key": world.api_keys["A"]})
    assert status == expected, body
    if reason:
        assert body["code"] == 7, body
        assert body["details"][0]["reason"] == reason, body


def test_an_api_key_refusal_changed_nothing(world: World) -> None:
    a = world.users["A"]

    def holdings() -> tuple[set[str], set[str]]:
        status, keys = over_http(world, api_keys(world, a, "A"), bearer(a))
        got, bought = call(world.gateway, "GET", "/api/v1/tokens/purchases", None, bearer(a))[::2]
        return (
            {k["id"] for k in _ok(status, keys)["apiKeys"]},
            {p["sagaId"] for p in _ok(got, bought)["purchases"]},
        )

    before = holdings()
    for op in ("create-api-key", "purchase"):
        request = KEY_OPERATIONS[op](world, a, "A")
        assert over_http(world, request, {"x-api-key": world.api_keys["A"]})[0] == 403
    assert holdings() == before


def test_an_api_key_sent_directly_to_a_service_is_no_credential(world: World) -> None:
    # Only Envoy's ext_authz turns a key into a (mesh) token; a service never reads one.
    code, body = over_grpc(
        world, consume(world, world.users["A"], "A"), (("x-api-key", world.api_keys["A"]),)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED, body


# -- credentials


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def mint(w: World, variant: str) -> str:
    """A JWT for user A: the real signing key and claims, changed as `variant` says."""
    kid, key = current_signing_key(w.gateway.data_dir / "auth.db")
    real = w.users["A"]["token"]
    claims = _claims_of(real)
    now = datetime.now(UTC)
    fresh = {"iat": int(now.timestamp()), "exp": int((now + timedelta(minutes=10)).timestamp())}
    claims |= fresh
    headers = {"kid": kid}
    if variant == "valid":
        return jwt.encode(claims, key, algorithm="RS256", headers=headers)
    if variant == "expired":
        claims |= {
            "iat": int((now - timedelta(hours=2)).timestamp()),
            "exp": int((now - timedelta(hours=1)).timestamp()),
        }
        return jwt.encode(claims, key, algorithm="RS256", headers=headers)
    if variant == "wrong-issuer":
        return jwt.encode(claims | {"iss": "evil"}, key, algorithm="RS256", headers=headers)
    if variant == "wrong-audience":
        return jwt.encode(claims | {"aud": "other"}, key, algorithm="RS256", headers=headers)
    if variant == "wrong-key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(claims, other, algorithm="RS256", headers=headers)
    if variant == "tampered":
        # A's real token, its payload rewritten to say ADMIN; the signature left as it was.
        head, _, signature = real.split(".")
        forged = _claims_of(real) | {"roles": ["ADMIN", "USER"]}
        return f"{head}.{_b64(json.dumps(forged).encode())}.{signature}"
    if variant == "unsigned":
        head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{head}.{_b64(json.dumps(claims).encode())}."
    raise AssertionError(variant)


# What each service is asked with the minted token: A reading its own data (allowed with a
# valid token, so a refusal is the token's fault, nothing else).
OWN_READS: dict[str, Callable[[World], Request]] = {
    "token": lambda w: quota(w, w.users["A"], "A"),
    "analytics": lambda w: report(w, w.users["A"], "A"),
    "auth": lambda w: api_keys(w, w.users["A"], "A"),
}
VARIANTS = (
    "expired", "tampered", "wrong-issuer", "wrong-audience", "wrong-key", "unsigned"
)  # fmt: skip


@pytest.fixture(scope="module")
def tokens(world: World) -> dict[str, str]:
    return {variant: mint(world, variant) for variant in ("valid", *VARIANTS)}


@pytest.mark.parametrize("transport", ["envoy", "direct"])
@pytest.mark.parametrize("service", sorted(OWN_READS))
@pytest.mark.parametrize("variant", ["valid", *VARIANTS])
def test_only_a_genuine_jwt_is_accepted(
    world: World, tokens: dict[str, str], variant: str, service: str, transport: str
) -> None:
    request = OWN_READS[service](world)
    token = tokens[variant]
    if transport == "envoy":
        status, body = over_http(world, request, {"authorization": f"Bearer {token}"})
        # Envoy's jwt_authn refuses at the edge: 401, or 403 for a genuine token of another
        # audience (its own rule, ADR 0041), both in the google.rpc.Status shape.
        http_status = {"valid": 200, "wrong-audience": 403}.get(variant, 401)
        assert status == http_status, body
        if variant != "valid":
            assert body["code"] == (7 if http_status == 403 else 16), body
    else:
        code, body = over_grpc(world, request, (("authorization", f"Bearer {token}"),))
        expected = grpc.StatusCode.OK if variant == "valid" else grpc.StatusCode.UNAUTHENTICATED
        assert code == expected, body


@pytest.mark.parametrize("service", sorted(OWN_READS))
@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-credential"),
        pytest.param("identity-headers", id="identity-headers-only"),
    ],
)
def test_a_direct_call_without_a_jwt_is_refused(
    world: World, service: str, metadata: tuple[tuple[str, str], ...] | str
) -> None:
    """The services verify callers themselves: a call that skips Envoy and claims an identity
    in headers (the ones Envoy would set after authenticating) gets nothing."""
    if metadata == "identity-headers":
        user = world.users["A"]["userId"]
        metadata = (("x-leaky-user-id", user), ("x-leaky-auth", "jwt"), ("x-user-id", user))
    assert not isinstance(metadata, str)
    code, body = over_grpc(world, OWN_READS[service](world), metadata)
    assert code == grpc.StatusCode.UNAUTHENTICATED, body
