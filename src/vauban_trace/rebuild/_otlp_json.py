"""OTLP/JSON <-> ``TracesData``, with the quirks real backends produce.

Reading (:func:`traces_data_from_json`) accepts:

- a ``dict``, or JSON text as ``str``/``bytes``;
- wrappers ``{"result": {...}}`` (Jaeger v2 ``/api/v3``) and ``{"trace": {...}}`` (Tempo
  ``/api/v2``), around ``resourceSpans`` or ``batches`` (Tempo ``/api/traces``);
  ``instrumentationLibrarySpans`` / ``instrumentationLibrary`` (pre-1.0 OTLP) as well as
  ``scopeSpans`` / ``scope``; keys in lowerCamelCase or in the proto's snake_case;
- trace and span ids in hex (any case) or base64; ``parentSpanId`` may be empty;
- 64-bit integers as strings or numbers; enums as integers or as their names
  (``SPAN_KIND_SERVER``, ``STATUS_CODE_ERROR``); doubles as numbers or ``"NaN"``/``"Infinity"``;
- ``bytesValue`` in base64; nested ``arrayValue`` / ``kvlistValue``;
- unknown fields, which are ignored;
- Jaeger's legacy UI model (``{"data": [...]}`` or a single trace with ``spans`` and
  ``processes``), handed to :func:`traces_data_from_jaeger_ui`.

``google.protobuf.json_format.Parse`` is NOT used: it decodes ids as base64, which silently turns
a 32-digit hex id into 24 wrong bytes. Every error is a :class:`RebuildError` whose message is a
path into the document, e.g. ``resourceSpans[0].scopeSpans[1].spans[3].traceId: 'xyz' is neither
32 hex digits nor base64 of 16 bytes``.

Writing (:func:`traces_data_to_json`) produces canonical OTLP/JSON: lowerCamelCase keys, hex
ids, int64 as decimal strings, enums as integers, default values omitted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

from vauban_trace._exceptions import RebuildError
from vauban_trace.rebuild._ids import SPAN_ID_BYTES, TRACE_ID_BYTES, hex_id, parse_id

_WRAPPERS = ("result", "trace")
_SPAN_KINDS = {name: num for name, num in Span.SpanKind.items()}
_STATUS_CODES = {name: num for name, num in Status.StatusCode.items()}
_MAX_DEPTH = 64


def load_json(obj: Mapping[str, Any] | str | bytes, what: str = "OTLP JSON") -> Any:
    """Decode JSON text (or pass a mapping through), mapping errors to :class:`RebuildError`."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            obj = bytes(obj).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RebuildError(f"{what} is not UTF-8 text: {exc}") from None
    if isinstance(obj, str):
        try:
            return json.loads(obj)
        except ValueError as exc:
            raise RebuildError(f"{what} is not valid JSON: {exc}") from None
    return obj


def traces_data_from_json(obj: Mapping[str, Any] | str | bytes) -> TracesData:
    """Parse OTLP/JSON (with the quirks listed in the module docstring) into ``TracesData``."""
    doc = load_json(obj)
    path = ""
    while isinstance(doc, Mapping):
        wrapper = next((w for w in _WRAPPERS if w in doc and isinstance(doc[w], Mapping)), None)
        if wrapper is None:
            break
        doc = doc[wrapper]
        path += wrapper + "."
    if not isinstance(doc, Mapping):
        raise RebuildError(f"{path.rstrip('.') or 'OTLP JSON'}: expected an object, got {type(doc).__name__}")
    key = _first_key(doc, ("resourceSpans", "resource_spans", "batches"))
    if key is None:
        if "spans" in doc and "processes" in doc or isinstance(doc.get("data"), list):
            from vauban_trace.rebuild._jaeger_ui import traces_data_from_jaeger_ui

            return traces_data_from_jaeger_ui(doc)
        if not doc:
            return TracesData()
        found = ", ".join(sorted(map(str, doc))[:8])
        where = path.rstrip(".") or "OTLP JSON"
        raise RebuildError(f"{where}: no 'resourceSpans' or 'batches' key (found: {found})")
    out = TracesData()
    for i, rs in enumerate(_list(doc[key], path + key)):
        out.resource_spans.append(_resource_spans(rs, f"{path}{key}[{i}]"))
    return out


