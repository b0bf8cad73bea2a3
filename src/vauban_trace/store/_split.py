"""Native fast path of :func:`vauban_trace.store._ingest.extract_rows` for a serialized request.

::

    rows = split_rows(data)          # data: serialized ExportTraceServiceRequest (or TracesData)
    if rows is None:                 # not handled natively: use the Python path
        rows, problems = extract_rows(ExportTraceServiceRequest.FromString(data).resource_spans)

:func:`split_rows` returns exactly ``extract_rows(ExportTraceServiceRequest.FromString(data)
.resource_spans)[0]`` (same :class:`SpanRow` values in the same order, payload and envelope bytes
identical), computed by the C extension ``_cwire`` straight from the bytes: the resource, scope
and span bytes are sliced out of the input instead of being re-serialized, which is exact
because the extension first checks that every message is in the canonical form upb's
deterministic serialization writes (known fields in field-number order, no default-valued
scalar, minimal varints, valid UTF-8). It returns None, and the caller falls back, when:

- the extension is not built, or ``VAUBAN_TRACE_NO_NATIVE=1`` was set when this module was imported;
- any message is not canonical (unknown or reordered fields, an explicit zero, an overlong varint,
  attribute values nested deeper than 64 messages), or the bytes are not a valid request;
- any span would be rejected (bad trace/span/parent id, a time of 2^63 ns or more): the Python
  path reports those problems.

It never raises on bad input and never reads past the buffer.
"""

from __future__ import annotations

from types import ModuleType
from typing import cast

from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from vauban_trace.store._ingest import SpanRow
from vauban_trace.store._native import cwire

_native: ModuleType | None = cwire
if _native is not None:
    _native.configure(SERVICE_NAME, SpanRow)


def native_available() -> bool:
    """Whether :func:`split_rows` can return rows at all (extension built and not disabled)."""
    return _native is not None


def split_rows(data: bytes) -> list[SpanRow] | None:
    """The store's rows of a serialized export request, or None: use the Python path."""
    if _native is None:
        return None
    return cast("list[SpanRow] | None", _native.split(data))


class CutRequest:
    """A serialized export request already cut into the store's rows by :func:`cut_request`:
    every span in it is valid and the bytes are what upb would accept, so a receiver holding one
    needs no protobuf decode. :meth:`TraceStore.ingest_parts` takes it as a part."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[SpanRow]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)


def cut_request(data: bytes) -> CutRequest | None:
    """:func:`split_rows` wrapped for a receiver; None when the Python path must decode ``data``
    (not canonical, a span to reject, malformed, or no extension)."""
    rows = split_rows(data)
    return None if rows is None else CutRequest(rows)


__all__ = ["CutRequest", "cut_request", "native_available", "split_rows"]
