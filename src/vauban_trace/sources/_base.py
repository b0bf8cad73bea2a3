"""The :class:`TraceSource` interface and helpers shared by every source."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import timedelta

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ConfigurationError, TraceNotFoundError
from vauban_trace.contract import Trace
from vauban_trace.rebuild import normalize_trace_id
from vauban_trace.store import TraceSummary


class TraceSource(ABC):
    """Somewhere traces can be read back from.

    ``spec`` is the string the source was opened with (``"jaeger:http://..."``); every error a
    source raises starts with it, so one line says which backend failed and how.
    """

    spec: str

    @abstractmethod
    def get_trace(self, trace_id: str) -> Trace:
        """The rebuilt trace ``trace_id`` (hex, any case, leading zeros optional, or base64).

        Raises :class:`TraceNotFoundError` when the source does not have it and
        :class:`SourceError` when the source cannot be read.
        """

    @abstractmethod
    def list_traces(
        self, service: str | None = None, since: timedelta | None = None, limit: int = 20
    ) -> list[TraceSummary]:
        """Recent traces, newest start first, optionally of one service / started within ``since``."""

    def last_trace(self) -> Trace:
        """The trace that started last."""
        found = self.list_traces(limit=1)
        if not found:
            raise TraceNotFoundError(f"{self.spec}: no traces")
        return self.get_trace(found[0].trace_id)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the source holds (database connections); idempotent."""

    def __enter__(self) -> TraceSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def summary_of(trace: Trace) -> TraceSummary:
    """The list line of a rebuilt trace (same fields the store lists)."""
    meta = trace.metadata
    service = meta.get("service_name") or trace.resource.get(sc.SERVICE_NAME)
    root = trace.root
    root_name = meta.get("root_name") or (root.name if root is not None else None)
    starts = [s.start_unix_nano for s in trace.spans if s.start_unix_nano]
    ends = [s.end_unix_nano for s in trace.spans if s.end_unix_nano]
    duration = (max(ends) - min(starts)) / 1e9 if starts and ends and max(ends) >= min(starts) else 0.0
    return TraceSummary(
        trace_id=trace.id,
        service=None if service is None else str(service),
        root_name=None if root_name is None else str(root_name),
        start_unix_nano=min(starts) if starts else 0,
        duration_s=duration,
        span_count=len(trace.spans),
        complete=trace.complete,
    )


def select(
    summaries: Iterable[TraceSummary], service: str | None, since: timedelta | None, limit: int
) -> list[TraceSummary]:
    """Filter by service and start time, newest first, at most ``limit``."""
    check_limit(limit)
    floor = since_floor_ns(since)
    out = [
        s for s in summaries
        if (service is None or s.service == service) and (floor is None or s.start_unix_nano >= floor)
    ]
    out.sort(key=lambda s: (-s.start_unix_nano, s.trace_id))
    return out[:limit]


def since_floor_ns(since: timedelta | None) -> int | None:
    if since is None:
        return None
    if since.total_seconds() <= 0:
        raise ConfigurationError(f"since must be a positive duration, got {since}")
    return time.time_ns() - int(since.total_seconds() * 1e9)


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")


def trace_id_arg(trace_id: str) -> str:
    """Canonical 32-hex-digit id of a user-given trace id (ConfigurationError if malformed)."""
    from vauban_trace._exceptions import RebuildError

    try:
        return normalize_trace_id(trace_id)
    except RebuildError as exc:
        raise ConfigurationError(str(exc)) from None


def pick(traces: list[Trace], trace_id: str, spec: str) -> Trace:
    for t in traces:
        if t.id == trace_id:
            return t
    raise TraceNotFoundError(f"{spec}: no trace {trace_id}")
