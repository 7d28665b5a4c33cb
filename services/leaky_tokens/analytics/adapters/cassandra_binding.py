"""Rows bound into the store's batches without a driver `BoundStatement` per row (ADR 0055).

`BatchStatement.add(prepared, params)` makes a `BoundStatement` per row: ~9 µs of CPU for the
raw table's 13 values, most of the store's Python per event. A `RowBinder` serializes the
same values itself (code generated from the prepared statement's column types: the driver's
own encoding for any type it does not know) and appends them to the batch as `add` does.
Tests compare its bytes with the driver's `bind` for every write statement.

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


# The driver's cqltypes typename -> an expression serializing `{v}` as the driver does.
_EXPRESSIONS: dict[str, str] = {
    "varchar": "{v}.encode()",
    "text": "{v}.encode()",
    "bigint": "_int64({v})",
    "int": "_int32({v})",
    "boolean": '(b"\\x01" if {v} else b"\\x00")',
    "blob": "{v}",
}


class RowBinder:
    """Serializes one prepared statement's parameters as the driver's `bind` does.

    The serializing function is generated per statement from its column types (as dataclasses
    generate `__init__`): one expression per column, with no per-value call or loop, a
    quarter of the CPU of a loop over per-column functions. Types without an expression here
    use the driver's own `serialize`."""

    def __init__(self, prepared: PreparedStatement, protocol_version: int) -> None:
        self.query_id = prepared.query_id
        columns = prepared.column_metadata
        self._names = [column.name for column in columns]
        namespace: dict[str, Any] = {"_int64": _int64, "_int32": _int32}
        parts = []
        for i, column in enumerate(columns):
            expression = _EXPRESSIONS.get(column.type.typename)
            if expression is None:
                namespace[f"_s{i}"] = _driver_serializer(column.type, protocol_version)
                expression = f"_s{i}({{v}})"
            parts.append(f"None if v{i} is None else " + expression.format(v=f"v{i}"))
        unpack = "".join(f"v{i}, " for i in range(len(columns)))
        source = f"def values(params):\n    {unpack}= params\n    return [{', '.join(parts)}]\n"
        exec(source, namespace)  # noqa: S102 - code made above from a fixed table, no input
        self._values: Callable[[Sequence[Any]], list[bytes | None]] = namespace["values"]

    def values(self, params: Sequence[Any]) -> list[bytes | None]:
        if len(params) != len(self._names):
            raise ValueError(f"{len(params)} values for {len(self._names)} columns")
        try:
            return self._values(params)
        except (TypeError, AttributeError, struct.error) as error:
            raise TypeError(self._which(params, error)) from error

    def add_to(self, batch: BatchStatement, params: Sequence[Any]) -> None:
        """As `batch.add(prepared, params)`, without the BoundStatement."""
        batch._add_statement_and_params(True, self.query_id, self.values(params))

    def _which(self, params: Sequence[Any], error: BaseException) -> str:
        for i, (name, value) in enumerate(zip(self._names, params, strict=True)):
            probe = [None] * len(params)
            probe[i] = value
            try:
                self._values(probe)
            except (TypeError, AttributeError, struct.error):
                return f"column {name}: cannot serialize {type(value).__name__} ({error})"
        return str(error)


def _driver_serializer(cql_type: Any, protocol_version: int) -> Callable[[Any], bytes]:
    def serialize(value: Any) -> bytes:
        return cql_type.serialize(value, protocol_version)  # type: ignore[no-any-return]

    return serialize
