"""OTLP spans -> :class:`~vauban_trace.contract.Trace` records: the one road from telemetry.

Input: ``ExportTraceServiceRequest``, ``TracesData``, serialized protobuf of either (they share
the wire format), or an iterable of ``ResourceSpans``. Spans are grouped by trace id; each group
becomes one Trace. Traces come out ordered by (earliest span start, trace id).

Per trace, in order:

1. **Duplicates.** A span id seen more than once (exporter retries, overlapping fragments) keeps
   one copy: an ended one over an unended one, then the richer one, then the first seen. Copies
   with identical bytes are silent; differing copies are reported in ``problems``.
2. **Spill spans.** A span with ``vauban.spill.of`` holds events that overflowed the SDK's
   per-span event limit. It is *folded away*: its artifact and missing-artifact events are
   attributed to the original span (the producer is the original), its id is listed in the
   original's ``metadata["spill_span_ids"]``, and it does not appear in ``Trace.spans``. Spill
   chains are followed to the first non-spill span. When the original has not been received,
   the spill span is kept as an ordinary span (its artifacts name it as producer) and reported.
3. **Root and completeness.** The request root is the span with ``vauban.trace.root = true``
   (plain OTel traces: the one span without a parent). A vauban root whose parent is not in the
   trace (a remote caller's span) becomes a root here: ``parent_id`` None and
   ``metadata["remote_parent_id"]``. ``complete`` is false, with a message in ``problems``, when
   there is no root, when several spans lack a parent, or when a span's parent was not received
   (an orphan keeps its ``parent_id``).
4. **Spans.** ``TraceSpan`` per span: ``stage`` from ``vauban.stage``; ``profile`` from
   ``vauban.usl.*`` (with provenance, ``device`` from ``vauban.device.*``, ``memory_method``;
   ``vauban.usl.mode`` and ``vauban.decode.*`` go to ``profile.metadata`` without the ``vauban.``
   prefix); with no duration counter the span's own duration fills ``duration_s`` as measured.
   ``status`` unset/ok/error; ``error`` is the status message, else the first ``exception``
   event's ``type: message``, else ``error.type``. ``metadata``: the ``vauban.span.metadata``
   JSON object, then every attribute the rebuild did not consume (gen_ai ones included),
   ``events`` (non-vauban events as ``{name, time_unix_nano, attributes}``), and ``resource``
   when the span's resource differs from the trace's.
5. **Artifacts.** ``vauban.artifact`` events -> ``TraceArtifact`` (ordered by producer span
   order, then event time); ``vauban.artifact.missing`` -> ``MissingArtifact``. A span's
   ``output_artifact_ids`` are its artifacts in that order; ``input_artifact_ids`` keep only ids
   present in the trace (others are reported).
6. **Trace.** ``request``, ``capabilities``, ``device`` and ``schema_version`` from the root;
   ``resource`` = the root's resource attributes; ``metadata`` = the root's
   ``vauban.trace.metadata`` JSON object overlaid with what the rebuild computes: ``service_name``,
   ``services``, ``span_count``, ``artifact_count``, ``error_count``, ``root_span_id``,
   ``root_name``, ``start_unix_nano``, ``end_unix_nano``, ``duration_s``, ``gen_ai`` (the root's
   ``gen_ai.*`` attributes without the prefix), ``executor`` and ``sweep`` when present.

Bad values inside a trace are refused one by one and listed in ``problems``; undecodable input
raises :class:`RebuildError`. A trace whose ``vauban.trace.schema_version`` has another major
version is refused with :class:`RebuildError`. Every Trace returned passes
:func:`~vauban_trace.contract.validate_trace`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status, TracesData

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.contract import (
    SCHEMA_VERSION,
    ContractError,
    MissingArtifact,
    Trace,
    TraceArtifact,
    TraceSpan,
    validate_trace,
)
from vauban_trace.contract._base import _new_record  # cls(**fields) minus the per-field setattr calls
from vauban_trace.rebuild._records import (
    build_artifact,
    build_capabilities,
    build_missing,
    build_profile,
    build_request,
    device_of,
)
from vauban_trace.rebuild._values import attributes, parse_json_attr

OtlpInput = ExportTraceServiceRequest | TracesData | bytes | bytearray | memoryview | Iterable[ResourceSpans]

_EVENT_ARTIFACT = sc.EVENT_ARTIFACT
_EVENT_MISSING = sc.EVENT_ARTIFACT_MISSING
_order_key = itemgetter(0, 1, 2)  # (producer position, event time, source/event index) of a found record
_STATUS_WORDS = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


class _Raw:
    """One received span with what the rebuild derives from it (a plain slotted class: one is
    made per span, so construction cost counts)."""

    __slots__ = ("span", "hex", "parent", "resource", "seq", "start", "attrs")

    def __init__(self, span: Span, hex_id: str, parent: str | None, resource: dict[str, Any], seq: int) -> None:
        self.span = span
        self.hex = hex_id
        self.parent = parent
        self.resource = resource
        self.seq = seq
        self.start: int = span.start_time_unix_nano
        self.attrs: dict[str, Any] = {}


def _start_key(raw: _Raw) -> tuple[int, str]:
    return (raw.start, raw.hex)


def resource_spans_of(data: OtlpInput) -> list[ResourceSpans]:
    """The ``ResourceSpans`` of any accepted input form."""
    if isinstance(data, (ExportTraceServiceRequest, TracesData)):
        return list(data.resource_spans)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return list(TracesData.FromString(bytes(data)).resource_spans)
        except DecodeError as exc:
            raise RebuildError(f"OTLP protobuf could not be decoded: {exc}") from None
    if isinstance(data, (str, Mapping)):
        raise RebuildError("rebuild_traces takes OTLP protobuf; use rebuild_from_json for OTLP JSON")
    out: list[ResourceSpans] = []
    for i, rs in enumerate(data):
        if not isinstance(rs, ResourceSpans):
            raise RebuildError(f"item {i}: expected ResourceSpans, got {type(rs).__name__}")
        out.append(rs)
    return out


def rebuild_traces(data: OtlpInput) -> list[Trace]:
    """Rebuild every trace in ``data`` (see the module docstring for the rules)."""
    groups: dict[str, list[_Raw]] = {}
    seq = 0
    for rs in resource_spans_of(data):
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                trace_id, span_id = span.trace_id, span.span_id
                if len(trace_id) != 16 or len(span_id) != 8:
                    raise RebuildError(
                        f"span {span.name!r}: trace id must be 16 bytes and span id 8 bytes "
                        f"(got {len(trace_id)} and {len(span_id)})"
                    )
                parent_id = span.parent_span_id
                parent = parent_id.hex() if any(parent_id) else None
                raw = _Raw(span, span_id.hex(), parent, resource, seq)
                groups.setdefault(trace_id.hex(), []).append(raw)
                seq += 1
    traces = [_build_trace(tid, raws) for tid, raws in groups.items()]
    traces.sort(key=lambda t: (min((s.start_unix_nano for s in t.spans), default=0), t.id))
    return traces


def _dedupe(raws: list[_Raw], problems: list[str]) -> dict[str, _Raw]:
    by_id: dict[str, list[_Raw]] = {}
    for raw in raws:
        by_id.setdefault(raw.hex, []).append(raw)
    kept: dict[str, _Raw] = {}
    for sid, copies in by_id.items():
        if len(copies) == 1:
            kept[sid] = copies[0]
            continue
        best = max(
            copies,
            key=lambda r: (r.span.end_time_unix_nano > 0, len(r.span.attributes) + len(r.span.events), -r.seq),
        )
        kept[sid] = best
        distinct = {c.span.SerializeToString(deterministic=True) for c in copies}
        if len(distinct) > 1:
            problems.append(f"span {sid!r} arrived {len(copies)} times with different content; kept one copy")
    return kept


def _resolve_spills(spans: dict[str, _Raw], problems: list[str]) -> dict[str, str]:
    """Map each foldable spill span id to the original span id it belongs to."""
    spill_of: dict[str, str] = {}
    for sid, raw in spans.items():
        target = raw.attrs.get(sc.SPILL_OF)
        if target is not None:
            spill_of[sid] = str(target).strip().lower()
    folded: dict[str, str] = {}
    for sid in spill_of:
        seen = {sid}
        target = spill_of[sid]
        while target in spill_of and target not in seen:
            seen.add(target)
            target = spill_of[target]
        if target in spill_of or target not in spans:
            problems.append(f"spill span {sid!r}: original span {spill_of[sid]!r} not received; kept as a span")
            continue
        folded[sid] = target
    return folded


def _find_root(spans: dict[str, _Raw], problems: list[str]) -> str | None:
    order = sorted(spans.values(), key=_start_key)
    marked = [r for r in order if r.attrs.get(sc.TRACE_ROOT) is True]
    if len(marked) > 1:
        problems.append(f"{len(marked)} spans are marked {sc.TRACE_ROOT}; the earliest is the root")
    if marked:
        return marked[0].hex
    parentless = [r for r in order if r.parent is None]
    return parentless[0].hex if parentless else None


def _build_trace(trace_id: str, raws: list[_Raw]) -> Trace:
    problems: list[str] = []
    complete = True
    spans = _dedupe(raws, problems)
    for raw in spans.values():
        raw.attrs = attributes(raw.span.attributes)
    folded = _resolve_spills(spans, problems)
    for raw in spans.values():  # a child of a folded spill span hangs from the original
        while raw.parent in folded:
            raw.parent = folded[raw.parent]
    present = {sid: r for sid, r in spans.items() if sid not in folded}
    root_id = _find_root(present, problems)
    root = present.get(root_id) if root_id is not None else None
    remote_parent: str | None = None
    if root is not None and root.parent is not None and root.parent not in present:
        remote_parent, root.parent = root.parent, None
    if root is None:
        complete = False
        problems.append("no root span received")
    parentless = sorted(sid for sid, r in present.items() if r.parent is None)
    if len(parentless) > 1:
        complete = False
        problems.append(f"{len(parentless)} spans have no parent: {', '.join(parentless)}")
    for sid, r in sorted(present.items()):
        if r.parent is not None and r.parent not in present:
            complete = False
            problems.append(f"span {sid!r}: parent {r.parent!r} not received (orphan)")

    ordered = sorted(present.values(), key=_start_key)
    spills_for: dict[str, list[_Raw]] = {}
    for sid, target in folded.items():
        spills_for.setdefault(target, []).append(spans[sid])

    trace_resource = (root or ordered[0]).resource if ordered else {}
    root_extra = _RootFacts()
    found_artifacts: list[tuple[int, int, int, TraceArtifact]] = []
    missing: list[tuple[int, int, int, MissingArtifact]] = []
    built: list[tuple[_Raw, dict[str, Any]]] = []
    for producer, raw in enumerate(ordered):  # producer == position[raw.hex]
        kwargs = _span_fields(raw, raw is root, trace_id, trace_resource, remote_parent, root_extra, problems)
        spills = spills_for.get(raw.hex)
        sources = [raw] if spills is None else [raw, *sorted(spills, key=_start_key)]
        if len(sources) > 1:
            kwargs["metadata"]["spill_span_ids"] = [s.hex for s in sources[1:]]
        other_events: list[dict[str, Any]] = []
        wheres: dict[str, str] = {}  # "span ... event ..." per event name, built once
        for src_index, src in enumerate(sources):
            base = src_index * 1_000_000
            for ev_index, ev in enumerate(src.span.events):
                ev_name = ev.name
                if ev_name == _EVENT_ARTIFACT or ev_name == _EVENT_MISSING:
                    where = wheres.get(ev_name)
                    if where is None:
                        where = wheres[ev_name] = f"span {raw.hex!r} event {ev_name!r}"
                    if ev_name == _EVENT_ARTIFACT:
                        art = build_artifact(attributes(ev.attributes), raw.hex, where, problems)
                        if art is not None:
                            found_artifacts.append((producer, ev.time_unix_nano, base + ev_index, art))
                    else:
                        miss = build_missing(attributes(ev.attributes), raw.hex, where, problems)
                        if miss is not None:
                            missing.append((producer, ev.time_unix_nano, base + ev_index, miss))
                elif src is raw:
                    other_events.append(
                        {"name": ev_name, "time_unix_nano": ev.time_unix_nano, "attributes": attributes(ev.attributes)}
                    )
        if other_events:
            kwargs["metadata"]["events"] = other_events
        built.append((raw, kwargs))

    found_artifacts.sort(key=_order_key)
    artifacts: list[TraceArtifact] = []
    seen_ids: set[str] = set()
    outputs: dict[str, list[str]] = {}
    for *_, art in found_artifacts:
        if art.id in seen_ids:
            problems.append(f"artifact id {art.id!r} recorded more than once; kept the first")
            continue
        seen_ids.add(art.id)
        artifacts.append(art)
        outputs.setdefault(art.producer_span_id, []).append(art.id)
    trace_spans: list[TraceSpan] = []
    for raw, kwargs in built:
        inputs = kwargs.pop("input_artifact_ids")
        unknown = [a for a in inputs if a not in seen_ids]
        if unknown:
            problems.append(f"span {raw.hex!r}: input artifact(s) {', '.join(map(repr, unknown))} not in the trace")
        kwargs["input_artifact_ids"] = tuple(a for a in inputs if a in seen_ids) if inputs else ()
        kwargs["output_artifact_ids"] = tuple(outputs.get(raw.hex, ()))
        trace_spans.append(_new_record(TraceSpan, kwargs))
    missing.sort(key=_order_key)
    metadata = _trace_metadata(trace_spans, artifacts, root, trace_resource, present, root_extra)
    try:
        trace = Trace(
            id=trace_id,
            schema_version=root_extra.schema_version,
            request=root_extra.request,
            device=root_extra.device,
            capabilities=root_extra.capabilities,
            spans=tuple(trace_spans),
            artifacts=tuple(artifacts),
            missing=tuple(m for *_, m in missing),
            complete=complete,
            problems=tuple(problems),
            resource=trace_resource,
            metadata=metadata,
        )
        return validate_trace(trace)
    except ContractError as exc:
        raise RebuildError(f"cannot rebuild: {exc}") from None


@dataclass
class _RootFacts:
    schema_version: str = SCHEMA_VERSION
    request: Any = None
    device: Any = None
    capabilities: Any = None
    executor_version: str | None = None
    trace_metadata: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    gen_ai: dict[str, Any] = field(default_factory=dict)


def _span_fields(
    raw: _Raw,
    is_root: bool,
    trace_id: str,
    trace_resource: dict[str, Any],
    remote_parent: str | None,
    root_facts: _RootFacts,
    problems: list[str],
) -> dict[str, Any]:
    span = raw.span
    attrs = dict(raw.attrs)
    where = f"span {raw.hex!r}"
    stage = attrs.pop(sc.STAGE, None)
    attrs.pop(sc.SPILL_OF, None)
    device = device_of(attrs)
    if is_root:
        attrs.pop(sc.TRACE_ROOT, None)
        _root_facts(attrs, trace_id, device, where, root_facts, problems)
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    duration = (end - start) / 1e9 if end > 0 and end >= start else None
    span_name = span.name
    name = str(stage) if stage is not None else span_name
    profile = build_profile(name, attrs, device, duration, where, problems)
    inputs: list[str] = []
    if sc.SPAN_INPUT_ARTIFACT_IDS in attrs:
        value = attrs.pop(sc.SPAN_INPUT_ARTIFACT_IDS)
        value = [value] if isinstance(value, str) else value
        inputs = [str(v) for v in value] if isinstance(value, list) else []
    if sc.SPAN_METADATA in attrs:
        metadata: dict[str, Any] = {}
        raw_meta = attrs.pop(sc.SPAN_METADATA)
        parsed, err = parse_json_attr(raw_meta)
        if err is None and isinstance(parsed, dict):
            metadata.update(parsed)
        else:
            problems.append(f"{where}: {sc.SPAN_METADATA} is {err or 'not a JSON object'}; kept as text")
            metadata[sc.SPAN_METADATA] = raw_meta
        metadata.update(attrs)
    else:
        metadata = attrs  # already this span's own copy: what is left unconsumed
    if is_root and remote_parent is not None:
        metadata["remote_parent_id"] = remote_parent
    if raw.resource is not trace_resource and raw.resource != trace_resource:
        metadata["resource"] = raw.resource
    status = _STATUS_WORDS.get(span.status.code, "unset")
    return {
        "id": raw.hex,
        "name": span_name,
        "stage": None if stage is None else str(stage),
        "parent_id": raw.parent,
        "start_unix_nano": start,
        "end_unix_nano": end,
        "status": status,
        "error": _error_text(span, raw.attrs) if status == "error" else None,
        "profile": profile,
        "input_artifact_ids": inputs,
        "metadata": metadata,
    }


def _error_text(span: Span, attrs: dict[str, Any]) -> str | None:
    if span.status.message:
        return span.status.message
    for ev in span.events:
        if ev.name == sc.EXCEPTION_EVENT:
            ea = attributes(ev.attributes)
            etype, emsg = ea.get(sc.EXCEPTION_TYPE), ea.get(sc.EXCEPTION_MESSAGE)
            text = ": ".join(str(p) for p in (etype, emsg) if p not in (None, ""))
            if text:
                return text
    value = attrs.get(sc.ERROR_TYPE)
    return None if value is None else str(value)


def _root_facts(
    attrs: dict[str, Any], trace_id: str, device: Any, where: str, facts: _RootFacts, problems: list[str]
) -> None:
    version = attrs.pop(sc.TRACE_SCHEMA_VERSION, None)
    if version is not None:
        facts.schema_version = str(version)
    facts.device = device
    facts.request = build_request(attrs, trace_id, where, problems)
    facts.capabilities, facts.executor_version = build_capabilities(attrs, where, problems)
    if sc.TRACE_METADATA in attrs:
        raw_meta = attrs.pop(sc.TRACE_METADATA)
        parsed, err = parse_json_attr(raw_meta)
        if err is None and isinstance(parsed, dict):
            facts.trace_metadata = parsed
        else:
            problems.append(f"{where}: {sc.TRACE_METADATA} is {err or 'not a JSON object'}; ignored")
    for key in (sc.SWEEP_ID, sc.SWEEP_AXIS, sc.SWEEP_AXIS_VALUE):
        if key in attrs:
            facts.sweep[key.removeprefix("vauban.sweep.")] = attrs.pop(key)
    facts.gen_ai = {k.removeprefix("gen_ai."): v for k, v in attrs.items() if k.startswith("gen_ai.")}


def _trace_metadata(
    spans: list[TraceSpan],
    artifacts: list[TraceArtifact],
    root: _Raw | None,
    resource: dict[str, Any],
    present: dict[str, _Raw],
    facts: _RootFacts,
) -> dict[str, Any]:
    meta: dict[str, Any] = dict(facts.trace_metadata)
    services = sorted({str(r.resource[sc.SERVICE_NAME]) for r in present.values() if sc.SERVICE_NAME in r.resource})
    meta["service_name"] = resource.get(sc.SERVICE_NAME)
    meta["services"] = services
    meta["span_count"] = len(spans)
    meta["artifact_count"] = len(artifacts)
    meta["error_count"] = sum(1 for s in spans if s.status == "error")
    starts = [s.start_unix_nano for s in spans if s.start_unix_nano]
    ends = [s.end_unix_nano for s in spans if s.end_unix_nano]
    meta["start_unix_nano"] = min(starts) if starts else None
    meta["end_unix_nano"] = max(ends) if ends else None
    meta["duration_s"] = (max(ends) - min(starts)) / 1e9 if starts and ends and max(ends) >= min(starts) else None
    meta["root_span_id"] = root.hex if root is not None else None
    meta["root_name"] = root.span.name if root is not None else None
    if facts.gen_ai:
        meta["gen_ai"] = facts.gen_ai
    if facts.capabilities is not None or facts.executor_version is not None:
        meta["executor"] = {
            "name": facts.capabilities.executor if facts.capabilities is not None else None,
            "version": facts.executor_version,
        }
    if facts.sweep:
        meta["sweep"] = facts.sweep
    return meta
