"""Span batches: the binary encoding of the spans one write stored for one trace.

The store keeps raw spans as rows of ``span_batches`` (schema v3, see ``_sql``): one row per
(trace, ingest call) whose ``spans`` blob holds every span of that trace the call stored. SQLite
then inserts one row and one index entry per ~16 spans instead of one per span.

::

    blob = encode_batch(rows)            # rows: list[SpanRow] of ONE trace (trace id not stored)
    rows = decode_batch(trace_id, blob)  # the same SpanRow values back (payload bytes identical)
    count, found = match_batch(trace_id, blob, {span_id: row})   # {span_id: stored payload == row's}

Format, version 1 (integers are unsigned LEB128 varints, minimal: no trailing 0x80 groups, at
most 64 bits, except the times: ``fixed64`` = 8 bytes little-endian, smaller than a varint for a
nanosecond timestamp and cheaper to read; ``bytes(x)`` = varint length + the bytes)::

    blob    = 0x01  varint(n_env)  env * n_env  varint(n_span)  span * n_span
    env     = service  bytes(res_prefix) bytes(res_suffix) bytes(scope_prefix) bytes(scope_suffix)
    service = 0x00 (None) | 0x01 bytes(UTF-8 of the resource's service.name)
    span    = span_id(8)  flags(1)  [parent_span_id(8) if flags & 1]  bytes(UTF-8 name)
              fixed64(start_unix_nano)  fixed64(end_unix_nano)  varint(env_index)  bytes(field)

- ``span_id`` / ``parent_span_id`` are the 8 id bytes (``SpanRow`` holds them as 16 lowercase
  hex digits; ``parent_span_id`` None <=> flags bit 0 clear). Other flag bits MUST be 0.
- ``env`` entries are the distinct (service, envelope) pairs of the rows, in order of first
  appearance; ``env_index`` MUST be < n_env. Decoded rows of one entry share one envelope tuple.
- ``field`` is the ``LD(2, span)`` field of the row's payload: tag 0x12, the minimal varint
  length of the serialized span, the span. The payload is rebuilt exactly as
  ``_wire.wrap_span`` builds it::

      payload = res_prefix + 0x12 + varint(len(inner)) + inner + res_suffix,
      inner   = scope_prefix + field + scope_suffix

  so a row is encodable only when its payload has that form (every row cut by ``extract_rows`` or
  the C splitter does).
- Nothing may follow the last span. Limits: n_env <= n_span (a blob with spans has at least one
  envelope), every length within the blob.

:func:`decode_batch` checks all of the above with bounded reads and raises
:class:`TraceStoreError` naming the problem; :func:`encode_batch` raises it for a row it cannot
represent. The C extension (``_cwire_src/batch.c``: ``encode_batch`` / ``decode_batch``) gives the
same bytes and rows, and ``batch_match.c``: ``match_batch``, which answers without building the
stored rows; each returns None for anything unusual and the Python reference below then runs
(and raises where the input is bad).
"""

from __future__ import annotations

from typing import cast

from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._native import cwire
from vauban_trace.store._rows import SpanRow

VERSION = 1
_HEX = frozenset("0123456789abcdef")


