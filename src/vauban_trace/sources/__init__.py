"""Read traces back: one interface over the local store, OTLP JSON files, Jaeger and Tempo.

::

    from vauban_trace.sources import open_source

    with open_source("store:.vauban") as src:            # or "otlp-json:traces.jsonl",
        trace = src.get_trace("4bf92f3577b34da6a3ce929d0e0e4736")   # "jaeger:http://localhost:16686",
        for s in src.list_traces(service="demo", since=timedelta(hours=1), limit=20):   # "tempo:http://localhost:3200"
            print(s.trace_id, s.root_name, s.duration_s)
        last = src.last_trace()

:class:`TraceSource` is the interface: ``get_trace(trace_id) -> Trace`` (raises
:class:`~vauban_trace.TraceNotFoundError`), ``list_traces(service=None, since=None, limit=20) ->
list[TraceSummary]`` (newest first; :class:`~vauban_trace.store.TraceSummary` is the store's
record), ``last_trace()`` and ``close()``. Trace ids may be given in hex (any case, leading zeros
optional) or base64.

Sources (``open_source(spec)``; an unknown scheme is a :class:`ConfigurationError`):

- ``store:DIR`` (:class:`StoreSource`) the trace database (``DIR/traces.sqlite``);
- ``otlp-json:FILE`` (:class:`OtlpJsonFileSource`) Collector file-exporter JSON lines or one
  OTLP JSON document;
- ``jaeger:URL`` (:class:`JaegerSource`) Jaeger v2 query API (v3 HTTP, legacy fallback);
- ``tempo:URL`` (:class:`TempoSource`) Grafana Tempo HTTP API (v2, v1 fallback; TraceQL search).

Every source rebuilds through :mod:`vauban_trace.rebuild`. An unreachable or misbehaving
backend raises :class:`~vauban_trace.SourceError` with one line starting with the spec, e.g.
``jaeger:http://127.0.0.1:1: connection refused``. See ``docs/sources.md``.
"""

from __future__ import annotations

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.sources._backends import DEFAULT_JAEGER_LOOKBACK, JaegerSource, TempoSource
from vauban_trace.sources._base import TraceSource, summary_of
from vauban_trace.sources._file import OtlpJsonFileSource, read_otlp_json_file
from vauban_trace.sources._store import StoreSource
from vauban_trace.store import TraceSummary

SCHEMES = ("store", "otlp-json", "jaeger", "tempo")


def open_source(spec: str, *, timeout_s: float = 10.0) -> TraceSource:
    """Open the source named by ``spec`` (``scheme:location``)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigurationError(
            f"trace source {spec!r} has no scheme (expected store:DIR, otlp-json:FILE, jaeger:URL or tempo:URL)"
        )
    scheme, _, location = spec.partition(":")
    if not location:
        raise ConfigurationError(f"trace source {spec!r}: nothing after '{scheme}:'")
    if scheme == "store":
        return StoreSource(location, spec)
    if scheme == "otlp-json":
        return OtlpJsonFileSource(location, spec)
    if scheme == "jaeger":
        return JaegerSource(location, spec, timeout_s)
    if scheme == "tempo":
        return TempoSource(location, spec, timeout_s)
    raise ConfigurationError(
        f"unknown trace source scheme {scheme!r} in {spec!r} (expected one of: {', '.join(s + ':' for s in SCHEMES)})"
    )


__all__ = [
    "DEFAULT_JAEGER_LOOKBACK",
    "SCHEMES",
    "JaegerSource",
    "OtlpJsonFileSource",
    "StoreSource",
    "TempoSource",
    "TraceSource",
    "TraceSummary",
    "open_source",
    "read_otlp_json_file",
    "summary_of",
]
