"""``jaeger:URL`` and ``tempo:URL``: read traces back from Jaeger (v2) and Grafana Tempo over HTTP.

Both answer OTLP JSON (with their quirks), which goes through :mod:`vauban_trace.rebuild` like
every other input.

Jaeger (query port 16686):

- fetch: ``GET /api/v3/traces/{id}`` (``{"result": {...}}``; a streamed answer of several
  ``{"result": ...}`` documents is merged). On 404 (trace unknown to v3, or a Jaeger without the
  v3 API) the legacy ``GET /api/traces/{id}`` (UI model, ``{"data": [...]}``) is tried; 404 there
  too means the trace is not found.
- search: ``GET /api/v3/traces?query.service_name=..&query.start_time_min=..&query.start_time_max=..
  &query.num_traces=..`` (RFC3339Nano times). Jaeger requires a service and a time window: with no
  ``service`` the services from ``GET /api/v3/services`` are searched one by one (at most
  :data:`MAX_SERVICES`) and merged; with no ``since`` the window is the last
  :data:`DEFAULT_JAEGER_LOOKBACK`. ``404 {"error": {"message": "No traces found"}}`` is an empty
  result. Summaries are computed from the rebuilt traces the search returns.

Tempo (port 3200):

- fetch: ``GET /api/v2/traces/{id}`` (``{"trace": {...}}``), falling back on 404 to
  ``GET /api/traces/{id}`` (``{"batches": [...]}`` with base64 ids).
- search: ``GET /api/search?q={ resource.service.name = "x" }&limit=&start=&end=`` (``{}`` when no
  service; start/end in unix seconds only when ``since`` is given). Search hits carry hex ids with
  leading zeros stripped (padded back to 32 digits); each hit is then fetched, so the summary's
  span count and completeness are those of the rebuilt trace, not guesses.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from vauban_trace._exceptions import RebuildError, SourceError, TraceNotFoundError
from vauban_trace.contract import Trace
from vauban_trace.rebuild import (
    normalize_trace_id,
    rebuild_traces,
    traces_data_from_jaeger_ui,
    traces_data_from_json,
)
from vauban_trace.sources._base import TraceSource, check_limit, pick, select, summary_of, trace_id_arg
from vauban_trace.sources._http import HttpJson, Reply, error_message
from vauban_trace.store import TraceSummary

DEFAULT_JAEGER_LOOKBACK = timedelta(days=1)
MAX_SERVICES = 100


def newest(traces: Iterable[Trace], since: timedelta | None, limit: int) -> list[Trace]:
    """Traces started within ``since``, newest first, at most ``limit``."""
    by_id = {t.id: t for t in traces}
    keep = {s.trace_id for s in select((summary_of(t) for t in by_id.values()), None, since, limit)}
    out = [t for t in by_id.values() if t.id in keep]
    out.sort(key=lambda t: (-summary_of(t).start_unix_nano, t.id))
    return out


def rfc3339_nano(unix_nano: int) -> str:
    """``2026-11-26T01:02:03.123456789Z`` (Jaeger's RFC3339Nano query times)."""
    secs, nanos = divmod(unix_nano, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


class _HttpSource(TraceSource):
    def __init__(self, url: str, spec: str, timeout_s: float) -> None:
        self.spec = spec
        self.http = HttpJson(url, spec, timeout_s)

    @abstractmethod
    def find_traces(self, service: str | None = None, since: timedelta | None = None, limit: int = 20) -> list[Trace]:
        """Rebuilt traces matching a search, newest first."""

    def list_traces(
        self, service: str | None = None, since: timedelta | None = None, limit: int = 20
    ) -> list[TraceSummary]:
        return [summary_of(t) for t in self.find_traces(service, since, limit)]

    def last_trace(self) -> Trace:
        found = self.find_traces(limit=1)
        if not found:
            raise TraceNotFoundError(f"{self.spec}: no traces")
        return found[0]

    def _rebuild(self, data: TracesData) -> list[Trace]:
        try:
            return rebuild_traces(data)
        except RebuildError as exc:
            raise SourceError(f"{self.spec}: {exc}") from None

    def _otlp(self, reply: Reply) -> TracesData:
        """OTLP TracesData from one reply (one document or a stream of them)."""
        doc = self.http.json(reply)
        merged = TracesData()
        for part in doc if isinstance(doc, list) else [doc]:
            try:
                merged.resource_spans.extend(traces_data_from_json(part).resource_spans)
            except RebuildError as exc:
                raise SourceError(f"{self.spec}: unexpected answer from {reply.url}: {exc}") from None
        return merged


class JaegerSource(_HttpSource):
    def __init__(self, url: str, spec: str | None = None, timeout_s: float = 10.0) -> None:
        super().__init__(url, spec or f"jaeger:{url}", timeout_s)

    def get_trace(self, trace_id: str) -> Trace:
        tid = trace_id_arg(trace_id)
        reply = self.http.get(f"/api/v3/traces/{tid}")
        if reply.status != 404:
            return pick(self._rebuild(self._otlp(reply)), tid, self.spec)
        legacy = self.http.get(f"/api/traces/{tid}")
        if legacy.status == 404:
            raise TraceNotFoundError(f"{self.spec}: no trace {tid}")
        doc = self.http.json(legacy)
        try:
            data = traces_data_from_jaeger_ui(doc)
        except RebuildError as exc:
            raise SourceError(f"{self.spec}: unexpected answer from {legacy.url}: {exc}") from None
        return pick(self._rebuild(data), tid, self.spec)

    def services(self) -> list[str]:
        reply = self.http.get("/api/v3/services")
        if reply.status == 404:
            reply = self.http.get("/api/services")
            if reply.status == 404:
                raise SourceError(f"{self.spec}: neither /api/v3/services nor /api/services exists; pass a service")
        doc = self.http.json(reply)
        names = doc.get("services", doc.get("data")) if isinstance(doc, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SourceError(f"{self.spec}: unexpected answer from {reply.url}: no list of service names")
        return sorted(names)

    def find_traces(self, service: str | None = None, since: timedelta | None = None, limit: int = 20) -> list[Trace]:
        """Rebuilt traces matching a search (see the module docstring), newest first."""
        check_limit(limit)
        window = since if since is not None else DEFAULT_JAEGER_LOOKBACK
        now = time.time_ns()
        start = now - int(window.total_seconds() * 1e9)
        services = [service] if service is not None else self.services()[:MAX_SERVICES]
        found: dict[str, Trace] = {}
        for name in services:
            reply = self.http.get(
                "/api/v3/traces",
                {
                    "query.service_name": name,
                    "query.start_time_min": rfc3339_nano(start),
                    "query.start_time_max": rfc3339_nano(now),
                    "query.num_traces": str(limit),
                },
            )
            if reply.status == 404:
                self._check_no_traces(reply)
                continue
            for trace in self._rebuild(self._otlp(reply)):
                found.setdefault(trace.id, trace)
        return newest(found.values(), since, limit)

    def _check_no_traces(self, reply: Reply) -> None:
        try:
            doc: Any = self.http.json(reply)
        except SourceError:
            doc = None
        message = error_message(doc)
        if message is None or "no traces" not in message.lower():
            raise SourceError(f"{self.spec}: {reply.url} answered 404 ({message or 'no such endpoint'})")


class TempoSource(_HttpSource):
    def __init__(self, url: str, spec: str | None = None, timeout_s: float = 10.0) -> None:
        super().__init__(url, spec or f"tempo:{url}", timeout_s)

    def get_trace(self, trace_id: str) -> Trace:
        tid = trace_id_arg(trace_id)
        reply = self.http.get(f"/api/v2/traces/{tid}")
        if reply.status == 404:
            reply = self.http.get(f"/api/traces/{tid}")
            if reply.status == 404:
                raise TraceNotFoundError(f"{self.spec}: no trace {tid}")
        return pick(self._rebuild(self._otlp(reply)), tid, self.spec)

    def find_traces(self, service: str | None = None, since: timedelta | None = None, limit: int = 20) -> list[Trace]:
        """Rebuilt traces matching a TraceQL search (see the module docstring), newest first."""
        check_limit(limit)
        if service is None:
            query = "{}"
        else:
            escaped = service.replace("\\", "\\\\").replace('"', '\\"')
            query = f'{{ resource.service.name = "{escaped}" }}'
        params = {"q": query, "limit": str(limit)}
        if since is not None:
            end = int(time.time()) + 1
            params["start"], params["end"] = str(end - 1 - int(since.total_seconds())), str(end)
        reply = self.http.get("/api/search", params)
        if reply.status == 404:
            raise SourceError(f"{self.spec}: {reply.url} answered 404 (no search API)")
        doc = self.http.json(reply)
        hits = doc.get("traces") if isinstance(doc, dict) else None
        if hits is None and isinstance(doc, dict) and not doc.get("error"):
            hits = []
        if not isinstance(hits, list):
            raise SourceError(f"{self.spec}: unexpected answer from {reply.url}: no 'traces' list")
        traces: list[Trace] = []
        for i, hit in enumerate(hits):
            raw_id = hit.get("traceID") if isinstance(hit, dict) else None
            try:
                tid = normalize_trace_id(raw_id) if isinstance(raw_id, str) else None
            except RebuildError:
                tid = None
            if tid is None:
                raise SourceError(f"{self.spec}: unexpected answer from {reply.url}: traces[{i}].traceID {raw_id!r}")
            try:
                traces.append(self.get_trace(tid))
            except TraceNotFoundError:  # listed but gone (retention) or not flushed yet
                continue
        return newest(traces, since, limit)
