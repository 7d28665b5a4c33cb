"""The Envoy front door under abuse: no client can eject a backend, one error shape, safe logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, leaky_up
from tests.e2e.test_gateway import call, register
from tests.support.net import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="the raw HTTP/2 attack is sent with curl")


def raw_grpc(
    gateway: Gateway, path: str, body: bytes, content_type: str = "application/grpc"
) -> dict[str, str]:
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
            f"content-type: {content_type}",
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


@pytest.mark.parametrize(
    "spelling",
    ["{}", "{}/", "{}//", "{}/?"],
    ids=["plain", "slash", "double-slash", "slash-empty-query"],
)
def test_query_string_credentials_are_refused(gateway: Gateway, spelling: str) -> None:
    """Every spelling of a whole-body path the transcoder accepts refuses a query string."""
    user = register(gateway)
    name, password = user["username"], user["password"]
    fresh = f"q{uuid.uuid4().hex[:12]}"
    queries = {
        "/api/v1/auth/login": f"username={name}&password=correct%20horse",
        "/api/v1/auth/register": f"username={fresh}&email={fresh}@example.com"
        "&password=correct%20horse%20battery",
        "/api/v1/auth/orgs": "name=x",
        "/api/v1/tokens/consume": "userId=u&provider=openai&tokens=1",
    }
    for path, query in queries.items():
        url = spelling.format(path)
        url = url if url.endswith("?") else f"{url}?"
        status, headers, error = call(
            gateway, "POST", url + query, b"", headers={"authorization": f"Bearer {user['token']}"}
        )
        assert status == 400, (url, error)
        assert headers["content-type"].startswith("application/json")
        assert error["code"] == 3
        assert "query parameters are not accepted" in error["message"]
        assert "token" not in error
    # Spellings the transcoder does not map to the method (it matches segments exactly) are
    # unknown paths, never a login.
    for path in (
        "/api/v1/auth/login/./",
        "/api/v1/auth//login",
        "/api/v1/auth/Login",
        "/api/v1/auth/%6cogin",
    ):
        query = f"username={name}&password={urllib.parse.quote(password)}"
        status, _, _ = call(gateway, "POST", f"{path}?{query}", b"")
        assert status == 404, path
    # The refused registration created nobody.
    status, _, _ = call(
        gateway,
        "POST",
        "/api/v1/auth/login",
        {"username": fresh, "password": "correct horse battery"},
    )
    assert status == 401
    # A body and a query string together are refused too: the query is never read.
    status, _, _ = call(
        gateway, "POST", "/api/v1/auth/login/?x=1", {"username": name, "password": password}
    )
    assert status == 400
    status, _, login = call(
        gateway, "POST", "/api/v1/auth/login/", {"username": name, "password": password}
    )
    assert status == 200
    assert login["token"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/auth/login", "POST"),
        ("PATCH", "/api/v1/auth/login/", "POST"),
        ("GET", "/api/v1/auth/register", "POST"),
        ("POST", "/api/v1/tokens/status", "GET, HEAD"),
        ("PUT", "/api/v1/auth/orgs/7/members", "GET, HEAD, POST"),
    ],
)
def test_a_method_the_path_does_not_take_is_405_with_allow(
    gateway: Gateway, method: str, path: str, allow: str
) -> None:
    status, headers, error = call(gateway, method, path, b"{}")
    assert status == 405, error
    assert headers["allow"] == allow
    assert allow in assert_status_shape(error, 12)


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
    ("method", "path", "body", "expected"),
    [
        ("POST", "/api/v1/auth/register", b'{"username": ', "Unexpected end of string"),
        ("POST", "/api/v1/auth/register", b'{"username": 5}', "username"),
        ("POST", "/api/v1/auth/register", b'{"username": ["a"]}', "list"),
        ("POST", "/api/v1/auth/register", b"[1]", "JSON object"),
        (
            "POST",
            "/api/v1/auth/api-keys",
            b'{"userId": "u", "name": "k", "expiresAt": "soon"}',
            "expiresAt",
        ),
        (
            "GET",
            "/api/v1/auth/api-keys?userId=u&foo=1",
            None,
            'unknown query parameter "foo"',
        ),
    ],
)
def test_bad_bodies_answer_the_documented_shape(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None,
    expected: str,
) -> None:
    status, headers, error = call(gateway, method, path, body)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    message = assert_status_shape(error, 3)
    assert expected in message
    # No parser diagram (the input echoed with a caret under it), no trailing newline.
    assert "\n" not in message
    assert "^" not in message
    assert message == message.strip()
    assert "the request" not in message


def test_a_grpc_path_sent_as_json_is_named_as_sent(gateway: Gateway) -> None:
    status, _, error = call(gateway, "POST", "/leaky.auth.v1.AuthService/Login", b"{}")
    assert status == 404
    assert error == {
        "code": 5,
        "message": "Could not resolve /leaky.auth.v1.AuthService/Login to a method.",
        "details": [],
    }


@needs_curl
def test_grpc_content_type_in_another_case_is_refused_not_forwarded(gateway: Gateway) -> None:
    headers = raw_grpc(
        gateway, "/leaky.auth.v1.AuthService/Login", b"xxxx", content_type="Application/GRPC"
    )
    assert headers.get("grpc-status") == "3", headers


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


@pytest.mark.parametrize(
    "header",
    [
        {"a|b": "x"},  # a legal HTTP name, not a legal gRPC metadata key
        {"x-trace-bin": "!!not base64!!"},  # binary metadata gRPC cannot decode
        {"grpc-encoding": "zz"},  # a gRPC transport header from an HTTP client
    ],
)
def test_headers_grpc_cannot_carry_are_dropped_not_a_500(
    gateway: Gateway, header: dict[str, str]
) -> None:
    # Found by tests/e2e/test_schemathesis.py: gRPC refused such metadata with INTERNAL (500).
    status, _, body = call(gateway, "GET", "/api/v1/tokens/status", headers=header)
    assert status == 200, body
    assert body["status"] == "ok"


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


def audit_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The auth service's audit line of one request (its JSON log)."""
    log = gateway.data_dir / "logs" / "auth.log"

    def logged() -> dict[str, Any]:
        for line in log.read_text(errors="replace").splitlines():
            if '"leaky.audit"' in line and request_id in line:
                return dict(json.loads(line))
        return {}

    return wait_until(logged, 30, what=f"an audit line for {request_id} in {log}")


