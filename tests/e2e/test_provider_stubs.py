"""The provider stubs through Envoy, as the original's clients call them: POST /api/v1/{p}/chat."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime

import pytest

from tests.e2e.conftest import Gateway, leaky_up
from tests.e2e.test_gateway import call, register
from tests.support.net import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def auth(gateway: Gateway) -> dict[str, str]:
    return {"authorization": f"Bearer {register(gateway)['token']}"}


@pytest.mark.parametrize(
    ("provider", "name"), [("openai", "OpenAI"), ("qwen", "Qwen"), ("gemini", "Gemini")]
)
def test_chat_answers_the_original_fields_plus_usage(
    gateway: Gateway, auth: dict[str, str], provider: str, name: str
) -> None:
    status, headers, body = call(
        gateway, "POST", f"/api/v1/{provider}/chat", {"prompt": "How do leaky buckets work?"}, auth
    )
    assert status == 200, body
    assert set(body) == {"id", "provider", "received", "created", "message", "usage"}
    uuid.UUID(body["id"])
    assert body["provider"] == provider
    assert body["received"] == {"prompt": "How do leaky buckets work?"}
    datetime.fromisoformat(body["created"])
    assert body["message"] == f"Stubbed {name} response"
    # int64 counts are JSON strings in proto3's JSON mapping (as every int64 of the API).
    assert body["usage"] == {"promptTokens": "6", "completionTokens": "3", "totalTokens": "9"}
    assert headers["x-request-id"]


def test_same_prompt_same_reply_and_max_tokens_caps_the_completion(
    gateway: Gateway, auth: dict[str, str]
) -> None:
    answers = [
        call(gateway, "POST", "/api/v1/qwen/chat", {"prompt": "same words"}, auth)[2]
        for _ in range(2)
    ]
    assert answers[0]["message"] == answers[1]["message"]
    assert answers[0]["usage"] == answers[1]["usage"]
    assert answers[0]["id"] != answers[1]["id"]
    status, _, capped = call(
        gateway, "POST", "/api/v1/qwen/chat", {"prompt": "same words", "maxTokens": 1}, auth
    )
    assert status == 200, capped
    assert capped["message"] == "Stubbed"
    assert capped["usage"]["completionTokens"] == "1"
    assert capped["received"] == {"prompt": "same words", "maxTokens": 1}


def test_unknown_provider_is_404_with_the_json_error_shape(
    gateway: Gateway, auth: dict[str, str]
) -> None:
    status, _, body = call(gateway, "POST", "/api/v1/mistral/chat", {"prompt": "hi"}, auth)
    assert status == 404, body
    assert body["code"] == 5
    assert "unknown provider 'mistral'" in body["message"]
    info = next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert info["reason"] == "UNKNOWN_PROVIDER"
    assert info["metadata"]["known_providers"] == "gemini,openai,qwen"


def test_negative_max_tokens_is_400_naming_the_field(
    gateway: Gateway, auth: dict[str, str]
) -> None:
    status, _, body = call(
        gateway, "POST", "/api/v1/openai/chat", {"prompt": "hi", "maxTokens": -1}, auth
    )
    assert status == 400, body
    bad = next(d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert [v["field"] for v in bad["fieldViolations"]] == ["max_tokens"]


def test_chat_without_a_token_is_401(gateway: Gateway) -> None:
    status, _, _ = call(gateway, "POST", "/api/v1/openai/chat", {"prompt": "hi"})
    assert status == 401


def test_body_fields_the_contract_does_not_read_are_ignored(
    gateway: Gateway, auth: dict[str, str]
) -> None:
    # The original stubs took any JSON object; the transcoder drops unknown fields, so
    # `received` echoes only what the stub read.
    status, _, body = call(
        gateway, "POST", "/api/v1/openai/chat", {"prompt": "hi", "model": "gpt-4"}, auth
    )
    assert status == 200, body
    assert body["received"] == {"prompt": "hi"}


@pytest.fixture(scope="module")
def tuned_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second `leaky up` whose provider stubs read LEAKY_PROVIDER_* from its environment."""
    port, admin = free_port(), free_port()
    tuning = {
        "LEAKY_PROVIDER_OVERRIDES": "openai.error_rate=1,gemini.completion_tokens=10",
        "LEAKY_PROVIDER_LATENCY_MS": "20",
    }
    mesh = ExitStack()
    # Only while it starts: the children keep their environment, later processes get ours.
    with pytest.MonkeyPatch.context() as env:
        for name, value in tuning.items():
            env.setenv(name, value)
        running = mesh.enter_context(
            leaky_up(
                ["--port", str(port), "--admin-port", str(admin)],
                tmp_path_factory.mktemp("tuned-mesh"),
                f"http://127.0.0.1:{port}",
                ("/api/v1/tokens/status",),
            )
        )
    with mesh:
        yield running


def test_leaky_up_passes_the_tuning_to_the_stubs(tuned_gateway: Gateway) -> None:
    auth = {"authorization": f"Bearer {register(tuned_gateway)['token']}"}
    status, _, failed = call(tuned_gateway, "POST", "/api/v1/openai/chat", {"prompt": "hi"}, auth)
    assert status == 503, failed
    info = next(d for d in failed["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert info["reason"] == "PROVIDER_UNAVAILABLE"
    assert info["metadata"] == {"provider": "openai", "simulated": "true"}
    status, _, sized = call(tuned_gateway, "POST", "/api/v1/gemini/chat", {"prompt": "hi"}, auth)
    assert status == 200, sized
    assert sized["usage"]["completionTokens"] == "10"