_V1 = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _V1[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _id_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 16 or not _HEX.issuperset(value):
        raise TraceStoreError(f"span batch: {what} must be 16 lowercase hex digits, got {value!r:.40}")
    return bytes.fromhex(value)


def _text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TraceStoreError(f"span batch: {what} must be a str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TraceStoreError(f"span batch: {what} is not valid Unicode text: {exc}") from None
    return _varint(len(data)) + data


def _time(value: object, what: str) -> bytes:
    if type(value) is not int or not 0 <= value < 2**64:
        raise TraceStoreError(f"span batch: {what} must be an int in [0, 2**64), got {value!r:.40}")
    return value.to_bytes(8, "little")


def _check_env(row: SpanRow) -> None:
    env = row.env
    if not isinstance(env, tuple) or len(env) != 4 or not all(type(x) is bytes for x in env):
        raise TraceStoreError(f"span batch: span {row.span_id}: envelope must be 4 bytes objects")


def _field(row: SpanRow) -> bytes:
    """The LD(2, span) field of ``row.payload``; raises unless the payload is ``wrap_span``'s form
    (``row.env`` already checked by :func:`_check_env`)."""
    env = row.env
    payload = row.payload
    if type(payload) is not bytes:
        raise TraceStoreError(f"span batch: span {row.span_id}: payload must be bytes")
    res_prefix, res_suffix, scope_prefix, scope_suffix = env
    n, i = len(payload), len(res_prefix)
    # payload = res_prefix + 0x12 + varint(len(inner)) + inner + res_suffix,
    # inner = scope_prefix + field + scope_suffix (minimal varints)
    if n > i and payload[i] == 0x12 and payload.startswith(res_prefix):
        inner, k = _varint_at(payload, i + 1)
        sp, ss = len(scope_prefix), len(scope_suffix)
        if (k + inner + len(res_suffix) == n and inner >= sp + ss and payload.endswith(res_suffix)
                and payload[k : k + sp] == scope_prefix and payload[k + inner - ss : k + inner] == scope_suffix):
            field = payload[k + sp : k + inner - ss]
            _check_field(field, row.span_id)
            return field
    raise TraceStoreError(f"span batch: span {row.span_id}: payload is not a one-span ResourceSpans of its envelope")


def _check_field(field: bytes, span_id: str) -> None:
    """``field`` is 0x12 + minimal varint(n) + n bytes."""
    if len(field) < 2 or field[0] != 0x12:
        raise TraceStoreError(f"span batch: span {span_id}: the span field must start with tag 0x12")
    n, k = _varint_at(field, 1)
    if n < 0:
        _read_varint(field, 1, f"span {span_id} field length")  # raises, naming the problem
    if n != len(field) - k:
        raise TraceStoreError(f"span batch: span {span_id}: the span field length does not match its bytes")


def _wrap(env: tuple[bytes, ...], field: bytes) -> bytes:
    res_prefix, res_suffix, scope_prefix, scope_suffix = env
    inner = len(scope_prefix) + len(field) + len(scope_suffix)
    return b"".join((res_prefix, b"\x12", _varint(inner), scope_prefix, field, scope_suffix, res_suffix))


def encode_batch(rows: list[SpanRow]) -> bytes:
    """The blob of ``rows`` (one trace's spans, in the order given). C when built."""
    if _native_encode is not None:
        out = _native_encode(rows)
        if out is not None:
            return cast(bytes, out)
    return encode_batch_py(rows)


def encode_batch_py(rows: list[SpanRow]) -> bytes:
    """:func:`encode_batch` in Python (the reference)."""
    envs: dict[tuple[object, tuple[bytes, ...]], int] = {}
    env_parts: list[bytes] = []
    span_parts: list[bytes] = []
    last_env: object = None
    for row in rows:
        if not isinstance(row, tuple) or len(row) != 9:
            raise TraceStoreError(f"span batch: expected SpanRow tuples of 9 items, got {type(row).__name__}")
        if row.env is not last_env:  # rows cut from one request share their envelope tuple
            _check_env(row)
            last_env = row.env
        field = _field(row)
        key = (row.service, row.env)
        index = envs.get(key)
        if index is None:
            index = envs[key] = len(envs)
            service = b"\x00" if row.service is None else b"\x01" + _text(row.service, "service")
            env_parts.append(service + b"".join(_varint(len(x)) + x for x in row.env))
        parent = row.parent_span_id
        span_parts.append(b"".join((
            _id_bytes(row.span_id, "span_id"),
            b"\x00" if parent is None else b"\x01" + _id_bytes(parent, "parent_span_id"),
            _text(row.name, "name"),
            _time(row.start, "start"),
            _time(row.end, "end"),
            _varint(index),
            _varint(len(field)),
            field,
        )))
    return b"".join((bytes((VERSION,)), _varint(len(env_parts)), *env_parts, _varint(len(span_parts)), *span_parts))


def _varint_at(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of the minimal varint at ``buf[i]``, or (-1, i) when there is none."""
    n = len(buf)
    if i < n:
        b = buf[i]
        if b < 0x80:
            return b, i + 1
        if i + 1 < n and 0 < buf[i + 1] < 0x80:
            return (b & 0x7F) | (buf[i + 1] << 7), i + 2
    try:
        return _read_varint(buf, i, "")
    except TraceStoreError:
        return -1, i


def _read_varint(buf: bytes, i: int, what: str) -> tuple[int, int]:
    value = shift = 0
    start = i
    while True:
        if i >= len(buf):
            raise TraceStoreError(f"span batch: truncated blob ({what} at byte {start})")
        b = buf[i]
        i += 1
        if i - start == 10 and b > 1:
            raise TraceStoreError(f"span batch: {what} at byte {start} exceeds 64 bits")
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i - start > 1:
                raise TraceStoreError(f"span batch: {what} at byte {start} is not a minimal varint")
            return value, i
        shift += 7


def _read_bytes(buf: bytes, i: int, what: str) -> tuple[bytes, int]:
    if i < len(buf) and buf[i] < 0x80:
        n = buf[i]
        i += 1
    else:
        n, i = _read_varint(buf, i, what + " length")
    if n > len(buf) - i:
        raise TraceStoreError(f"span batch: truncated blob ({what} of {n} bytes at byte {i})")
    return buf[i : i + n], i + n


def _read_text(buf: bytes, i: int, what: str) -> tuple[str, int]:
    data, i = _read_bytes(buf, i, what)
    try:
        return data.decode("utf-8"), i
    except UnicodeDecodeError as exc:
        raise TraceStoreError(f"span batch: {what} is not valid UTF-8: {exc}") from None


def decode_batch(trace_id: str, blob: bytes) -> list[SpanRow]:
    """The rows of ``blob`` (a trace's span batch). C when built; raises on a malformed blob."""
    if _native_decode is not None:
        out = _native_decode(trace_id, blob)
        if out is not None:
            return cast("list[SpanRow]", out)
    return decode_batch_py(trace_id, blob)


def decode_batch_py(trace_id: str, blob: bytes) -> list[SpanRow]:
    """:func:`decode_batch` in Python (the reference)."""
    buf = bytes(blob)
    if not buf or buf[0] != VERSION:
        raise TraceStoreError(f"span batch: unknown format version {buf[0] if buf else 'empty blob'}")
    n_env, i = _read_varint(buf, 1, "envelope count")
    if n_env > len(buf) - i:
        raise TraceStoreError(f"span batch: envelope count {n_env} exceeds the blob")
    envs: list[tuple[str | None, tuple[bytes, ...]]] = []
    for k in range(n_env):
        if i >= len(buf):
            raise TraceStoreError(f"span batch: truncated blob (envelope {k})")
        flag = buf[i]
        i += 1
        service: str | None = None
        if flag == 1:
            service, i = _read_text(buf, i, f"envelope {k} service")
        elif flag != 0:
            raise TraceStoreError(f"span batch: envelope {k} has service flag {flag} (0 or 1)")
        parts = []
        for name in ("res_prefix", "res_suffix", "scope_prefix", "scope_suffix"):
            part, i = _read_bytes(buf, i, f"envelope {k} {name}")
            parts.append(part)
        envs.append((service, tuple(parts)))
    n_span, i = _read_varint(buf, i, "span count")
    if n_span > len(buf) - i or n_env > n_span:
        raise TraceStoreError(f"span batch: span count {n_span} does not fit the blob ({n_env} envelopes)")
    rows: list[SpanRow] = []
    for k in range(n_span):
        if len(buf) - i < 9:
            raise TraceStoreError(f"span batch: truncated blob (span {k} ids)")
        span_id = buf[i : i + 8].hex()
        flags = buf[i + 8]
        i += 9
        parent: str | None = None
        if flags == 1:
            if len(buf) - i < 8:
                raise TraceStoreError(f"span batch: truncated blob (span {k} parent id)")
            parent = buf[i : i + 8].hex()
            i += 8
        elif flags != 0:
            raise TraceStoreError(f"span batch: span {k} has flags {flags} (0 or 1)")
        name, i = _read_text(buf, i, f"span {k} name")
        if len(buf) - i < 16:
            raise TraceStoreError(f"span batch: truncated blob (span {k} times)")
        start = int.from_bytes(buf[i : i + 8], "little")
        end = int.from_bytes(buf[i + 8 : i + 16], "little")
        i += 16
        if i < len(buf) and buf[i] < 0x80:
            index = buf[i]
            i += 1
        else:
            index, i = _read_varint(buf, i, f"span {k} envelope index")
        if index >= n_env:
            raise TraceStoreError(f"span batch: span {k} envelope index {index} (only {n_env} envelopes)")
        field, i = _read_bytes(buf, i, f"span {k} field")
        _check_field(field, span_id)
        service, env = envs[index]
        rows.append(SpanRow(trace_id, span_id, parent, name, service, start, end, _wrap(env, field), env))
    if i != len(buf):
        raise TraceStoreError(f"span batch: {len(buf) - i} unexpected byte(s) after the last span")
    return rows


if cwire is not None:  # decode_batch builds SpanRow tuples (the splitter configures the same)
    cwire.configure(SERVICE_NAME, SpanRow)
def match_batch(trace_id: str, blob: bytes, incoming: dict[str, SpanRow]) -> tuple[int, dict[str, bool]]:
    """(span count of ``blob``, {span id of ``incoming`` found in it: stored payload == incoming
    payload}); what the write path of a known trace needs, without building the stored rows
    (C when built; raises on a malformed blob like :func:`decode_batch`)."""
    if _native_match is not None:
        out = _native_match(trace_id, blob, incoming)
        if out is not None:
            return cast("tuple[int, dict[str, bool]]", out)
    return match_batch_py(trace_id, blob, incoming)


def match_batch_py(trace_id: str, blob: bytes, incoming: dict[str, SpanRow]) -> tuple[int, dict[str, bool]]:
    """:func:`match_batch` in Python (the reference)."""
    rows = decode_batch_py(trace_id, blob)
    return len(rows), {r.span_id: r.payload == incoming[r.span_id].payload for r in rows if r.span_id in incoming}


_native_encode = None if cwire is None else getattr(cwire, "encode_batch", None)
_native_match = None if cwire is None else getattr(cwire, "match_batch", None)
_native_decode = None if cwire is None else getattr(cwire, "decode_batch", None)

__all__ = [
    "VERSION", "decode_batch", "decode_batch_py", "encode_batch", "encode_batch_py", "match_batch", "match_batch_py",
]
