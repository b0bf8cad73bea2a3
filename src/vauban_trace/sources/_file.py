"""``otlp-json:FILE``: OTLP JSON files, as the OpenTelemetry Collector's ``file`` exporter writes.

The Collector's file exporter (``format: json``, no compression) appends one
``{"resourceSpans": [...]}`` envelope per line, one line per exported batch; a trace's spans may
be spread over many lines. This source reads every line, merges all spans, and rebuilds. A file
holding one (possibly pretty-printed) JSON document of any shape ``traces_data_from_json``
accepts (wrappers, ``batches``, Jaeger UI JSON) is read as that document. Blank lines are skipped;
a line that is not valid OTLP JSON raises :class:`SourceError` naming the line number. Files
written with ``format: proto`` or compression are refused with a message saying so.

The file is re-read when its size or modification time changes.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from vauban_trace._exceptions import RebuildError, SourceError
from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces, traces_data_from_json
from vauban_trace.sources._base import TraceSource, pick, select, summary_of, trace_id_arg
from vauban_trace.store import TraceSummary


def read_otlp_json_file(path: Path, spec: str) -> TracesData:
    """Every span in an OTLP JSON(-lines) file, merged into one ``TracesData``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{spec}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(
            f"{spec}: not UTF-8 text (a file exporter with 'format: proto' or compression? "
            "use 'format: json' without compression)"
        ) from None
    try:
        whole = json.loads(text) if text.strip() else {}
    except ValueError:
        whole = None
    if whole is not None:
        try:
            return traces_data_from_json(whole)
        except RebuildError as exc:
            raise SourceError(f"{spec}: {exc}") from None
    merged = TracesData()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            merged.resource_spans.extend(traces_data_from_json(line).resource_spans)
        except RebuildError as exc:
            raise SourceError(f"{spec}: line {number}: {exc}") from None
    return merged


class OtlpJsonFileSource(TraceSource):
    def __init__(self, path: str | Path, spec: str | None = None) -> None:
        self.path = Path(path)
        self.spec = spec or f"otlp-json:{path}"
        if not self.path.is_file():
            raise SourceError(f"{self.spec}: no such file")
        self._stamp: tuple[int, int] | None = None
        self._traces: list[Trace] = []

    def traces(self) -> list[Trace]:
        """Every trace in the file (cached until the file changes)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(f"{self.spec}: cannot read: {exc.strerror or exc}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            data = read_otlp_json_file(self.path, self.spec)
            try:
                self._traces = rebuild_traces(data)
            except RebuildError as exc:
                raise SourceError(f"{self.spec}: {exc}") from None
            self._stamp = stamp
        return self._traces

    def get_trace(self, trace_id: str) -> Trace:
        return pick(self.traces(), trace_id_arg(trace_id), self.spec)

    def list_traces(
        self, service: str | None = None, since: timedelta | None = None, limit: int = 20
    ) -> list[TraceSummary]:
        return select((summary_of(t) for t in self.traces()), service, since, limit)
