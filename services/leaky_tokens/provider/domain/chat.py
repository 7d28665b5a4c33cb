"""The Chat use case: validate, wait the configured latency, maybe fail, then reply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from leaky_tokens.provider.domain.completion import completion_size, completion_text, count_tokens
from leaky_tokens.provider.domain.profiles import MAX_NAME_LENGTH, Profile
from leaky_tokens.provider.ports import Sleep, StubRandomness
from leaky_tokens.runtime.errors import NotFoundError, UnavailableError, Validator
from leaky_tokens.runtime.ports import Clock


@dataclass(frozen=True)
class Reply:
    """One stub completion; everything but `id` and `created` follows from the request."""

    id: str
    provider: str
    created: datetime
    message: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class ChatStub:
    """Answers chats for the configured providers, with their latency and failures.

    Per call it draws from `randomness` in a fixed order, so a seeded source replays the
    same run: the jitter (only when the profile has jitter), then the failure (only when
    its error rate is above 0), then the response id.
    """

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        *,
        clock: Clock,
        randomness: StubRandomness,
        sleep: Sleep,
    ) -> None:
        self._profiles = dict(profiles)
        self._known = ",".join(sorted(self._profiles))
        self._clock = clock
        self._random = randomness
        self._sleep = sleep

    def profile(self, provider: str) -> Profile:
        """The profile of `provider` (case-insensitive); INVALID_ARGUMENT or NOT_FOUND."""
        v = Validator()
        name = v.require("provider", provider)
        if len(name) > MAX_NAME_LENGTH:
            v.fail("provider", f"must be at most {MAX_NAME_LENGTH} characters")
        v.raise_if_any()
        found = self._profiles.get(name.lower())
        if found is None:
            raise NotFoundError(
                f"unknown provider {name!r}; this stub answers for {self._known}",
                reason="UNKNOWN_PROVIDER",
                metadata={"provider": name, "known_providers": self._known},
            )
        return found

    async def chat(self, provider: str, prompt: str, max_tokens: int = 0) -> Reply:
        """A reply after the profile's latency, or UNAVAILABLE at its error rate."""
        if max_tokens < 0:
            v = Validator()
            v.fail("max_tokens", "must be >= 0 (0 means the configured completion size)")
            v.raise_if_any()
        profile = self.profile(provider)
        delay_ms = profile.latency_ms
        if profile.jitter_ms > 0:
            delay_ms += self._random.uniform() * profile.jitter_ms
        if delay_ms > 0:
            await self._sleep(delay_ms / 1000)
        if profile.error_rate > 0 and self._random.uniform() < profile.error_rate:
            raise UnavailableError(
                f"{profile.name} is unavailable (a simulated failure; error rate "
                f"{profile.error_rate:g})",
                reason="PROVIDER_UNAVAILABLE",
                metadata={"provider": profile.name, "simulated": "true"},
            )
        prompt_tokens = count_tokens(prompt)
        size = completion_size(
            prompt_tokens,
            fixed=profile.completion_tokens,
            ratio=profile.completion_ratio,
            max_tokens=max_tokens,
        )
        return Reply(
            id=self._random.new_id(),
            provider=profile.name,
            created=self._clock.now(),
            message=completion_text(profile.name, profile.display, prompt, size),
            prompt_tokens=prompt_tokens,
            completion_tokens=size,
        )
