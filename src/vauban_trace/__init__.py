"""vauban-trace: OpenTelemetry-native, trace-first instrumentation for ML inference.

The public API is re-exported here and listed in ``__all__`` (a test asserts it):

- instrumentation: :func:`configure`, :class:`Session`, :func:`traced_request`, :func:`stage`,
  :func:`record_artifact`, :func:`record_missing`, :func:`probes`, :class:`CounterProbe`,
  :class:`ArtifactRef` (see :mod:`vauban_trace.instrument`);
- the trace vocabulary: :class:`Trace`, :class:`TraceRequest`, :class:`TraceSpan`,
  :class:`TraceArtifact`, :class:`MissingArtifact`, :class:`Capabilities`, :class:`StageProfile`,
  :class:`ArtifactKind` (see :mod:`vauban_trace.contract`);
- the error tree (:class:`VaubanTraceError` and subclasses).

``import vauban_trace`` loads the OpenTelemetry API only; the SDK is imported by ``configure``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import *  # noqa: F403
from vauban_trace._exceptions import __all__ as _exc_all
from vauban_trace._version import __version__
from vauban_trace.contract import (
    ArtifactKind,
    Capabilities,
    MissingArtifact,
    StageProfile,
    Trace,
    TraceArtifact,
    TraceRequest,
    TraceSpan,
)
from vauban_trace.instrument import (
    ArtifactRef,
    CounterProbe,
    RequestHandle,
    Stage,
    StageHandle,
    probes,
    record_artifact,
    record_missing,
    stage,
    sweep_point,
    traced_request,
)

if TYPE_CHECKING:
    from vauban_trace.instrument._setup import Session, configure, current_session


def __getattr__(name: str) -> Any:  # lazy: keeps the SDK out of a plain import
    if name in ("configure", "Session", "current_session"):
        from vauban_trace.instrument import _setup

        return getattr(_setup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArtifactKind",
    "ArtifactRef",
    "Capabilities",
    "CounterProbe",
    "MissingArtifact",
    "RequestHandle",
    "Session",
    "Stage",
    "StageHandle",
    "StageProfile",
    "Trace",
    "TraceArtifact",
    "TraceRequest",
    "TraceSpan",
    "__version__",
    "configure",
    "current_session",
    "probes",
    "record_artifact",
    "record_missing",
    "stage",
    "sweep_point",
    "traced_request",
    *_exc_all,
]
