"""`python -m leaky_tokens.token`: run the token service."""

from leaky_tokens.runtime.process import run_service
from leaky_tokens.token.bootstrap import ENV_PREFIX, RLS_SLUG, SERVE_RLS, TokenSettings, build


def _single_process_reason(settings: TokenSettings) -> str:
    """Processes may share the port only when they share the store (Redis)."""
    if settings.store_backend == "memory":
        return "the memory store would give each process its own buckets (use redis or cluster)"
    return ""


def _name(settings: TokenSettings) -> str:
    """The deployment's name in its logs: the ShouldRateLimit-only one is `ratelimit`."""
    return RLS_SLUG if settings.serve == SERVE_RLS else "token"


if __name__ == "__main__":
    run_service(
        "token",
        TokenSettings,
        ENV_PREFIX,
        build,
        single_process_reason=_single_process_reason,
        name_of=_name,
    )
