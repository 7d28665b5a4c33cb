"""Settings of the Envoy front door (LEAKY_GATEWAY_*), read where its config is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.settings import SettingsError, doc

ENV_PREFIX = "LEAKY_GATEWAY"


@dataclass(frozen=True)
class GatewaySettings:
    """What the rendered Envoy config takes from the environment (ADR 0042)."""

    ratelimit: bool = field(
        default=True,
        metadata=doc(
            "Edge request-rate limits: Envoy asks ShouldRateLimit of the ratelimit deployment "
            "(the token service serving the RLS alone, ADR 0047) for every request to a "
            "service (limits in the token policy's rate_limits)."
        ),
    )
    ratelimit_domain: str = field(
        default="leaky",
        metadata=doc("The rate-limit domain Envoy sends (the policy's rate_limits.domain)."),
    )
    ratelimit_timeout_ms: int = field(
        default=200,
        metadata=doc("How long Envoy waits for ShouldRateLimit before the failure mode applies."),
    )
    ratelimit_failure_mode_deny: bool = field(
        default=False,
        metadata=doc(
            "When ShouldRateLimit fails or times out: true answers 503, false (default) lets "
            "the request through (the services' own limits still hold)."
        ),
    )
    max_request_bytes: int = field(
        default=1024 * 1024,
        metadata=doc(
            "Largest request body Envoy accepts; larger gets 413 (keep it at or below the "
            "services' max_message_bytes)."
        ),
    )
    cors_allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Comma-separated origins browsers may call from (exact, e.g. "
            "https://app.example.com; `*` = any); empty = no CORS filter."
        ),
    )
    cors_max_age_seconds: int = field(
        default=600, metadata=doc("How long browsers may cache a CORS preflight answer.")
    )

    def __post_init__(self) -> None:
        if not self.ratelimit_domain:
            raise SettingsError("ratelimit_domain: must not be empty")
        if not 1 <= self.ratelimit_timeout_ms <= 10_000:
            raise SettingsError(
                f"ratelimit_timeout_ms: 1 to 10000, got {self.ratelimit_timeout_ms}"
            )
        if not 1024 <= self.max_request_bytes <= 64 * 1024 * 1024:
            raise SettingsError(
                f"max_request_bytes: 1024 to 67108864, got {self.max_request_bytes}"
            )
        for origin in self.cors_allowed_origins:
            if origin != "*" and "://" not in origin:
                raise SettingsError(
                    f"cors_allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
                )
        if not 0 <= self.cors_max_age_seconds <= 86_400:
            raise SettingsError(
                f"cors_max_age_seconds: 0 to 86400, got {self.cors_max_age_seconds}"
            )


def load() -> GatewaySettings:
    """The gateway settings from the environment (SettingsError names a bad variable)."""
    return settings_mod.load(GatewaySettings, ENV_PREFIX)
