"""Reading the token service's configuration files; the domain parses the text it is given."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from leaky_tokens.token.domain.policy import Policy
from leaky_tokens.token.domain.policy_parse import DEFAULT_POLICY, PolicyError, parse_policy
from leaky_tokens.token.domain.rls_config import RateLimitConfig
from leaky_tokens.token.domain.rls_parse import parse_rate_limit_files


def load_policy(path: Path | str) -> Policy:
    """Read and validate the policy file at `path`; PolicyError names the file and line."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, 0, f"cannot read policy file: {exc.strerror}") from None
    return parse_policy(text, source)


def default_policy_text() -> str:
    """The policy shipped inside the package."""
    return (resources.files("leaky_tokens.token") / DEFAULT_POLICY).read_text(encoding="utf-8")


def load_rate_limit_files(paths: Iterable[Path], *, merge_domains: bool = False) -> RateLimitConfig:
    """Read and parse envoyproxy/ratelimit config files (read once, at start or reload)."""
    return parse_rate_limit_files(
        ((str(p), p.read_text(encoding="utf-8")) for p in paths), merge_domains=merge_domains
    )


def load_rate_limit_directory(directory: Path, *, merge_domains: bool = False) -> RateLimitConfig:
    """Every *.yaml file of a directory, in name order (upstream's RUNTIME_APPDIRECTORY)."""
    return load_rate_limit_files(sorted(directory.glob("*.yaml")), merge_domains=merge_domains)


def load_rate_limit_path(path: Path, *, merge_domains: bool = False) -> RateLimitConfig:
    """A config file, or a directory of them; PolicyError names the file (and line) at fault."""
    where = path
    try:
        if path.is_dir():
            files = sorted(path.glob("*.yaml"))
            texts = []
            for where in files:
                texts.append((str(where), where.read_text(encoding="utf-8")))
        else:
            texts = [(str(path), path.read_text(encoding="utf-8"))]
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PolicyError(str(where), 0, f"cannot read rate limit config: {why}") from None
    return parse_rate_limit_files(texts, merge_domains=merge_domains)
