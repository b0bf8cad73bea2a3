"""Small records returned by the trace store, and trace id checks.

- :class:`TraceSummary` one line of ``list_traces`` (from the rebuilt trace);
- :class:`PendingTrace` a trace whose raw spans changed since its last rebuild (for the
  collector's assembler: when were spans last received, was a root span seen);
- :class:`IngestResult` what ``ingest`` did with a batch (accepted, duplicates, rejected).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vauban_trace.store._ingest import SpanSnapshot

from vauban_trace._exceptions import TraceStoreError

_TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_trace_id(trace_id: object, *, where: str = "trace id") -> str:
    """Return the canonical (lowercase) form of a 32-hex-digit trace id, or raise.

    Surrounding whitespace and upper case are accepted; anything else raises
    :class:`TraceStoreError` naming the problem.
    """
    if not isinstance(trace_id, str):
        raise TraceStoreError(f"{where}: expected a string of 32 hex digits, got {type(trace_id).__name__}")
    tid = trace_id.strip().lower()
    if not _TRACE_ID_RE.match(tid):
        shown = trace_id[:80]
        if len(tid) != 32:
            raise TraceStoreError(f"{where}: {shown!r} has {len(tid)} characters; a trace id is 32 hex digits")
        raise TraceStoreError(f"{where}: {shown!r} is not hexadecimal; a trace id is 32 hex digits")
    if tid == "0" * 32:
        raise TraceStoreError(f"{where}: the all-zero trace id is invalid")
    return tid


@dataclass(frozen=True)
class TraceSummary:
    """One stored, rebuilt trace, as listed by :meth:`TraceStore.list_traces`."""

    trace_id: str
    service: str | None
    root_name: str | None
    start_unix_nano: int
    duration_s: float
    span_count: int
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "service": self.service,
            "root_name": self.root_name,
            "start_unix_nano": self.start_unix_nano,
            "duration_s": self.duration_s,
            "span_count": self.span_count,
            "complete": self.complete,
        }


@dataclass(frozen=True)
class PendingTrace:
    """A trace whose raw spans changed after its last rebuild (or that was never rebuilt).

    ``version`` increases whenever the trace's raw spans change; pass it back to
    :meth:`TraceStore.put_trace` so spans that arrive during a rebuild keep the trace pending.
    Times are wall-clock unix nanoseconds of the store's ``add_spans`` calls.
    """

    trace_id: str
    version: int
    rebuilt_version: int | None
    span_count: int
    has_root: bool
    service: str | None
    root_name: str | None
    first_received_unix_nano: int
    last_received_unix_nano: int


@dataclass(frozen=True)
class IngestResult:
    """What one ``ingest`` call did: spans stored, spans already stored identically, spans refused."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)
    trace_ids: tuple[str, ...] = field(default_factory=tuple)
    #: with ``ingest(..., snapshots=True)``: trace id -> :class:`SpanSnapshot` of its spans (``data()``
    #: = ``spans_for_bytes``), for each trace that had no stored span before the call (version 1 now)
    snapshots: Mapping[str, SpanSnapshot] = field(default_factory=dict)


__all__ = ["IngestResult", "PendingTrace", "TraceSummary", "check_trace_id"]