@pytest.mark.parametrize("header", ["x-envoy-external-address", "x-leaky-client-address"])
def test_a_client_cannot_choose_the_address_services_see(gateway: Gateway, header: str) -> None:
    """Only the one header, no x-forwarded-for: Envoy counts a loopback peer as internal and
    would pass a client's x-envoy-external-address through."""
    status, headers, _ = call(
        gateway,
        "POST",
        "/api/v1/auth/login",
        {"username": f"nobody{uuid.uuid4().hex[:8]}", "password": "wrong password"},
        headers={header: "203.0.113.7"},
    )
    assert status == 401
    assert audit_line(gateway, headers["x-request-id"])["client"] == "127.0.0.1"
    line = access_log_line(gateway, headers["x-request-id"])
    assert line["client_address"] == "127.0.0.1"
    assert "203.0.113.7" not in json.dumps(line)


def test_client_sent_external_address_never_reaches_the_services(gateway: Gateway) -> None:
    status, headers, _ = call(
        gateway,
        "GET",
        "/api/v1/tokens/status",
        headers={"x-envoy-external-address": "203.0.113.9", "x-forwarded-for": "203.0.113.9"},
    )
    assert status == 200
    # The access log records the address header as Envoy forwards it: the real peer.
    assert access_log_line(gateway, headers["x-request-id"])["client_address"] == "127.0.0.1"


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own whose auth lets one address fail only twice for free (the shared
    one must not start throttling the loopback address of every other test)."""
    port, admin = free_port(), free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEAKY_AUTH_LOGIN_ADDRESS_FREE_FAILURES", "2")
        with leaky_up(
            ["--port", str(port), "--admin-port", str(admin)],
            tmp_path_factory.mktemp("strict"),
            f"http://127.0.0.1:{port}",
            ("/api/v1/tokens/status",),
        ) as running:
            yield running


def test_the_address_throttle_cannot_be_dodged_with_headers(strict_gateway: Gateway) -> None:
    """Each failed login claims a new address and names a new user: the real peer is still
    the one address key, so the third attempt waits."""
    statuses, reasons = [], []
    for attempt, header in enumerate(
        ["x-envoy-external-address", "x-leaky-client-address", "x-envoy-external-address"]
    ):
        status, _, body = call(
            strict_gateway,
            "POST",
            "/api/v1/auth/login",
            {"username": f"nobody{uuid.uuid4().hex[:8]}", "password": "wrong password"},
            headers={header: f"203.0.113.{attempt + 1}"},
        )
        statuses.append(status)
        reasons += [d["reason"] for d in body["details"] if "reason" in d]
    assert statuses == [401, 401, 429], reasons
    assert reasons[-1] == "LOGIN_THROTTLED"
