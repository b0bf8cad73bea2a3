"""Jaeger's legacy UI model -> OTLP ``TracesData``, so it takes the same rebuild road.

Jaeger's ``GET /api/traces/{id}`` answers ``{"data": [trace, ...], "total":..., "errors":...}``;
each trace is ``{"traceID", "spans": [...], "processes": {id: {"serviceName", "tags"}}}``. The
mapping back to OTLP:

- each process becomes one ``ResourceSpans`` (``service.name`` + the process tags);
- ids are hex; 64-bit trace ids (16 digits) are left-padded to 32;
- ``startTime``/``duration`` are microseconds -> ``start/endTimeUnixNano``;
- the parent is the first ``CHILD_OF`` reference inside the same trace (else the span's
  ``parentSpanID`` field, else the first same-trace ``FOLLOWS_FROM``); every other reference
  becomes a link;
- tags ``{key, type, value}`` (string, bool, int64, float64, binary) become attributes; an int64
  beyond the JavaScript-safe range arrives as a string and is read as an integer; binary is base64;
- the tags Jaeger synthesises from OTLP fields go back to those fields: ``span.kind`` -> kind,
  ``otel.status_code``/``otel.status_description`` -> status, ``error=true`` -> error status
  (when no ``otel.status_code``), ``otel.scope.name``/``otel.scope.version`` -> the scope;
- logs become events named by their ``event`` field (``"log"`` when absent).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.rebuild._ids import SPAN_ID_BYTES, TRACE_ID_BYTES, parse_id

_KINDS = {
    "internal": Span.SPAN_KIND_INTERNAL,
    "server": Span.SPAN_KIND_SERVER,
    "client": Span.SPAN_KIND_CLIENT,
    "producer": Span.SPAN_KIND_PRODUCER,
    "consumer": Span.SPAN_KIND_CONSUMER,
}
_MAX_MICROS = (2**64 - 1) // 1000
_STATUS = {"OK": Status.STATUS_CODE_OK, "ERROR": Status.STATUS_CODE_ERROR, "UNSET": Status.STATUS_CODE_UNSET}


def traces_data_from_jaeger_ui(obj: Mapping[str, Any] | str | bytes) -> TracesData:
    """Convert Jaeger UI-model JSON (``{"data": [...]}`` or one trace) to ``TracesData``."""
    from vauban_trace.rebuild._otlp_json import load_json

    doc = load_json(obj, "Jaeger JSON")
    if not isinstance(doc, Mapping):
        raise RebuildError(f"Jaeger JSON: expected an object, got {type(doc).__name__}")
    if "data" in doc:
        if doc["data"] is None:
            return TracesData()
        if not isinstance(doc["data"], list):
            raise RebuildError(f"data: expected an array, got {type(doc['data']).__name__}")
        traces = [(t, f"data[{i}]") for i, t in enumerate(doc["data"])]
    elif "spans" in doc:
        traces = [(doc, "trace")]
    else:
        raise RebuildError("Jaeger JSON: neither a 'data' array nor a trace with 'spans'")
    out = TracesData()
    for trace, where in traces:
        _convert_trace(trace, where, out)
    return out


def _convert_trace(trace: Any, where: str, out: TracesData) -> None:
    if not isinstance(trace, Mapping):
        raise RebuildError(f"{where}: expected an object, got {type(trace).__name__}")
    processes = trace.get("processes") or {}
    if not isinstance(processes, Mapping):
        raise RebuildError(f"{where}.processes: expected an object")
    by_process: dict[str, ResourceSpans] = {}
    scopes: dict[tuple[str, str, str], ScopeSpans] = {}
    spans = trace.get("spans")
    if not isinstance(spans, list):
        raise RebuildError(f"{where}.spans: expected an array")
    for i, raw in enumerate(spans):
        sw = f"{where}.spans[{i}]"
        if not isinstance(raw, Mapping):
            raise RebuildError(f"{sw}: expected an object")
        pid = str(raw.get("processID") or "")
        rs = by_process.get(pid)
        if rs is None:
            rs = out.resource_spans.add()
            by_process[pid] = rs
            proc = raw.get("process") or processes.get(pid) or {}
            if not isinstance(proc, Mapping):
                raise RebuildError(f"{where}.processes[{pid!r}]: expected an object")
            if proc.get("serviceName"):
                rs.resource.attributes.add(key=sc.SERVICE_NAME).value.string_value = str(proc["serviceName"])
            for j, tag in enumerate(_arr(proc.get("tags"), f"{where}.processes[{pid!r}].tags")):
                _tag(rs.resource.attributes.add(), tag, f"{where}.processes[{pid!r}].tags[{j}]")
        span = Span()
        scope = _convert_span(raw, sw, span)
        key = (pid, *scope)
        ss = scopes.get(key)
        if ss is None:
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = scope
            scopes[key] = ss
        ss.spans.append(span)


def _convert_span(raw: Mapping[str, Any], where: str, span: Span) -> tuple[str, str]:
    span.trace_id = parse_id(raw.get("traceID"), TRACE_ID_BYTES, where + ".traceID", pad_short_hex=True)
    span.span_id = parse_id(raw.get("spanID"), SPAN_ID_BYTES, where + ".spanID", pad_short_hex=True)
    span.name = str(raw.get("operationName") or "")
    start_us = _number(raw.get("startTime"), where + ".startTime")
    span.start_time_unix_nano = start_us * 1000
    end_us = start_us + _number(raw.get("duration"), where + ".duration")
    if end_us > _MAX_MICROS:
        raise RebuildError(f"{where}.duration: the span would end past the 64-bit nanosecond range")
    span.end_time_unix_nano = end_us * 1000
    parent = _parent_and_links(raw, where, span)
    if parent is not None:
        span.parent_span_id = parent
    scope = ["", ""]
    error_tag = False
    status_set = False
    for j, tag in enumerate(_arr(raw.get("tags"), where + ".tags")):
        tw = f"{where}.tags[{j}]"
        kv = KeyValue()
        _tag(kv, tag, tw)
        value = kv.value.string_value if kv.value.HasField("string_value") else None
        if kv.key == sc.JAEGER_SPAN_KIND and value is not None and value.lower() in _KINDS:
            span.kind = _KINDS[value.lower()]
        elif kv.key == sc.JAEGER_STATUS_CODE and value is not None and value.upper() in _STATUS:
            span.status.code = _STATUS[value.upper()]
            status_set = True
        elif kv.key == sc.JAEGER_STATUS_DESCRIPTION and value is not None:
            span.status.message = value
        elif kv.key == sc.JAEGER_SCOPE_NAME and value is not None:
            scope[0] = value
        elif kv.key == sc.JAEGER_SCOPE_VERSION and value is not None:
            scope[1] = value
        elif kv.key == sc.JAEGER_ERROR and kv.value.HasField("bool_value"):
            error_tag = kv.value.bool_value
        else:
            span.attributes.append(kv)
    if error_tag and not status_set:
        span.status.code = Status.STATUS_CODE_ERROR
    for j, log in enumerate(_arr(raw.get("logs"), where + ".logs")):
        lw = f"{where}.logs[{j}]"
        if not isinstance(log, Mapping):
            raise RebuildError(f"{lw}: expected an object")
        event = span.events.add()
        event.time_unix_nano = _number(log.get("timestamp"), lw + ".timestamp") * 1000
        event.name = "log"
        for k, field in enumerate(_arr(log.get("fields"), lw + ".fields")):
            kv = KeyValue()
            _tag(kv, field, f"{lw}.fields[{k}]")
            if kv.key == sc.JAEGER_LOG_EVENT and kv.value.HasField("string_value"):
                event.name = kv.value.string_value
            else:
                event.attributes.append(kv)
    return scope[0], scope[1]


def _parent_and_links(raw: Mapping[str, Any], where: str, span: Span) -> bytes | None:
    refs: list[tuple[str, bytes, bytes]] = []
    for j, ref in enumerate(_arr(raw.get("references"), where + ".references")):
        rw = f"{where}.references[{j}]"
        if not isinstance(ref, Mapping):
            raise RebuildError(f"{rw}: expected an object")
        tid = parse_id(ref.get("traceID"), TRACE_ID_BYTES, rw + ".traceID", pad_short_hex=True)
        sid = parse_id(ref.get("spanID"), SPAN_ID_BYTES, rw + ".spanID", pad_short_hex=True)
        refs.append((str(ref.get("refType") or "CHILD_OF").upper(), tid, sid))
    def same_trace(kind: str) -> int | None:
        return next((i for i, r in enumerate(refs) if r[0] == kind and r[1] == span.trace_id), None)

    parent: bytes | None = None
    parent_index = same_trace("CHILD_OF")
    if parent_index is None and raw.get("parentSpanID"):
        pid = parse_id(raw["parentSpanID"], SPAN_ID_BYTES, where + ".parentSpanID", pad_short_hex=True)
        parent = pid if any(pid) else None
    elif parent_index is None:
        parent_index = same_trace("FOLLOWS_FROM")
    if parent_index is not None:
        parent = refs[parent_index][2]
    for i, (_, tid, sid) in enumerate(refs):
        if i != parent_index:
            link = span.links.add()
            link.trace_id, link.span_id = tid, sid
    return parent


def _tag(out: KeyValue, tag: Any, where: str) -> None:
    if not isinstance(tag, Mapping) or not isinstance(tag.get("key"), str):
        raise RebuildError(f"{where}: expected an object with a string 'key'")
    out.key = tag["key"]
    kind = str(tag.get("type") or "string").lower()
    value: Any = tag.get("value")
    try:
        if kind == "bool":
            out.value.bool_value = value if isinstance(value, bool) else str(value).lower() == "true"
        elif kind == "int64":
            out.value.int_value = int(value)
        elif kind == "float64":
            out.value.double_value = float(value)
        elif kind == "binary":
            out.value.bytes_value = base64.b64decode(str(value), validate=True)
        else:
            out.value.string_value = "" if value is None else str(value)
    except (TypeError, ValueError, binascii.Error, OverflowError):
        raise RebuildError(f"{where}.value: {value!r} is not a valid {kind}") from None


def _arr(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RebuildError(f"{where}: expected an array, got {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise RebuildError(f"{where}: expected microseconds, got a boolean")
    try:
        number = int(value or 0)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise RebuildError(f"{where}: {value!r} is not a number of microseconds") from None
    if not 0 <= number <= _MAX_MICROS:
        raise RebuildError(f"{where}: {number} microseconds is out of range")
    return number


__all__ = ["traces_data_from_jaeger_ui"]
