"""Instrumentation API: stage spans, the request root span, artifact events, counter probes, setup.

Everything here speaks the OpenTelemetry *API* and costs almost nothing until an SDK is
installed, by :func:`configure` or by the application::

    import vauban_trace as vt

    session = vt.configure(store_dir=".vauban")     # SDK + embedded exporter (or OTLP from OTEL_*)
    with vt.traced_request(request, model="tiny-llama", capabilities=caps) as req:
        with vt.stage("tokenize", batch_size=1) as st:
            ids = tok(text)
            st.set_counter("token_count", len(ids), provenance="derived")
            vt.record_artifact("tokens", ids)

        @vt.stage("forward")                         # bytes and device derived from tensors
        def forward(x): ...

        vt.record_missing("weight_snapshot", "unsupported", detail="no weight access")
    session.force_flush()
    trace = session.store.get_trace(req.trace_id)    # the rebuilt Trace

Pieces: :func:`stage` (``_stage``; its handles in ``_handles``), :func:`traced_request` (``_request``), :func:`record_artifact`
/ :func:`record_missing` (``_artifacts``), :class:`CounterProbe` / :func:`probes` (``_probes``),
:func:`configure` / :class:`Session` (``_setup``, the only SDK importer with ``_embedded``),
:func:`sweep_point` (``_sweep``: sweep coordinates on the root spans of a block's requests).
The per-span event limit is handled by spill spans (``_spans``); framework values are described
through adapters (``_values``). ``_setup`` is imported lazily, so ``import vauban_trace`` does
not load the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vauban_trace.instrument._artifacts import ArtifactRef, record_artifact, record_missing
from vauban_trace.instrument._handles import StageHandle
from vauban_trace.instrument._probes import CounterProbe, Readings, active_probes, probes
from vauban_trace.instrument._request import RequestHandle, traced_request
from vauban_trace.instrument._stage import Stage, stage
from vauban_trace.instrument._state import sdk_active
from vauban_trace.instrument._sweep import SweepPoint, current_sweep_point, sweep_point

if TYPE_CHECKING:
    from vauban_trace.instrument._embedded import EmbeddedExporter
    from vauban_trace.instrument._setup import Session, configure, current_session


def __getattr__(name: str) -> Any:  # lazy: the SDK is imported only when setup is used
    if name in ("configure", "Session", "current_session"):
        from vauban_trace.instrument import _setup

        return getattr(_setup, name)
    if name == "EmbeddedExporter":
        from vauban_trace.instrument._embedded import EmbeddedExporter

        return EmbeddedExporter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArtifactRef",
    "CounterProbe",
    "EmbeddedExporter",
    "Readings",
    "RequestHandle",
    "Session",
    "Stage",
    "StageHandle",
    "SweepPoint",
    "active_probes",
    "configure",
    "current_session",
    "current_sweep_point",
    "probes",
    "record_artifact",
    "record_missing",
    "sdk_active",
    "stage",
    "sweep_point",
    "traced_request",
]
