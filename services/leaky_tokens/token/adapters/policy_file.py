"""The policy file in force: loaded at start, reloaded on SIGHUP and when the file changes."""

from __future__ import annotations

from pathlib import Path

from leaky_tokens.token.adapters.config_files import load_policy
from leaky_tokens.token.adapters.watched_config import WatchedConfig
from leaky_tokens.token.domain.policy import Policy


class PolicyFile(WatchedConfig[Policy]):
    """A PolicySource over one file (ADR 0023): a request keeps the snapshot it took while a
    reload swaps in the next; a file that does not load is refused and the old policy stays."""

    def __init__(self, path: Path, policy: Policy | None = None) -> None:
        super().__init__(path, load_policy, "policy", policy)
