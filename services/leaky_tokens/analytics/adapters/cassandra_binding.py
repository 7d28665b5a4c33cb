"""Rows bound into the store's batches without a driver `BoundStatement` per row (ADR 0055).

`BatchStatement.add(prepared, params)` makes a `BoundStatement` per row: ~9 µs of CPU for the
raw table's 13 values, most of the store's Python per event. A `RowBinder` serializes the
same values itself (one function per column, chosen from the prepared statement's column
types: the driver's own encoding for any type it does not know) and appends them to the batch
as `add` does. Tests compare its bytes with the driver's `bind` for every write statement.

Routing attributes are not copied to the batch: the store's load-balancing policy is
round-robin, which does not read them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from cassandra.query import BatchStatement, PreparedStatement

_int64 = struct.Struct(">q").pack
_int32 = struct.Struct(">i").pack


def _text(value: str) -> bytes:
    return value.encode()


def _boolean(value: object) -> bytes:
    return b"\x01" if value else b"\x00"


def _blob(value: bytes) -> bytes:
    return value


# The driver's cqltypes typename -> its serialization, for the types the store writes.
_SERIALIZERS: dict[str, Callable[[Any], bytes]] = {
    "varchar": _text,
    "text": _text,
    "bigint": _int64,
    "int": _int32,
    "boolean": _boolean,
    "blob": _blob,
}


class RowBinder:
    """Serializes one prepared statement's parameters as the driver's `bind` does."""

    def __init__(self, prepared: PreparedStatement, protocol_version: int) -> None:
        self.query_id = prepared.query_id
        self._names = [column.name for column in prepared.column_metadata]
        self._serializers = [
            _SERIALIZERS.get(column.type.typename)
            or _driver_serializer(column.type, protocol_version)
            for column in prepared.column_metadata
        ]

    def values(self, params: Sequence[Any]) -> list[bytes | None]:
        if len(params) != len(self._serializers):
            raise ValueError(f"{len(params)} values for {len(self._serializers)} columns")
        try:
            return [
                None if value is None else serialize(value)
                for serialize, value in zip(self._serializers, params, strict=True)
            ]
        except (TypeError, AttributeError, struct.error) as error:
            raise TypeError(self._which(params, error)) from error

    def add_to(self, batch: BatchStatement, params: Sequence[Any]) -> None:
        """As `batch.add(prepared, params)`, without the BoundStatement."""
        batch._add_statement_and_params(True, self.query_id, self.values(params))

    def _which(self, params: Sequence[Any], error: BaseException) -> str:
        for name, serialize, value in zip(self._names, self._serializers, params, strict=True):
            try:
                if value is not None:
                    serialize(value)
            except (TypeError, AttributeError, struct.error):
                return f"column {name}: cannot serialize {type(value).__name__} ({error})"
        return str(error)


def _driver_serializer(cql_type: Any, protocol_version: int) -> Callable[[Any], bytes]:
    def serialize(value: Any) -> bytes:
        return cql_type.serialize(value, protocol_version)  # type: ignore[no-any-return]

    return serialize
