"""The Envoy front door under abuse: no client can eject a backend, one error shape, safe logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="the raw HTTP/2 attack is sent with curl")


def raw_grpc(gateway: Gateway, path: str, body: bytes) -> dict[str, str]:
    """Headers of a raw HTTP/2 gRPC call with no `te` and an unframed body, as an attacker
    sends it with curl (no gRPC library would)."""
    assert CURL is not None
    out = subprocess.run(
        [
            CURL,
            "-s",
            "-i",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-XPOST",
            gateway.http + path,
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "@-",
        ],
        input=body,
        capture_output=True,
        timeout=20,
        check=False,
    ).stdout.decode(errors="replace")
    headers = {}
    for line in out.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith(" "):
            headers[name.strip().lower()] = value.strip()
    return headers


@needs_curl
@pytest.mark.parametrize(
    ("attacked", "probe"),
    [
        ("/leaky.auth.v1.AuthService/Login", "/oauth2/jwks"),
        ("/leaky.token.v1.TokenService/GetStatus", "/api/v1/tokens/status"),
    ],
)
def test_garbage_grpc_calls_never_take_a_backend_out(
    gateway: Gateway, attacked: str, probe: str
) -> None:
    answers: list[dict[str, str]] = []
    statuses: list[int] = []
    done = threading.Event()

    def attack() -> None:
        try:
            for _ in range(40):
                answers.append(raw_grpc(gateway, attacked, b"xxxx"))
                time.sleep(0.05)
        finally:
            done.set()

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        # The normal client keeps calling the same backend until the attack is over.
        while not done.is_set() or len(statuses) < 20:
            statuses.append(call(gateway, "GET", probe)[0])
    finally:
        attacker.join()
    assert statuses
    assert set(statuses) == {200}, statuses
    # The attacker is told its request is malformed: INVALID_ARGUMENT, not a crash.
    assert [a.get("grpc-status") for a in answers] == ["3"] * 40, answers[:3]
    assert "malformed gRPC request" in answers[0]["grpc-message"]


def test_query_string_credentials_are_refused(gateway: Gateway) -> None:
    user = register(gateway)
    name, password = user["username"], user["password"]
    for path in (
        f"/api/v1/auth/login?username={name}&password=correct%20horse",
        f"/api/v1/auth/register?username=q{name}&email=q{name}@example.com&password=x",
    ):
        status, headers, error = call(gateway, "POST", path, b"")
        assert status == 400, (path, error)
        assert headers["content-type"].startswith("application/json")
        assert error["code"] == 3
        assert "query parameters are not accepted" in error["message"]
        assert "token" not in error
    # A body and a query string together are refused too: the query is never read.
    status, _, _ = call(
        gateway, "POST", "/api/v1/auth/login?x=1", {"username": name, "password": password}
    )
    assert status == 400
    status, _, login = call(
        gateway, "POST", "/api/v1/auth/login", {"username": name, "password": password}
    )
    assert status == 200
    assert login["token"]


def assert_status_shape(error: Any, code: int) -> str:
    """The one documented error shape: google.rpc.Status JSON with the gRPC code."""
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code
    assert isinstance(error["details"], list)
    message = error["message"]
    assert isinstance(message, str)
    assert message
    for internal in ("leaky.", "google.protobuf", "TYPE_", "Proto field", "_at"):
        assert internal not in message, message
    return message


@pytest.mark.parametrize(
    ("path", "body", "hint"),
    [
        ("/api/v1/auth/register", b'{"username": ', "Unexpected"),
        ("/api/v1/auth/register", b'{"username": 5}', "username"),
        ("/api/v1/auth/register", b'{"username": ["a"]}', "list"),
        ("/api/v1/auth/register", b"[1]", "JSON object"),
        (
            "/api/v1/auth/api-keys",
            b'{"userId": "u", "name": "k", "expiresAt": "soon"}',
            "expiresAt",
        ),
    ],
)
def test_bad_bodies_answer_the_documented_shape(
    gateway: Gateway, path: str, body: bytes, hint: str
) -> None:
    status, headers, error = call(gateway, "POST", path, body)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert hint in assert_status_shape(error, 3)


def test_unknown_path_answers_the_documented_shape(gateway: Gateway) -> None:
    status, _, error = call(gateway, "GET", "/api/v1/nothing-here")
    assert status == 404
    assert "nothing-here" in assert_status_shape(error, 5)


def test_oversized_header_is_431_not_rate_limiting(gateway: Gateway) -> None:
    status, headers, error = call(
        gateway, "GET", "/api/v1/tokens/status", headers={"x-filler": "a" * 20_000}
    )
    assert status == 431
    assert headers["content-type"].startswith("application/json")
    assert "too large" in assert_status_shape(error, 3)


def test_service_errors_share_the_shape(gateway: Gateway) -> None:
    status, _, error = call(gateway, "GET", "/api/v1/auth/api-keys?userId=nobody")
    assert status == 401
    assert_status_shape(error, 16)


def head(gateway: Gateway, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(gateway.http + path, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/tokens/status", 200),
        ("/oauth2/jwks", 200),
        ("/api/v1/analytics/health", 200),
        ("/api/v1/auth/api-keys?userId=nobody", 401),  # a GET route that needs credentials
    ],
)
def test_head_on_get_routes_answers_like_get_without_a_body(
    gateway: Gateway, path: str, expected: int
) -> None:
    assert head(gateway, path) == (expected, b"")


def access_log_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The JSON access-log line of one request (Envoy writes its log out within 10 s)."""
    log = gateway.data_dir / "logs" / "envoy.log"

    def logged() -> dict[str, Any]:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                return dict(json.loads(line))
        return {}

    return wait_until(logged, 30, what=f"an access-log line for {request_id} in {log}")


def test_access_log_has_a_json_line_per_request_without_secrets(gateway: Gateway) -> None:
    user = register(gateway)
    secret = f"s3cret-{uuid.uuid4().hex}"
    status, headers, _ = call(
        gateway,
        "GET",
        f"/api/v1/auth/api-keys?userId={user['userId']}&marker={secret}",
        headers={"authorization": f"Bearer {user['token']}", "x-api-key": secret},
    )
    assert status == 400  # unknown query parameter
    line = access_log_line(gateway, headers["x-request-id"])
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/auth/api-keys"
    assert line["status"] == 400
    assert line["request_id"] == headers["x-request-id"]
    status, headers, _ = call(
        gateway, "POST", f"/api/v1/auth/login?username=x&password={secret}", b""
    )
    assert access_log_line(gateway, headers["x-request-id"])["path"] == "/api/v1/auth/login"
    text = (gateway.data_dir / "logs" / "envoy.log").read_text(errors="replace")
    assert secret not in text
    assert user["token"] not in text


def test_client_sent_external_address_never_reaches_the_services(gateway: Gateway) -> None:
    status, headers, _ = call(
        gateway,
        "GET",
        "/api/v1/tokens/status",
        headers={"x-envoy-external-address": "203.0.113.9", "x-forwarded-for": "203.0.113.9"},
    )
    assert status == 200
    # The access log records the header as Envoy forwards it: the real peer.
    assert access_log_line(gateway, headers["x-request-id"])["external_address"] == "127.0.0.1"
