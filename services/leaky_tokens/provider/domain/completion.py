"""Token counting and the deterministic stub completion."""

from __future__ import annotations

import hashlib
import math
import random
import re

# One token per run of word characters and one per other non-space character: a stand-in
# for a real BPE tokenizer (those give about 1.3 tokens per English word), documented and
# deterministic, and stable under re-tokenizing text built from its own tokens.
TOKEN = re.compile(r"\w+|[^\w\s]")
# A completion never exceeds this many tokens, whatever the ratio and the prompt.
MAX_COMPLETION_TOKENS = 65_536
# Words the completion is padded with after "Stubbed <Provider> response" (one token each).
FILLER = (
    "the",
    "quick",
    "model",
    "considers",
    "your",
    "prompt",
    "and",
    "answers",
    "with",
    "a",
    "short",
    "deterministic",
    "text",
    "made",
    "of",
    "plain",
    "words",
    "so",
    "that",
    "every",
    "count",
    "stays",
    "exact",
    "across",
    "calls",
    "runs",
    "and",
    "hosts",
)


def count_tokens(text: str) -> int:
    """Tokens in `text` by the stub's approximation (see TOKEN)."""
    return sum(1 for _ in TOKEN.finditer(text))


def completion_size(prompt_tokens: int, *, fixed: int, ratio: float, max_tokens: int = 0) -> int:
    """Completion tokens: `fixed` plus `ratio` x prompt tokens (rounded up), at most
    `max_tokens` when that is positive, and never above MAX_COMPLETION_TOKENS."""
    size = fixed + math.ceil(ratio * prompt_tokens)
    if max_tokens > 0:
        size = min(size, max_tokens)
    return max(0, min(size, MAX_COMPLETION_TOKENS))


def completion_text(provider: str, display: str, prompt: str, size: int) -> str:
    """A text of exactly `size` tokens, the same for the same (provider, prompt, size).

    It starts with the original stubs' message ("Stubbed OpenAI response", three tokens when
    `display` is one word), cut short when `size` is smaller, then filler words chosen by a
    hash of the provider and the prompt.
    """
    header = f"Stubbed {display} response"
    header_tokens = TOKEN.findall(header)
    if size <= len(header_tokens):
        return " ".join(header_tokens[:size])
    digest = hashlib.sha256(f"{provider}\0{prompt}".encode()).digest()
    words = random.Random(digest).choices(FILLER, k=size - len(header_tokens))  # noqa: S311
    return f"{header} {' '.join(words)}"
