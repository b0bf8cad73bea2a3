"""``store:DIR``: the local trace database written by the embedded exporter and the collector."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from vauban_trace._exceptions import SourceError, TraceNotFoundError, TraceStoreError
from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.sources._base import TraceSource, check_limit, pick, since_floor_ns, trace_id_arg
from vauban_trace.store import TraceStore, TraceSummary


class StoreSource(TraceSource):
    """Reads a :class:`~vauban_trace.store.TraceStore` directory; never writes to it, except that
    opening a store of an older schema migrates it in place (what any ``TraceStore`` does).

    A trace whose raw spans are stored but not rebuilt yet (still in flight) is rebuilt on the
    fly from those spans (it then usually says ``complete: false``) instead of being reported
    missing.
    """

    def __init__(self, directory: str | Path, spec: str | None = None) -> None:
        self.dir = Path(directory)
        self.spec = spec or f"store:{directory}"
        if not (self.dir / "traces.sqlite").is_file():
            raise SourceError(f"{self.spec}: no trace store here ({self.dir / 'traces.sqlite'} does not exist)")
        try:
            self.store = TraceStore(self.dir)
        except TraceStoreError as exc:
            raise SourceError(f"{self.spec}: {exc}") from None

    def get_trace(self, trace_id: str) -> Trace:
        tid = trace_id_arg(trace_id)
        try:
            return self.store.get_trace(tid)
        except TraceNotFoundError:
            if self.store.raw_span_count(tid) == 0:
                raise TraceNotFoundError(f"{self.spec}: no trace {tid}") from None
        return pick(rebuild_traces(self.store.spans_for(tid)), tid, self.spec)

    def list_traces(
        self, service: str | None = None, since: timedelta | None = None, limit: int = 20
    ) -> list[TraceSummary]:
        check_limit(limit)
        return self.store.list_traces(service=service, since_unix_nano=since_floor_ns(since), limit=limit)

    def last_trace(self) -> Trace:
        try:
            return self.store.last_trace()
        except TraceNotFoundError:
            raise TraceNotFoundError(f"{self.spec}: no rebuilt traces yet") from None

    def trace_json_path(self, trace_id: str) -> Path:
        return self.store.trace_json_path(trace_id)

    def trace_json_file(self, trace_id: str) -> Path | None:
        """The trace's ``traces/<id>.json`` (written from the database if missing), None if not rebuilt."""
        return self.store.trace_json_file(trace_id)

    def close(self) -> None:
        self.store.close()
