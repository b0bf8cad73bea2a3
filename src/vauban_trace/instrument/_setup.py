"""``configure()``: install the OpenTelemetry SDK with vauban-trace's exporters.

This module and ``_embedded`` are the only places that import the OpenTelemetry *SDK*; everything
else in ``instrument`` uses the API and is a no-op until ``configure()`` (or the application)
installs a provider.

What gets installed::

    no OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_* variables
        TracerProvider + BatchSpanProcessor(EmbeddedExporter(TraceStore(store_dir, trace_files="on_read")))
    OTEL_TRACES_EXPORTER=otlp, or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set
        + BatchSpanProcessor(OTLPSpanExporter) over http/protobuf (default) or grpc, chosen by
          OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL; endpoint, headers, timeout, compression and TLS
          come from the standard variables, read by the official exporter itself
        and, unless keep_local=False, the embedded exporter as well
    OTEL_TRACES_EXPORTER=console        + ConsoleSpanExporter
    OTEL_TRACES_EXPORTER=none           only the embedded exporter (or nothing, keep_local=False)

``exporter=`` overrides the variables: ``"embedded"``, ``"otlp"``, ``"console"``, ``"none"``, a
``SpanExporter`` instance, or a list of those.

Artifacts are written to ``artifact_store`` (a path, URL or store object; default
``<store_dir>/blobs``) through a :class:`~vauban_trace.artifacts.BackgroundWriter`.

Calling twice: with the same arguments, ``configure()`` returns the live session; with different
ones it raises :class:`ConfigurationError` (call ``session.shutdown()`` first, then configure
again: the process keeps one ``TracerProvider``, as OpenTelemetry requires, and vauban-trace swaps
the processors behind it). If the application already installed an SDK ``TracerProvider``,
vauban-trace adds its processors to that provider and keeps the application's resource.
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win over ``service_name``; the service name
is fixed by the first ``configure()`` of the process.

At interpreter exit the live session is flushed and shut down.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace as _trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace
from vauban_trace.instrument import _state
from vauban_trace.instrument._embedded import EmbeddedExporter

_lock = threading.RLock()


class _Router(SpanProcessor):
    """The one processor vauban-trace adds to a provider; forwards to the live session's processors."""

    def __init__(self) -> None:
        self.targets: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for p in self.targets:
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self.targets:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self.targets:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.targets)


_router: _Router | None = None
_provider: TracerProvider | None = None


@dataclass
class Session:
    """A live configuration: where spans and blobs go. Returned by :func:`configure`."""

    store_dir: Path
    store: Any  # vauban_trace.store.TraceStore
    artifact_store: Any  # vauban_trace.artifacts store
    blob_writer: Any  # BackgroundWriter in front of artifact_store
    exporters: list[str]  # human-readable: "embedded: /path/traces.sqlite", "otlp/http: http://..."
    provider: TracerProvider
    processors: list[SpanProcessor] = field(default_factory=list)
    embedded: EmbeddedExporter | None = None
    key: tuple[Any, ...] = ()
    closed: bool = False

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Write pending blobs, then export pending spans (and rebuild their traces)."""
        from vauban_trace.instrument._probes import flush_deferred

        ok = flush_deferred(timeout_s)
        ok = bool(self.blob_writer.flush(timeout_s)) and ok
        for p in self.processors:
            ok = p.force_flush(int(timeout_s * 1000)) and ok
        return ok

    def read_trace(self, trace_id: str | None) -> Trace:
        """Flush (deferred readings, blobs, spans), then the Trace rebuilt in the embedded store.

        The only way a Trace comes back in-process: through the same rebuild as every source.
        """
        if trace_id is None:
            raise ConfigurationError("nothing was traced: no OpenTelemetry SDK is recording")
        if self.store is None:
            raise ConfigurationError("this session keeps no local store (keep_local=False)")
        self.force_flush()
        trace: Trace = self.store.get_trace(trace_id)
        return trace

    def shutdown(self) -> None:
        """Flush everything and detach this session's processors (idempotent)."""
        global _router
        with _lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.force_flush()
            finally:
                if _router is not None:
                    _router.targets = tuple(p for p in _router.targets if p not in self.processors)
                for p in self.processors:
                    p.shutdown()
                self.blob_writer.close()
                close = getattr(self.store, "close", None)
                if callable(close):
                    close()
                if _state.get_session() is self:
                    _state.set_session(None)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _protocol() -> str:
    proto = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return proto.strip().lower()


def _otlp_exporter() -> tuple[SpanExporter, str]:
    proto = _protocol()
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exp: SpanExporter = GrpcExporter()
        endpoint = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or "http://localhost:4317"
        )
        return exp, f"otlp/grpc: {endpoint}"
    if proto == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exp = HttpExporter()
        return exp, f"otlp/http: {getattr(exp, '_endpoint', '?')}"
    raise ConfigurationError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={proto!r} is not supported (use 'http/protobuf' or 'grpc')"
    )


