"""Process-wide state of the instrumentation API: which tracer to use, and the configured session.

The hot question every stage asks is "is an OpenTelemetry SDK configured?". It is answered by
comparing the global provider object with the one seen last time (one module attribute read and
one identity test); only when the provider changes is the answer recomputed and a tracer fetched
and cached. Without an SDK (the API's proxy or no-op provider, or ``OTEL_SDK_DISABLED``), the
answer is ``None`` and callers take their no-op path without building anything.

The configured :class:`~vauban_trace.instrument.Session` (set by ``configure()``) is held here too,
so that ``record_artifact`` finds the blob store without importing the SDK.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import opentelemetry.trace as _otel_trace
from opentelemetry.trace import NoOpTracer, NoOpTracerProvider, ProxyTracerProvider, Tracer, TracerProvider

from vauban_trace._version import __version__

if TYPE_CHECKING:
    from vauban_trace.instrument._setup import Session

TRACER_NAME = "vauban_trace.instrument"

_lock = threading.Lock()
_seen_provider: object = None  # the global provider object last inspected
_seen_tracer: Tracer | None = None  # its tracer, or None when it is not a recording SDK
_explicit: dict[int, tuple[TracerProvider, Tracer | None]] = {}
_session: Session | None = None

if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:  # let the API load an env-named provider once
    _otel_trace.get_tracer_provider()


def _tracer_of(provider: TracerProvider) -> Tracer | None:
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return None
    tracer = provider.get_tracer(TRACER_NAME, __version__)
    if isinstance(tracer, NoOpTracer) or type(tracer).__name__ in ("NoOpTracer", "ProxyTracer"):
        return None
    return tracer


def _refresh(provider: Any) -> Tracer | None:
    global _seen_provider, _seen_tracer
    with _lock:
        tracer = None if provider is None else _tracer_of(provider)
        _seen_provider, _seen_tracer = provider, tracer
        return tracer


def current_tracer(tracer_provider: TracerProvider | None = None) -> Tracer | None:
    """The tracer to emit with, or ``None`` when no SDK is configured (no-op path)."""
    if tracer_provider is None:
        provider = getattr(_otel_trace, "_TRACER_PROVIDER", _seen_provider)
        if provider is _seen_provider:
            return _seen_tracer
        return _refresh(provider)
    hit = _explicit.get(id(tracer_provider))
    if hit is not None and hit[0] is tracer_provider:
        return hit[1]
    tracer = _tracer_of(tracer_provider)
    with _lock:
        if len(_explicit) > 64:
            _explicit.clear()
        _explicit[id(tracer_provider)] = (tracer_provider, tracer)
    return tracer


def sdk_active() -> bool:
    """Whether spans are being recorded by a configured SDK."""
    return current_tracer() is not None


def set_session(session: Session | None) -> None:
    global _session
    _session = session


def get_session() -> Session | None:
    return _session


def capture_content_enabled() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` allows content on spans."""
    word = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().upper()
    return word in ("SPAN_ONLY", "SPAN_AND_EVENT", "TRUE")


def event_limit(span: object) -> int:
    """How many events ``span`` may hold (SDK span limits, else ``OTEL_SPAN_EVENT_COUNT_LIMIT``, else 128)."""
    limits = getattr(span, "_limits", None)
    value = getattr(limits, "max_events", None) if limits is not None else None
    if isinstance(value, int) and value > 0:
        return value
    if limits is not None and value is None and hasattr(limits, "max_events"):
        return 1 << 62  # explicitly unlimited
    raw = os.environ.get("OTEL_SPAN_EVENT_COUNT_LIMIT", "")
    try:
        parsed = int(raw)
    except ValueError:
        return 128
    return parsed if parsed > 0 else 128


def event_count(span: object, fallback: int) -> int:
    """Events already on ``span`` (SDK spans expose them; otherwise our own count)."""
    events = getattr(span, "_events", None)
    if events is not None:
        try:
            return len(events)
        except TypeError:
            return fallback
    return fallback
