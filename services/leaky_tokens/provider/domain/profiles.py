"""Which providers the stubs answer for, and how each behaves (latency, errors, counts)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# A provider name is one word (so its display name is one token of the completion).
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_NAME_LENGTH = 64  # longer request names are refused before any lookup
# How the original stubs spelled the names in their messages; others are capitalized.
DISPLAY_NAMES = {"openai": "OpenAI", "qwen": "Qwen", "gemini": "Gemini"}


class ProfileError(ValueError):
    """A provider profile or override that cannot be used."""


@dataclass(frozen=True)
class Profile:
    """How one provider stub behaves."""

    name: str
    latency_ms: float = 0.0  # every answer waits this long
    jitter_ms: float = 0.0  # plus a uniform random extra in [0, jitter_ms)
    error_rate: float = 0.0  # this fraction of calls fail as UNAVAILABLE
    completion_tokens: int = 3  # fixed completion size ("Stubbed OpenAI response")
    completion_ratio: float = 0.0  # plus this many per prompt token, rounded up

    @property
    def display(self) -> str:
        """The name as the original stubs' messages spell it, e.g. "OpenAI"."""
        return DISPLAY_NAMES.get(self.name, self.name.capitalize())

    def check(self) -> Profile:
        """Self, or ProfileError naming what is out of range."""
        if not NAME.fullmatch(self.name):
            raise ProfileError(f"provider name {self.name!r} must match {NAME.pattern}")
        numbers = (self.latency_ms, self.jitter_ms, self.error_rate, self.completion_ratio)
        if not all(math.isfinite(n) for n in numbers):
            raise ProfileError(f"{self.name}: every number must be finite")
        if min(self.latency_ms, self.jitter_ms, self.completion_tokens) < 0:
            raise ProfileError(f"{self.name}: latency, jitter and completion tokens must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ProfileError(f"{self.name}: error rate must be between 0 and 1")
        if self.completion_ratio < 0:
            raise ProfileError(f"{self.name}: completion ratio must be >= 0")
        return self


_TUNABLE = tuple(f.name for f in fields(Profile) if f.name != "name")


def profiles(
    names: Iterable[str], defaults: Profile, overrides: Iterable[str] = ()
) -> Mapping[str, Profile]:
    """One profile per name from `defaults`, then `overrides` items "name.field=value"
    (e.g. "qwen.latency_ms=200"); ProfileError on a bad name, field or value."""
    result: dict[str, Profile] = {}
    for raw in names:
        name = raw.strip().lower()
        if name in result:
            raise ProfileError(f"provider {name!r} is listed twice")
        result[name] = replace(defaults, name=name).check()
    if not result:
        raise ProfileError("at least one provider is needed")
    for item in overrides:
        target, _, value = item.partition("=")
        name, _, field = target.strip().partition(".")
        if name not in result or field not in _TUNABLE or not value.strip():
            raise ProfileError(
                f"override {item!r}: expected <provider>.<field>=<value> with a provider of "
                f"{sorted(result)} and a field of {sorted(_TUNABLE)}"
            )
        kind: type[int] | type[float] = int if field == "completion_tokens" else float
        try:
            parsed: Any = kind(value.strip())
        except ValueError:
            wanted = "an integer" if kind is int else "a number"
            raise ProfileError(f"override {item!r}: {value.strip()!r} is not {wanted}") from None
        result[name] = replace(result[name], **{field: parsed}).check()
    return result
