"""Protobuf wire-level helpers for stored spans (no message objects on the hot path).

Each raw span is handled as the serialized protobuf of a one-span ``ResourceSpans`` (stored
inside span batches, see ``_batch``)::

    ResourceSpans { resource = 1; scope_spans = 2 (one ScopeSpans { scope = 1; spans = 2 (one);
                    schema_url = 3 }); schema_url = 3 }

:func:`one_span_payload` builds those bytes by concatenation from the already serialized
resource, scope and span (the same bytes ``SerializeToString(deterministic=True)`` of the
assembled message gives), and :func:`traces_data_bytes` regroups many payloads into one
serialized ``TracesData`` (spans sharing a resource and scope end up in one ``ResourceSpans`` /
``ScopeSpans``) which is parsed once; it is what schema 2's ``spans_for_bytes`` returned, which
``_ingest.snapshot_bytes`` still equals (the migration tests check it). Building and parsing per-span messages costs several times
more in Python.
"""

from __future__ import annotations

from collections.abc import Iterable

from vauban_trace._exceptions import TraceStoreError

_LEN = 2  # wire type of length-delimited fields


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = {1: b"\x0a", 2: b"\x12", 3: b"\x1a"}


def ld(field: int, data: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    tag = _TAGS.get(field)
    if tag is None:
        tag = _varint((field << 3) | _LEN)
    return tag + _varint(len(data)) + data


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise TraceStoreError("stored span payload is truncated (varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise TraceStoreError("stored span payload is corrupt (varint too long)")


def fields(buf: bytes) -> list[tuple[int, bytes]]:
    """(field number, bytes) of every length-delimited field of a message; others skipped."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(buf)
    while i < n:
        key = buf[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _read_varint(buf, i)
        wire = key & 7
        if wire == _LEN:
            length = buf[i] if i < n else 0x80
            if length < 0x80:
                i += 1
            else:
                length, i = _read_varint(buf, i)
            end = i + length
            if end > n:
                raise TraceStoreError("stored span payload is truncated (field)")
            out.append((key >> 3, buf[i:end]))
            i = end
        elif wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise TraceStoreError(f"stored span payload is corrupt (wire type {wire})")
    return out


def envelope(
    resource: bytes | None, rs_schema: str | bytes, scope: bytes | None, ss_schema: str | bytes
) -> tuple[bytes, ...]:
    """Pre-encoded (resource prefix, resource suffix, scope prefix, scope suffix) for :func:`wrap_span`
    (schema URLs as text, or as the UTF-8 bytes read off the wire)."""
    rs = rs_schema.encode() if isinstance(rs_schema, str) else rs_schema
    ss = ss_schema.encode() if isinstance(ss_schema, str) else ss_schema
    return (
        ld(1, resource) if resource is not None else b"",
        ld(3, rs) if rs else b"",
        ld(1, scope) if scope is not None else b"",
        ld(3, ss) if ss else b"",
    )


#: (scope, scope schema URL, [serialized spans]) of one ScopeSpans
ScopeGroup = tuple[bytes | None, bytes, list[bytes]]


def split_resource_spans(payload: bytes) -> tuple[bytes | None, bytes, list[ScopeGroup]]:
    """(resource, resource schema URL, one :data:`ScopeGroup` per ScopeSpans) of a serialized
    ``ResourceSpans``, read field by field (``None``: the field is absent)."""
    resource: bytes | None = None
    rs_schema = b""
    groups: list[ScopeGroup] = []
    for num, value in fields(payload):
        if num == 1:
            resource = value
        elif num == 2:
            scope: bytes | None = None
            ss_schema = b""
            spans: list[bytes] = []
            for inner, item in fields(value):
                if inner == 1:
                    scope = item
                elif inner == 2:
                    spans.append(item)
                elif inner == 3:
                    ss_schema = item
            groups.append((scope, ss_schema, spans))
        elif num == 3:
            rs_schema = value
    return resource, rs_schema, groups


def wrap_span(env: tuple[bytes, ...], span: bytes) -> bytes:
    """Serialized one-span ``ResourceSpans`` around a serialized span."""
    res_prefix, res_suffix, scope_prefix, scope_suffix = env
    ss = scope_prefix + b"\x12" + _varint(len(span)) + span + scope_suffix
    return res_prefix + b"\x12" + _varint(len(ss)) + ss + res_suffix


def one_span_payload(
    resource: bytes | None, rs_schema: str, scope: bytes | None, ss_schema: str, span: bytes
) -> bytes:
    """Serialized one-span ``ResourceSpans`` (``None`` = field absent)."""
    return wrap_span(envelope(resource, rs_schema, scope, ss_schema), span)


_GroupKey = tuple[bytes | None, bytes]


def traces_data_bytes(payloads: Iterable[bytes]) -> bytes:
    """Serialized ``TracesData`` regrouping one-span payloads by resource and scope (order kept)."""
    groups: dict[_GroupKey, dict[_GroupKey, list[bytes]]] = {}
    for payload in payloads:
        resource, rs_schema, scope_groups = split_resource_spans(payload)
        by_scope = groups.setdefault((resource, rs_schema), {})
        for scope, ss_schema, spans in scope_groups:
            by_scope.setdefault((scope, ss_schema), []).extend(spans)
    out = []
    for (resource, rs_schema), by_scope in groups.items():
        parts = [ld(1, resource)] if resource is not None else []
        for (scope, ss_schema), spans in by_scope.items():
            ss_parts = [ld(1, scope)] if scope is not None else []
            ss_parts.extend(ld(2, s) for s in spans)
            if ss_schema:
                ss_parts.append(ld(3, ss_schema))
            parts.append(ld(2, b"".join(ss_parts)))
        if rs_schema:
            parts.append(ld(3, rs_schema))
        out.append(ld(1, b"".join(parts)))
    return b"".join(out)


__all__ = [
    "ScopeGroup", "envelope", "fields", "ld", "one_span_payload", "split_resource_spans", "traces_data_bytes",
    "wrap_span",
]