def traces_data_to_json(data: TracesData) -> dict[str, Any]:
    """Canonical OTLP/JSON of ``data`` (hex ids, int64 as strings, enums as integers)."""
    doc: dict[str, Any] = json_format.MessageToDict(data, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                _ids_to_hex(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", ()):
                    _ids_to_hex(link, ("traceId", "spanId"))
    return doc


def _ids_to_hex(obj: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()


# --- readers -----------------------------------------------------------------------------
def _first_key(doc: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in doc), None)


def _get(doc: Mapping[str, Any], camel: str, snake: str | None = None) -> Any:
    if camel in doc:
        return doc[camel]
    if snake is not None and snake in doc:
        return doc[snake]
    return None


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if type(value) is dict:  # fast path: json.loads output
        return value
    if not isinstance(value, Mapping):
        raise RebuildError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RebuildError(f"{where}: expected an array, got {type(value).__name__}")
    return value


def _resource_spans(value: Any, where: str) -> ResourceSpans:
    doc = _obj(value, where)
    out = ResourceSpans()
    resource = _get(doc, "resource")
    if resource is not None:
        res = _obj(resource, where + ".resource")
        _attributes(out.resource.attributes, _get(res, "attributes"), where + ".resource.attributes")
        out.resource.dropped_attributes_count = _uint32(
            _get(res, "droppedAttributesCount", "dropped_attributes_count"), where + ".resource.droppedAttributesCount"
        )
    out.schema_url = _str(_get(doc, "schemaUrl", "schema_url"), where + ".schemaUrl")
    key = _first_key(doc, ("scopeSpans", "scope_spans", "instrumentationLibrarySpans", "instrumentation_library_spans"))
    if key is not None:
        for j, ss in enumerate(_list(doc[key], f"{where}.{key}")):
            out.scope_spans.append(_scope_spans(ss, f"{where}.{key}[{j}]"))
    return out


def _scope_spans(value: Any, where: str) -> ScopeSpans:
    doc = _obj(value, where)
    out = ScopeSpans()
    skey = _first_key(doc, ("scope", "instrumentationLibrary", "instrumentation_library"))
    if skey is not None and doc[skey] is not None:
        _scope(out.scope, _obj(doc[skey], f"{where}.{skey}"), f"{where}.{skey}")
    out.schema_url = _str(_get(doc, "schemaUrl", "schema_url"), where + ".schemaUrl")
    for k, span in enumerate(_list(_get(doc, "spans"), where + ".spans")):
        out.spans.append(_span(span, f"{where}.spans[{k}]"))
    return out


def _scope(out: InstrumentationScope, doc: Mapping[str, Any], where: str) -> None:
    out.name = _str(_get(doc, "name"), where + ".name")
    out.version = _str(_get(doc, "version"), where + ".version")
    _attributes(out.attributes, _get(doc, "attributes"), where + ".attributes")


def _span(value: Any, where: str) -> Span:
    doc = _obj(value, where)
    out = Span()
    trace_id = _get(doc, "traceId", "trace_id")
    if trace_id is None or trace_id == "":
        raise RebuildError(f"{where}.traceId: missing")
    out.trace_id = parse_id(trace_id, TRACE_ID_BYTES, where + ".traceId")
    span_id = _get(doc, "spanId", "span_id")
    if span_id is None or span_id == "":
        raise RebuildError(f"{where}.spanId: missing")
    out.span_id = parse_id(span_id, SPAN_ID_BYTES, where + ".spanId")
    parent = _get(doc, "parentSpanId", "parent_span_id")
    if parent not in (None, ""):
        out.parent_span_id = parse_id(parent, SPAN_ID_BYTES, where + ".parentSpanId")
    out.trace_state = _str(_get(doc, "traceState", "trace_state"), where + ".traceState")
    out.flags = _uint32(_get(doc, "flags"), where + ".flags")
    out.name = _str(_get(doc, "name"), where + ".name")
    out.kind = _enum(_get(doc, "kind"), _SPAN_KINDS, where + ".kind")  # type: ignore[assignment]
    out.start_time_unix_nano = _uint(_get(doc, "startTimeUnixNano", "start_time_unix_nano"), where + ".startTimeUnixNano")
    out.end_time_unix_nano = _uint(_get(doc, "endTimeUnixNano", "end_time_unix_nano"), where + ".endTimeUnixNano")
    _attributes(out.attributes, _get(doc, "attributes"), where + ".attributes")
    out.dropped_attributes_count = _uint32(
        _get(doc, "droppedAttributesCount", "dropped_attributes_count"), where + ".droppedAttributesCount"
    )
    for i, ev in enumerate(_list(_get(doc, "events"), where + ".events")):
        ew = f"{where}.events[{i}]"
        evd = _obj(ev, ew)
        event = out.events.add()
        event.time_unix_nano = _uint(_get(evd, "timeUnixNano", "time_unix_nano"), ew + ".timeUnixNano")
        event.name = _str(_get(evd, "name"), ew + ".name")
        _attributes(event.attributes, _get(evd, "attributes"), ew + ".attributes")
        event.dropped_attributes_count = _uint32(
            _get(evd, "droppedAttributesCount", "dropped_attributes_count"), ew + ".droppedAttributesCount"
        )
    out.dropped_events_count = _uint32(_get(doc, "droppedEventsCount", "dropped_events_count"), where + ".droppedEventsCount")
    for i, ln in enumerate(_list(_get(doc, "links"), where + ".links")):
        lw = f"{where}.links[{i}]"
        lnd = _obj(ln, lw)
        link = out.links.add()
        link.trace_id = parse_id(_get(lnd, "traceId", "trace_id"), TRACE_ID_BYTES, lw + ".traceId")
        link.span_id = parse_id(_get(lnd, "spanId", "span_id"), SPAN_ID_BYTES, lw + ".spanId")
        link.trace_state = _str(_get(lnd, "traceState", "trace_state"), lw + ".traceState")
        link.flags = _uint32(_get(lnd, "flags"), lw + ".flags")
        _attributes(link.attributes, _get(lnd, "attributes"), lw + ".attributes")
    out.dropped_links_count = _uint32(_get(doc, "droppedLinksCount", "dropped_links_count"), where + ".droppedLinksCount")
    status = _get(doc, "status")
    if status is not None:
        sd = _obj(status, where + ".status")
        out.status.code = _enum(_get(sd, "code"), _STATUS_CODES, where + ".status.code")  # type: ignore[assignment]
        out.status.message = _str(_get(sd, "message"), where + ".status.message")
    return out


def _attributes(target: Any, value: Any, where: str) -> None:
    for i, kv in enumerate(_list(value, where)):
        kvd = kv if type(kv) is dict else _obj(kv, f"{where}[{i}]")
        key = _get(kvd, "key")
        if not isinstance(key, str):
            raise RebuildError(f"{where}[{i}].key: expected a string, got {type(key).__name__}")
        item: KeyValue = target.add()
        item.key = key
        raw = _get(kvd, "value")
        if raw is not None and not _plain_scalar(item.value, raw):
            _any_value(item.value, raw, f"{where}[{i}].value", 0)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _plain_scalar(out: AnyValue, value: Any) -> bool:
    """Fast path for the common ``{"stringValue": "x"}``-style value (one canonical key, a value
    of the expected JSON type): set it and return True. Anything else returns False untouched,
    and :func:`_any_value` handles it (with its checks and error messages)."""
    if type(value) is not dict or len(value) != 1:
        return False
    ((key, v),) = value.items()
    cls = type(v)
    if key == "stringValue":
        if cls is str:
            out.string_value = v
            return True
    elif key == "intValue":
        if cls is str:
            try:
                v = int(v.strip())
            except ValueError:
                return False
        elif cls is not int:
            return False
        if _INT64_MIN <= v <= _INT64_MAX:
            out.int_value = v
            return True
    elif key == "doubleValue":
        if cls is float or cls is int:
            out.double_value = float(v)
            return True
    elif key == "boolValue":
        if cls is bool:
            out.bool_value = v
            return True
    return False


def _any_value(out: AnyValue, value: Any, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise RebuildError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    doc = _obj(value, where)
    if (v := _get(doc, "stringValue", "string_value")) is not None:
        out.string_value = _str(v, where + ".stringValue")
    elif (v := _get(doc, "boolValue", "bool_value")) is not None:
        if not isinstance(v, bool):
            raise RebuildError(f"{where}.boolValue: expected true or false, got {v!r}")
        out.bool_value = v
    elif (v := _get(doc, "intValue", "int_value")) is not None:
        out.int_value = _int(v, where + ".intValue", signed=True)
    elif (v := _get(doc, "doubleValue", "double_value")) is not None:
        out.double_value = _double(v, where + ".doubleValue")
    elif (v := _get(doc, "arrayValue", "array_value")) is not None:
        out.array_value.SetInParent()
        values = out.array_value.values
        for i, item in enumerate(_list(_get(_obj(v, where + ".arrayValue"), "values"), where + ".arrayValue.values")):
            element = values.add()
            if depth >= _MAX_DEPTH or not _plain_scalar(element, item):
                _any_value(element, item, f"{where}.arrayValue.values[{i}]", depth + 1)
    elif (v := _get(doc, "kvlistValue", "kvlist_value")) is not None:
        out.kvlist_value.SetInParent()
        _attributes(out.kvlist_value.values, _get(_obj(v, where + ".kvlistValue"), "values"), where + ".kvlistValue.values")
    elif (v := _get(doc, "bytesValue", "bytes_value")) is not None:
        if not isinstance(v, str):
            raise RebuildError(f"{where}.bytesValue: expected a base64 string, got {type(v).__name__}")
        try:
            text = v.strip().replace("-", "+").replace("_", "/")
            out.bytes_value = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise RebuildError(f"{where}.bytesValue: {v[:40]!r} is not base64") from None


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RebuildError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _int(value: Any, where: str, *, signed: bool) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise RebuildError(f"{where}: expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RebuildError(f"{where}: {value[:40]!r} is not an integer") from None
    if not isinstance(value, int):
        raise RebuildError(f"{where}: expected an integer, got {type(value).__name__}")
    lo, hi = (-(2**63), 2**63 - 1) if signed else (0, 2**64 - 1)
    if not lo <= value <= hi:
        raise RebuildError(f"{where}: {value} is outside the {'int64' if signed else 'uint64'} range")
    return value


def _uint(value: Any, where: str) -> int:
    return _int(value, where, signed=False)


def _uint32(value: Any, where: str) -> int:
    number = _int(value, where, signed=False)
    if number > 2**32 - 1:
        raise RebuildError(f"{where}: {number} is outside the uint32 range")
    return number


def _double(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise RebuildError(f"{where}: expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        if value in special:
            return special[value]
        try:
            return float(value)
        except ValueError:
            pass
    raise RebuildError(f"{where}: {value!r} is not a number")


def _enum(value: Any, names: Mapping[str, int], where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value in names:
        return names[value]
    number = _int(value, where, signed=True) if not isinstance(value, str) or value.strip().lstrip("-").isdigit() else None
    if number is None or number not in names.values():
        allowed = ", ".join(f"{n} ({v})" for n, v in names.items())
        raise RebuildError(f"{where}: unknown value {value!r} (expected one of: {allowed})")
    return number


__all__ = ["hex_id", "load_json", "traces_data_from_json", "traces_data_to_json"]
