"""The Lua scripts of the Redis decision store: shared arithmetic plus one body per operation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

OPERATIONS = ("decide", "reserve", "refund", "settle", "credit", "revert", "read", "sweep")


@dataclass(frozen=True, slots=True)
class Script:
    """One operation's script text and its SHA1 (what EVALSHA names)."""

    name: str
    text: str
    sha: str


def load_scripts() -> dict[str, Script]:
    """Every operation's script: common.lua followed by its own body."""
    folder = files("leaky_tokens.token.adapters") / "lua"
    common = (folder / "common.lua").read_text()
    scripts = {}
    for name in OPERATIONS:
        text = common + "\n" + (folder / f"{name}.lua").read_text()
        scripts[name] = Script(
            name, text, hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        )
    return scripts
