"""Serialized OTLP -> ready-to-store Trace documents (JSON text + summary), fast.

:func:`rebuild_documents` gives, per trace of a serialized ``TracesData`` /
``ExportTraceServiceRequest``, a :class:`TraceDocument`: the exact ``Trace.to_json()`` text of
:func:`~vauban_trace.rebuild.rebuild_traces` plus the few facts a store indexes (service, root
name, start/end, span count, per-stage observations, the root's sweep labels), so a collector can
store a trace without building Trace objects.

Two roads, one result. The native accelerator ``_crebuild`` (a C extension, optional at build
time) turns the protobuf of ONE clean trace straight into the document; it returns None for
anything outside the clean common case (several traces, duplicate or spill spans, orphans, any
value the Python rebuild would refuse or report, undecodable bytes...), and the Python road
(``rebuild_traces`` + ``to_json``), the reference implementation, does the work. Both give
byte-identical text: tests compare them on real SDK traces, benchmark batches, hand-built edge
cases and thousands of mutations. ``TraceDocument.native`` says which road produced a document.

The C road makes the TraceDocument and its StageObservations itself (``rebuild_document``),
outside the garbage collector's tracking (frozen records of atomic values cannot form cycles).
:func:`group_stage_values` turns the stage observations of many documents into the values the
collector's stage histograms take, grouped per stage as packed doubles (C ``group_stages``, with
:func:`python_group_stage_values` as its reference).

``VAUBAN_TRACE_NO_NATIVE=1`` in the environment at import (or :func:`set_native` False) turns the
accelerator off; :func:`native_available` says whether it is built and on.

The accelerator reads every attribute name and vocabulary word from :mod:`vauban_trace.semconv`
and :mod:`vauban_trace.contract` through ``configure`` (below): semconv stays the one registry.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from vauban_trace import semconv as sc
from vauban_trace.contract import (
    CAPABILITY_NAMES,
    COUNTER_NAMES,
    SCHEMA_VERSION,
    ArtifactKind,
    Capabilities,
    Device,
    Intervention,
    MissingArtifact,
    MissingReason,
    Provenance,
    SpanStatus,
    StageProfile,
    SupportLevel,
    Trace,
    TraceArtifact,
    TraceRequest,
    TraceSpan,
)
from vauban_trace.contract._digest import DIGEST_ALGORITHMS
from vauban_trace.rebuild._rebuild import rebuild_traces, resource_spans_of
from vauban_trace.rebuild._records import _DECODE_NAMES, _FLOAT_COUNTERS
from vauban_trace.rebuild._values import parse_json_attr

_LABEL_KEYS = (sc.GEN_AI_REQUEST_MODEL, sc.SWEEP_AXIS, sc.SWEEP_AXIS_VALUE)
_SCALAR_KINDS = ("string_value", "bool_value", "int_value", "double_value")


@dataclass(frozen=True, slots=True)
class StageObservation:
    """One stage span of a trace (``stage`` not None), in ``Trace.spans`` order."""

    span_id: str
    stage: str
    duration_s: float | None  # profile.duration_s, else the span's own duration when end >= start > 0
    input_bytes: int | None
    output_bytes: int | None
    sync_points: int | None
    sync_provenance: str | None  # profile.provenance.get("sync_points")


@dataclass(frozen=True, slots=True)
class TraceDocument:
    """One rebuilt trace as stored: its JSON text and what a store indexes about it."""

    trace_id: str
    json: str  # == the rebuilt Trace's .to_json(), byte for byte
    complete: bool
    service: str | None
    root_name: str | None
    start_unix_nano: int
    end_unix_nano: int
    span_count: int
    stages: tuple[StageObservation, ...]
    root_labels: tuple[Any, Any, Any] | None  # (model, sweep axis, axis value) of the collector's root
    native: bool

    def trace(self) -> Trace:
        """The Trace record (parsed back from ``json``)."""
        return Trace.from_json(self.json)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _config() -> dict[str, Any]:
    """Every name and word the accelerator needs, from semconv and the contract."""
    return {
        "stage": sc.STAGE, "spill_of": sc.SPILL_OF, "device_kind": sc.DEVICE_KIND, "device_label": sc.DEVICE_LABEL,
        "trace_root": sc.TRACE_ROOT, "schema_version_attr": sc.TRACE_SCHEMA_VERSION,
        "trace_metadata": sc.TRACE_METADATA, "span_input_ids": sc.SPAN_INPUT_ARTIFACT_IDS,
        "span_metadata": sc.SPAN_METADATA, "error_type": sc.ERROR_TYPE, "memory_method": sc.MEMORY_METHOD,
        "service_name": sc.SERVICE_NAME, "executor_name": sc.EXECUTOR_NAME, "executor_version": sc.EXECUTOR_VERSION,
        "cap_device_kinds": sc.CAPABILITY_DEVICE_KINDS, "cap_notes": sc.CAPABILITY_NOTES,
        "req_input_text": sc.REQUEST_INPUT_TEXT, "req_input_ref": sc.REQUEST_INPUT_REF,
        "req_prompt_ids": sc.REQUEST_PROMPT_IDS, "req_requested_artifacts": sc.REQUEST_REQUESTED_ARTIFACTS,
        "req_layers": sc.REQUEST_LAYERS, "req_interventions": sc.REQUEST_INTERVENTIONS,
        "req_apply_chat_template": sc.REQUEST_APPLY_CHAT_TEMPLATE, "req_return_logits": sc.REQUEST_RETURN_LOGITS,
        "req_return_logprobs": sc.REQUEST_RETURN_LOGPROBS, "req_metadata": sc.REQUEST_METADATA,
        "art_id": sc.ARTIFACT_ID, "art_kind": sc.ARTIFACT_KIND, "art_digest": sc.ARTIFACT_DIGEST,
        "art_uri": sc.ARTIFACT_URI, "art_media_type": sc.ARTIFACT_MEDIA_TYPE, "art_dtype": sc.ARTIFACT_DTYPE,
        "art_shape": sc.ARTIFACT_SHAPE, "art_byte_size": sc.ARTIFACT_BYTE_SIZE, "art_layer": sc.ARTIFACT_LAYER,
        "art_metadata": sc.ARTIFACT_METADATA, "missing_reason": sc.MISSING_REASON,
        "missing_detail": sc.MISSING_DETAIL, "exc_type": sc.EXCEPTION_TYPE, "exc_message": sc.EXCEPTION_MESSAGE,
        "event_artifact": sc.EVENT_ARTIFACT, "event_missing": sc.EVENT_ARTIFACT_MISSING,
        "event_exception": sc.EXCEPTION_EVENT, "gen_ai_prefix": "gen_ai.",
        "label_keys": _LABEL_KEYS,
        "counters": tuple((c, sc.usl(c), sc.usl_provenance(c), c in _FLOAT_COUNTERS) for c in COUNTER_NAMES),
        "capabilities": tuple((sc.capability(n), n) for n in CAPABILITY_NAMES),
        "summary": tuple(sc.SUMMARY_KEYS.items()),
        "profile_meta": tuple((k, k.removeprefix("vauban.")) for k in (sc.COUNTER_MODE, *_DECODE_NAMES)),
        "sweep": tuple((k, k.removeprefix("vauban.sweep.")) for k in (sc.SWEEP_ID, sc.SWEEP_AXIS, sc.SWEEP_AXIS_VALUE)),
        "schema_version": SCHEMA_VERSION, "schema_major": SCHEMA_VERSION.split(".")[0],
        "measured": Provenance.MEASURED.value, "unavailable": Provenance.UNAVAILABLE.value,
        "unsupported": SupportLevel.UNSUPPORTED.value,
        "provenance_words": tuple(m.value for m in Provenance),
        "artifact_kinds": tuple(m.value for m in ArtifactKind),
        "missing_reasons": tuple(m.value for m in MissingReason),
        "support_levels": tuple(m.value for m in SupportLevel),
        "status_words": (SpanStatus.UNSET.value, SpanStatus.OK.value, SpanStatus.ERROR.value),
        "digests": tuple(DIGEST_ALGORITHMS.items()),
        "fields": {cls.__name__: _field_names(cls) for cls in (
            Trace, TraceSpan, StageProfile, TraceArtifact, MissingArtifact, TraceRequest, Device, Capabilities,
            Intervention)},
        "parse_json": parse_json_attr,
        # the C road builds StageObservation records itself, through their slots
        "stage_class": StageObservation, "stage_fields": _field_names(StageObservation),
        # and the TraceDocument of rebuild_document (field order: the tuple of rebuild_one, native)
        "document_class": TraceDocument, "document_fields": _field_names(TraceDocument),
    }


def _load_native() -> Any:
    if os.environ.get("VAUBAN_TRACE_NO_NATIVE") == "1":
        return None
    try:
        from vauban_trace.rebuild import _crebuild  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        _crebuild.configure(_config())
    except (KeyError, TypeError, ValueError):  # a contract the accelerator does not write: run without it
        return None
    return _crebuild


_NATIVE: Any = _load_native()
_enabled = _NATIVE is not None


def native_available() -> bool:
    """True when the C accelerator is built, configured and switched on."""
    return _NATIVE is not None and _enabled


def set_native(enabled: bool) -> bool:
    """Switch the accelerator on or off (tests, A/B runs); returns the previous setting."""
    global _enabled
    previous = _enabled
    _enabled = bool(enabled)
    return previous


def rebuild_documents(data: bytes | bytearray | memoryview) -> list[TraceDocument]:
    """One TraceDocument per trace in the serialized TracesData/ExportTraceServiceRequest, in
    rebuild_traces order. Tries the C path (it takes inputs that hold exactly one clean trace);
    otherwise, or without the extension, ``rebuild_traces(data)`` + ``to_json()``. Undecodable
    input raises :class:`~vauban_trace.RebuildError` as ``rebuild_traces`` does."""
    if _enabled and _NATIVE is not None:
        doc: TraceDocument | None = _NATIVE.rebuild_document(data)  # made in C, native=True
        if doc is not None:
            return [doc]
    return python_documents(data)


#: per stage: durations, input bytes, output bytes, sync points (what the stage histograms
#: observe), each a bytearray of native doubles (``numpy.frombuffer(b, dtype=numpy.float64)``)
StageValues = tuple[bytearray, bytearray, bytearray, bytearray]
_DOUBLE = struct.Struct("d")


def group_stage_values(per_stage: dict[str, StageValues], seqs: list[Sequence[StageObservation]],
                       observable: tuple[str, ...]) -> int:
    """Append the values of the stage observations in ``seqs`` (each a document's ``stages``, or
    part of it) to ``per_stage``, per stage name, as doubles (``float(value)``): ``duration_s``,
    ``input_bytes``, ``output_bytes`` and ``sync_points`` (the last only when ``sync_provenance``
    is in ``observable``), in order, None values left out, observations without a stage skipped.
    Returns how many values were appended. The C accelerator does it when the extension is on
    (the same bytes; :func:`python_group_stage_values` is the reference)."""
    if _enabled and _NATIVE is not None:
        got = _NATIVE.group_stages(per_stage, seqs, observable)
        if got is not None:
            return int(got)
    return python_group_stage_values(per_stage, seqs, observable)


def python_group_stage_values(per_stage: dict[str, StageValues], seqs: list[Sequence[StageObservation]],
                              observable: tuple[str, ...]) -> int:
    """The reference of :func:`group_stage_values`."""
    n = 0
    pack = _DOUBLE.pack
    for seq in seqs:
        for obs in seq:
            stage = obs.stage
            if not stage:
                continue
            values = per_stage.get(stage)
            if values is None:
                values = per_stage[stage] = (bytearray(), bytearray(), bytearray(), bytearray())
            for k, amount in enumerate((obs.duration_s, obs.input_bytes, obs.output_bytes)):
                if amount is not None:
                    values[k].extend(pack(float(amount)))
                    n += 1
            if obs.sync_points is not None and obs.sync_provenance in observable:
                values[3].extend(pack(float(obs.sync_points)))
                n += 1
    return n


def python_documents(data: bytes | bytearray | memoryview) -> list[TraceDocument]:
    """The reference road: ``rebuild_traces`` + ``to_json`` (and the labels from the spans)."""
    rss = resource_spans_of(data)
    traces = rebuild_traces(rss)
    labels = _root_labels(rss)
    return [document_of(t, labels.get(t.id)) for t in traces]


def document_of(trace: Trace, root_labels: tuple[Any, Any, Any] | None, *, native: bool = False) -> TraceDocument:
    """The TraceDocument of a rebuilt Trace."""
    root = trace.root
    spans = trace.spans
    if root is not None:
        start, end = root.start_unix_nano, root.end_unix_nano
    else:
        start = min((s.start_unix_nano for s in spans), default=0)
        end = max((s.end_unix_nano for s in spans), default=0)
    service = trace.resource.get(sc.SERVICE_NAME)
    return TraceDocument(
        trace_id=trace.id,
        json=trace.to_json(),
        complete=trace.complete,
        service=service if isinstance(service, str) else None,
        root_name=root.name if root is not None else None,
        start_unix_nano=start,
        end_unix_nano=end,
        span_count=len(spans),
        stages=tuple(_observation(s) for s in spans if s.stage is not None),
        root_labels=root_labels,
        native=native,
    )


def _observation(span: TraceSpan) -> StageObservation:
    p = span.profile
    assert span.stage is not None
    return StageObservation(
        span_id=span.id,
        stage=span.stage,
        duration_s=span.stage_duration_s,
        input_bytes=p.input_bytes if p is not None else None,
        output_bytes=p.output_bytes if p is not None else None,
        sync_points=p.sync_points if p is not None else None,
        sync_provenance=p.provenance.get("sync_points") if p is not None else None,
    )


def _root_labels(rss: Iterable[ResourceSpans]) -> dict[str, tuple[Any, Any, Any] | None]:
    """Per trace id: the labels of the collector's root (the first span
    marked ``vauban.trace.root``, else the first span without a parent), None without one."""
    marked: dict[str, Span] = {}
    first_parentless: dict[str, Span] = {}
    for rs in rss:
        for ss in rs.scope_spans:
            for span in ss.spans:
                tid = span.trace_id.hex()
                if tid not in marked and _scalars(span).get(sc.TRACE_ROOT) is True:
                    marked[tid] = span
                if tid not in first_parentless and not span.parent_span_id:
                    first_parentless[tid] = span
    out: dict[str, tuple[Any, Any, Any] | None] = {}
    for tid in {**first_parentless, **marked}:
        root = marked.get(tid) or first_parentless[tid]
        attrs = _scalars(root)
        out[tid] = (attrs.get(_LABEL_KEYS[0]), attrs.get(_LABEL_KEYS[1]), attrs.get(_LABEL_KEYS[2]))
    return out


def _scalars(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        if which in _SCALAR_KINDS:
            out[kv.key] = getattr(kv.value, which)
    return out
