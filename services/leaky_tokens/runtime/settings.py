"""Settings read once from the environment (`LEAKY_<SVC>_<FIELD>`) into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable could not be parsed into its setting."""


def doc(text: str, *, env: str = "") -> dict[str, str]:
    """Field metadata carrying the one-line documentation of a setting.

    `env` names its environment variable when that is not `<PREFIX>_<FIELD>` (a name kept
    for compatibility, e.g. LEAKY_CACHE_DIR among the LEAKY_STACK_ settings).
    """
    return {"doc": text, "env": env} if env else {"doc": text}


def _parse(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _parse(raw, args[0], name)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_parse(p.strip(), item, name) for p in raw.split(",") if p.strip())
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected a boolean, got {raw!r}")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: expected {kind.__name__}, got {raw!r}") from exc
    if kind is Path:
        return Path(raw)
    return raw


def env_name(prefix: str, field_name: str) -> str:
    """The environment variable name of one setting, e.g. LEAKY_AUTH_PORT."""
    return f"{prefix}_{field_name}".upper()


def _variable(prefix: str, field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("env") or env_name(prefix, field.name))


def load(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` from defaults overridden by `<PREFIX>_<FIELD>` environment variables."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = _variable(prefix, field)
        if name in env:
            values[field.name] = _parse(env[name], hints[field.name], name)
    return cls(**values)


def describe(cls: type[Any], prefix: str) -> list[tuple[str, str, str]]:
    """(variable, default, doc) rows for documenting a settings class."""
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default not in (dataclasses.MISSING, None) else ""
        if isinstance(default, tuple):
            default = ",".join(str(item) for item in default)  # as it is written in the env
        rows.append((_variable(prefix, field), str(default), field.metadata.get("doc", "")))
    return rows