def _wanted(exporter: Any) -> list[Any]:
    if exporter is not None:
        return list(exporter) if isinstance(exporter, (list, tuple)) else [exporter]
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if names:
        return [n.strip().lower() for n in names.split(",") if n.strip()]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return ["embedded"]


def _build_exporters(wanted: Sequence[Any], keep_local: bool | None) -> tuple[list[tuple[SpanExporter, str]], bool]:
    """-> (remote/other exporters with descriptions, whether the embedded exporter is wanted)."""
    out: list[tuple[SpanExporter, str]] = []
    embedded = False
    for item in wanted:
        if isinstance(item, SpanExporter):
            out.append((item, f"custom: {type(item).__name__}"))
        elif item == "embedded":
            embedded = True
        elif item == "otlp":
            out.append(_otlp_exporter())
        elif item == "console":
            out.append((ConsoleSpanExporter(), "console: stdout"))
        elif item == "none":
            continue
        else:
            raise ConfigurationError(
                f"unknown traces exporter {item!r} (expected embedded, otlp, console, none or a SpanExporter)"
            )
    if keep_local is None:
        keep_local = True
    return out, embedded or keep_local


def _install_provider(service_name: str) -> TracerProvider:
    """The process's SDK provider: ours (created once) or the application's."""
    global _provider, _router
    if _router is None:
        _router = _Router()
    current = _trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        if current is not _provider:
            current.add_span_processor(_router)
            _provider = current
        return current
    if not isinstance(current, _trace.ProxyTracerProvider):
        raise ConfigurationError(
            f"a non-SDK tracer provider ({type(current).__name__}) is already installed; "
            "vauban-trace cannot attach its exporters to it"
        )
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(_router)
    _trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def _open_artifact_store(artifact_store: Any, store_dir: Path) -> Any:
    from vauban_trace.artifacts import open_store

    if artifact_store is None:
        return open_store(store_dir / "blobs")
    if isinstance(artifact_store, (str, os.PathLike)):
        return open_store(artifact_store)
    return artifact_store


def configure(
    *,
    store_dir: str | os.PathLike[str] = ".vauban",
    service_name: str = "vauban-trace",
    exporter: Any = None,
    keep_local: bool | None = None,
    artifact_store: Any = None,
) -> Session:
    """Install the SDK and exporters (see the module docstring); returns the live :class:`Session`."""
    directory = Path(store_dir).expanduser().resolve()
    key = (
        str(directory), service_name, repr(exporter), keep_local, repr(artifact_store),
        os.environ.get("OTEL_TRACES_EXPORTER"), os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), _protocol(),
    )
    with _lock:
        live = _state.get_session()
        if live is not None and not live.closed:
            if live.key == key:
                return live
            raise ConfigurationError(
                f"vauban_trace is already configured (store_dir={str(live.store_dir)!r}, "
                f"exporters={live.exporters}); "
                "call session.shutdown() before configuring again with other settings"
            )
        remote, want_embedded = _build_exporters(_wanted(exporter), keep_local)
        from vauban_trace.artifacts import BackgroundWriter

        blobs = _open_artifact_store(artifact_store, directory)
        writer = BackgroundWriter(blobs)
        processors: list[SpanProcessor] = []
        descriptions: list[str] = []
        store: Any = None
        embedded: EmbeddedExporter | None = None
        if want_embedded:
            from vauban_trace.store import TraceStore

            # traces/<id>.json is written when first asked for (TraceStore.trace_json_file), not by
            # the exporter: an fsync'd file per trace cost the serving process ~65 CPU us per span
            store = TraceStore(directory, trace_files="on_read")
            embedded = EmbeddedExporter(store)
            processors.append(BatchSpanProcessor(embedded))
            descriptions.append(f"embedded: {directory}")
        for exp, text in remote:
            processors.append(BatchSpanProcessor(exp))
            descriptions.append(text)
        provider = _install_provider(service_name)
        _register_exit_hook()
        session = Session(
            store_dir=directory, store=store, artifact_store=blobs, blob_writer=writer,
            exporters=descriptions, provider=provider, processors=processors, embedded=embedded, key=key,
        )
        assert _router is not None
        _router.targets = _router.targets + tuple(processors)
        _state.set_session(session)
        return session


def current_session() -> Session | None:
    """The live session, if ``configure()`` was called and not shut down."""
    return _state.get_session()


def _at_exit() -> None:
    session = _state.get_session()
    if session is not None:
        try:
            session.shutdown()
        except Exception:
            pass


_exit_hook_registered = False


def _register_exit_hook() -> None:
    """Register the exit flush once, *after* the provider exists: atexit runs hooks last-in
    first-out, so ours (deferred readings, blobs, spans) runs before the SDK shuts the provider."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_at_exit)
        _exit_hook_registered = True
