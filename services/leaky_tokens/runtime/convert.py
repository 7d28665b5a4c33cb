"""Conversions between protobuf well-known types and Python values."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for a datetime; None stays unset."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def optional_datetime(message: object, field: str, json_name: str) -> datetime | None:
    """The datetime of a Timestamp field, None when unset; out of range is a bad argument."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgumentError(
            [FieldViolation(json_name, "is not a valid time (years 1-9999, nanos 0-999999999)")]
        ) from None
