"""Span batches (store._batch): the format, the Python reference, and the C codec against it byte for byte.

The Python tests run on both roads (the public ``encode_batch`` / ``decode_batch`` use C when it
is built); the differential tests need the extension: every native result must equal the
reference, and where the extension declines (None) the reference decides (a value or an error).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from store_testlib import TRACE_A, make_request, make_span

from vauban_trace.store import TraceStoreError
from vauban_trace.store._batch import (
    decode_batch,
    decode_batch_py,
    encode_batch,
    encode_batch_py,
    match_batch,
    match_batch_py,
)
from vauban_trace.store._ingest import SpanRow, extract_rows
from vauban_trace.store._native import cwire
from vauban_trace.store._wire import envelope, wrap_span

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_collector import make_batch  # noqa: E402

native = pytest.mark.skipif(cwire is None, reason="the _cwire extension is not built (or disabled)")


@pytest.mark.skipif(os.environ.get("VAUBAN_TRACE_REQUIRE_NATIVE") != "1", reason="VAUBAN_TRACE_REQUIRE_NATIVE unset")
def test_extension_is_built_when_required() -> None:
    # CI requires the accelerators: the tests marked native must never skip there
    assert cwire is not None


def _by_trace(rows: list[SpanRow]) -> dict[str, list[SpanRow]]:
    out: dict[str, list[SpanRow]] = {}
    for row in rows:
        out.setdefault(row.trace_id, []).append(row)
    return out


def _varied_rows() -> list[SpanRow]:
    """Two resources and scopes, schema urls, a service-less resource, a parent, unicode names."""
    req = make_request(make_span(TRACE_A, "00000000000000b2", "bé ✓", start=50, end=2**64 - 1),
                       make_span(TRACE_A, "00000000000000a1", "", parent="00000000000000b2", start=0, end=0))
    req.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    other = make_request(make_span(TRACE_A, "00000000000000d4", "d" * 300, start=2**63), service="remote",
                         scope="x")
    other.resource_spans[0].scope_spans[0].schema_url = "s"
    bare = ExportTraceServiceRequest()
    bare.resource_spans.add().scope_spans.add().spans.append(make_span(TRACE_A, "00000000000000e5", "bare"))
    req.resource_spans.extend(other.resource_spans)
    req.resource_spans.extend(bare.resource_spans)
    rows, problems = extract_rows(req.resource_spans)
    assert not problems and len(rows) == 4
    return rows


def test_round_trip_python_reference() -> None:
    rows = _varied_rows()
    blob = encode_batch_py(rows)
    back = decode_batch_py(TRACE_A, blob)
    assert back == rows
    assert back[0].env is back[1].env  # one envelope entry: one shared tuple
    assert decode_batch(TRACE_A, encode_batch(rows)) == rows
    assert decode_batch_py(TRACE_A, encode_batch_py([])) == []


def test_the_format_byte_by_byte() -> None:
    env = envelope(b"R", "", b"S", "u")  # res_prefix 0a 01 52, scope_prefix 0a 01 53, scope_suffix 1a 01 75
    span = b"\x2a\x01n"
    row = SpanRow(TRACE_A, "0102030405060708", "1112131415161718", "n", "svc", 300, 5, wrap_span(env, span), env)
    expected = (
        b"\x01" + b"\x01"                                   # version, one envelope
        + b"\x01\x03svc" + b"\x03\x0a\x01R" + b"\x00" + b"\x03\x0a\x01S" + b"\x03\x1a\x01u"
        + b"\x01"                                           # one span
        + bytes(range(1, 9)) + b"\x01" + bytes(range(0x11, 0x19))
        + b"\x01n" + b"\x2c\x01" + bytes(6) + b"\x05" + bytes(7) + b"\x00"  # name, start 300, end 5, envelope 0
        + b"\x05" + b"\x12\x03" + span                       # the LD(2, span) field
    )
    assert encode_batch_py([row]) == expected
    assert encode_batch([row]) == expected
    assert decode_batch_py(TRACE_A, expected) == [row]


def test_collector_batches() -> None:
    for i in range(3):
        rows, _ = extract_rows(ExportTraceServiceRequest.FromString(make_batch(7_000_000 + i)).resource_spans)
        for tid, group in _by_trace(rows).items():
            blob = encode_batch(group)
            assert blob == encode_batch_py(group)
            assert decode_batch(tid, blob) == decode_batch_py(tid, blob) == group
            assert len(blob) < sum(len(r.payload) for r in group)  # the envelope is stored once


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b"", "empty blob"),
    (lambda b: b"\x02" + b[1:], "unknown format version 2"),
    (lambda b: b + b"\x00", "unexpected byte"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:1] + b"\x81\x00" + b[2:], "not a minimal varint"),
    (lambda b: b[:1] + b"\xff" * 10 + b[2:], "exceeds 64 bits"),
    (lambda b: b[:2] + b"\x07" + b[3:], "service flag 7"),
    (lambda b: b[:1] + b"\x05" + b[2:], "envelope"),
])
def test_malformed_blobs_name_the_problem(mutate: object, message: str) -> None:
    blob = encode_batch_py(_varied_rows()[:1])
    bad = mutate(blob)  # type: ignore[operator]
    for decode in (decode_batch_py, decode_batch):
        with pytest.raises(TraceStoreError, match=message):
            decode(TRACE_A, bad)


def _one_span_blob(**fields: object) -> bytes:
    """A blob of one span, its parts given (defaults: a valid span)."""
    parts = {"id": bytes(range(1, 9)), "flags": b"\x00", "name": b"\x01n", "times": bytes(16), "env": b"\x00",
             "field": b"\x03\x12\x01x"}
    parts.update(fields)  # type: ignore[arg-type]
    return b"\x01\x01\x00\x00\x00\x00\x00\x01" + b"".join(parts[k] for k in ("id", "flags")) + \
        (parts.get("parent", b"")) + b"".join(parts[k] for k in ("name", "times", "env", "field"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"flags": b"\x02"}, "flags 2"),
    ({"flags": b"\x01"}, "truncated|field|name"),
    ({"name": b"\x02\xff\xfe"}, "not valid UTF-8"),
    ({"env": b"\x01"}, "envelope index 1"),
    ({"field": b"\x03\x1a\x01x"}, "tag 0x12"),
    ({"field": b"\x03\x12\x02x"}, "does not match|truncated"),
    ({"field": b"\x01\x12"}, "tag 0x12"),
    ({"id": b"\x01", "flags": b"", "name": b"", "times": b"", "env": b"", "field": b""}, "truncated"),
])
def test_malformed_spans_name_the_problem(fields: dict[str, bytes], message: str) -> None:
    assert decode_batch_py(TRACE_A, _one_span_blob())[0].name == "n"
    for decode in (decode_batch_py, decode_batch):
        with pytest.raises(TraceStoreError, match=message):
            decode(TRACE_A, _one_span_blob(**fields))


def test_every_truncation_and_more_envelopes_than_spans_are_refused() -> None:
    blob = encode_batch_py(_varied_rows())
    for n in range(len(blob)):
        for decode in (decode_batch_py, decode_batch):
            with pytest.raises(TraceStoreError):
                decode(TRACE_A, blob[:n])
    with pytest.raises(TraceStoreError, match="span count 0"):
        decode_batch(TRACE_A, b"\x01\x01\x00\x00\x00\x00\x00\x00")


@pytest.mark.parametrize("bad", ["span id upper", "span id short", "parent bytes", "name bytes", "name surrogate",
                                 "service int", "start negative", "end 2**64", "start bool", "payload other",
                                 "payload bytearray", "env short", "field tag", "not a row"])
def test_rows_it_cannot_represent_raise(bad: str) -> None:
    row = _varied_rows()[1]
    rows: list[object] = [_varied_rows()[0], {
        "span id upper": row._replace(span_id=row.span_id.upper().replace("0", "A")),
        "span id short": row._replace(span_id="abc"),
        "parent bytes": row._replace(parent_span_id=b"\x00" * 8),  # type: ignore[arg-type]
        "name bytes": row._replace(name=b"n"),  # type: ignore[arg-type]
        "name surrogate": row._replace(name="\ud800"),
        "service int": row._replace(service=5),  # type: ignore[arg-type]
        "start negative": row._replace(start=-1),
        "end 2**64": row._replace(end=2**64),
        "start bool": row._replace(start=True),
        "payload other": row._replace(payload=row.payload[:-1] + b"\x00"),
        "payload bytearray": row._replace(payload=bytearray(row.payload)),  # type: ignore[arg-type]
        "env short": row._replace(env=row.env[:3]),
        "field tag": row._replace(payload=wrap_span(row.env, b"x")[:-2] + b"\x1a\x01x"),
        "not a row": (1, 2),
    }[bad]]
    if cwire is not None:
        assert cwire.encode_batch(rows) is None
    for encode in (encode_batch_py, encode_batch):
        with pytest.raises(TraceStoreError, match="span batch"):
            encode(rows)  # type: ignore[arg-type]


# ---------- C against the reference ----------

def _same_encode(rows: list[SpanRow]) -> bytes:
    assert cwire is not None
    expected = encode_batch_py(rows)
    assert cwire.encode_batch(rows) == expected
    tid = rows[0].trace_id if rows else TRACE_A
    assert cwire.decode_batch(tid, expected) == decode_batch_py(tid, expected) == rows
    return expected


def _check_decode(blob: bytes) -> None:
    assert cwire is not None
    got = cwire.decode_batch(TRACE_A, blob)
    try:
        expected = decode_batch_py(TRACE_A, blob)
    except TraceStoreError:
        assert got is None
        return
    assert got is None or got == expected


@native
def test_native_collector_batches_and_mutations() -> None:
    rng = random.Random(20261126)
    for i in range(3):
        rows, _ = extract_rows(ExportTraceServiceRequest.FromString(make_batch(9_000_000 + i)).resource_spans)
        groups = list(_by_trace(rows).values())
        for group in groups:
            blob = _same_encode(group)
            for _ in range(40):  # damaged blobs: both roads agree, or C declines and Python raises
                b = bytearray(blob)
                for _ in range(rng.randrange(1, 4)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
                _check_decode(bytes(b))
                _check_decode(blob[: rng.randrange(len(blob))])
        _same_encode(rng.sample(groups[0], len(groups[0])))  # any order
        _same_encode(groups[0] + groups[0])  # the encoding does not deduplicate


@native
def test_native_varied_rows_and_many_envelopes() -> None:
    _same_encode(_varied_rows())
    _same_encode([])
    rows = [SpanRow(TRACE_A, f"{i + 1:016x}", None, "n", None, i, i, wrap_span(env, b"\x08\x01"), env)
            for i in range(300) for env in [envelope(None, f"r{i}", None, "")]]
    assert cwire is not None and cwire.encode_batch(rows) is None  # over 256 envelopes: Python's
    blob = encode_batch(rows)
    assert cwire.decode_batch(TRACE_A, blob) is None and decode_batch(TRACE_A, blob) == rows
    assert _same_encode(rows[:256])


_ENVS = [envelope(None, "", None, ""), envelope(b"\x0a\x03a=b", "https://s", b"\x0a\x01x", ""),
         envelope(b"", "", b"", "scope-schema")]


@native
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.integers(0, 2**64 - 1), st.one_of(st.none(), st.integers(0, 2**64 - 1)), st.text(max_size=12),
    st.one_of(st.none(), st.sampled_from(["svc", "ü", ""])), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, len(_ENVS) - 1), st.binary(max_size=200)), max_size=20))
def test_hypothesis_rows(spec: list[tuple[int, int | None, str, str | None, int, int, int, bytes]]) -> None:
    rows = [SpanRow(TRACE_A, f"{sid:016x}", None if parent is None else f"{parent:016x}", name, service, start, end,
                    wrap_span(_ENVS[e], span), _ENVS[e])
            for sid, parent, name, service, start, end, e, span in spec]
    _same_encode(rows)


@native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_hypothesis_arbitrary_blobs(data: bytes) -> None:
    _check_decode(data)
    _check_decode(b"\x01" + data)


@native
def test_no_leak_over_many_calls() -> None:
    import os

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    assert cwire is not None
    rows = _varied_rows()
    blob = encode_batch_py(rows)
    damaged = [blob[:-3], blob[:40], blob.replace(b"remote", b"remot\xff")]
    bad_rows = [rows[0], rows[1]._replace(start=-1)]
    incoming = {r.span_id: r for r in rows[:2]}

    def once() -> None:
        assert cwire is not None
        cwire.encode_batch(rows)
        cwire.encode_batch(bad_rows)
        cwire.decode_batch(TRACE_A, blob)
        cwire.match_batch(TRACE_A, blob, incoming)
        for b in damaged:
            assert cwire.decode_batch(TRACE_A, b) is None
            assert cwire.match_batch(TRACE_A, b, incoming) is None

    for _ in range(2000):
        once()
    before = rss()
    for _ in range(20000):
        once()
    assert rss() - before < 4 << 20


def _incoming(rows: list[SpanRow]) -> dict[str, SpanRow]:
    return {r.span_id: r for r in rows}


def test_match_batch_reference() -> None:
    rows = _varied_rows()
    blob = encode_batch_py(rows)
    changed = rows[2]._replace(payload=wrap_span(rows[2].env, b"\x2a\x01z"))
    other = SpanRow(TRACE_A, "00000000000000ff", None, "x", None, 1, 2, rows[0].payload, rows[0].env)
    expected = (4, {rows[0].span_id: True, rows[2].span_id: False})
    assert match_batch_py(TRACE_A, blob, _incoming([rows[0], changed, other])) == expected
    assert match_batch(TRACE_A, blob, _incoming([rows[0], changed, other])) == expected
    assert match_batch(TRACE_A, blob, {}) == (4, {})
    with pytest.raises(TraceStoreError, match="span batch: truncated"):
        match_batch(TRACE_A, blob[:-1], _incoming(rows))


def _same_match(blob: bytes, incoming: dict[str, SpanRow]) -> None:
    assert cwire is not None
    got = cwire.match_batch(TRACE_A, blob, incoming)
    try:
        expected = match_batch_py(TRACE_A, blob, incoming)
    except TraceStoreError:
        assert got is None
        return
    assert got == expected


@native
def test_native_match_against_the_reference() -> None:
    rng = random.Random(4)
    for i in range(3):
        rows, _ = extract_rows(ExportTraceServiceRequest.FromString(make_batch(6_000_000 + i)).resource_spans)
        for group in list(_by_trace(rows).values())[:8]:
            blob = encode_batch_py(group)
            picked = rng.sample(group, rng.randrange(len(group) + 1))
            picked = [r if rng.random() < 0.5 else r._replace(payload=r.payload[:-1] + b"\x00") for r in picked]
            incoming = _incoming(picked + [r._replace(span_id=f"{rng.getrandbits(64):016x}") for r in group[:3]])
            _same_match(blob, incoming)
            for _ in range(30):
                b = bytearray(blob)
                b[rng.randrange(len(b))] = rng.randrange(256)
                _same_match(bytes(b), incoming)
                _same_match(blob[: rng.randrange(len(blob))], incoming)
    rows = _varied_rows()
    blob = encode_batch_py(rows + [rows[1]._replace(payload=wrap_span(rows[1].env, b"\x2a\x01q"))])
    _same_match(blob, _incoming(rows))  # the same id twice in a blob: its last copy decides
    assert cwire is not None
    assert cwire.match_batch(TRACE_A, blob, {"zz": rows[0]}) is None  # not a span id: Python's answer
    assert cwire.match_batch(TRACE_A, blob, {rows[0].span_id: (1, 2)}) is None
    assert match_batch(TRACE_A, blob, {"zz": rows[0]}) == (5, {})


@native
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([0, 1, 2, 3]))
def test_hypothesis_match_arbitrary_blobs(data: bytes, k: int) -> None:
    rows = _varied_rows()
    incoming = _incoming(rows[:k])
    _same_match(data, incoming)
    _same_match(b"\x01" + data, incoming)
    _same_match(encode_batch_py(rows)[:40] + data, incoming)
