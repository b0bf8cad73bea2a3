"""snapshot_bytes: the C regrouping (``_cwire.snapshot``) against the Python reference, byte for byte.

Every native result must equal :func:`snapshot_bytes_py` on the same rows; where the extension
declines (None) the public :func:`snapshot_bytes` must still give the Python answer.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from store_testlib import TRACE_A, make_request, make_span

from vauban_trace.store import TraceStore
from vauban_trace.store._ingest import SpanRow, extract_rows, snapshot_bytes, snapshot_bytes_py
from vauban_trace.store._native import cwire
from vauban_trace.store._wire import envelope, wrap_span

pytestmark = pytest.mark.skipif(cwire is None, reason="the _cwire extension is not built (or disabled)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_collector import make_batch  # noqa: E402


def _native(rows: list[SpanRow]) -> bytes | None:
    assert cwire is not None
    out = cwire.snapshot(rows)
    assert out is None or isinstance(out, bytes)
    return out


def _same(rows: list[SpanRow]) -> bytes:
    expected = snapshot_bytes_py(rows)
    assert _native(rows) == expected
    assert snapshot_bytes(rows) == expected
    return expected


def _env(i: int, *, resource_only: bool = False) -> tuple[bytes, ...]:
    """A distinct envelope per ``i`` (a fresh object each call: grouping is by value)."""
    resource = make_request(service=f"svc{i % 3}").resource_spans[0].resource.SerializeToString()
    scope = None if resource_only else f"\n\x05scope\x12\x01{i % 2}".encode()
    return envelope(resource, "" if i % 4 else "https://schema/1", scope, "" if i % 5 else "s")


def _row(trace: str, span_id: str, start: int, env: tuple[bytes, ...], body: bytes = b"") -> SpanRow:
    span = make_span(trace, span_id, "s" + span_id[-2:], start=max(start, 0) % 2**63, end=2**62).SerializeToString()
    return SpanRow(trace, span_id, None, "s", None, start, 5, wrap_span(env, span + body), env)


def test_collector_batches_per_trace_and_whole() -> None:
    for i in range(4):
        rows, problems = extract_rows(_request(make_batch(8_000_000 + i)).resource_spans)
        assert not problems
        by_trace: dict[str, list[SpanRow]] = {}
        for row in rows:
            by_trace.setdefault(row.trace_id, []).append(row)
        for group in by_trace.values():
            data = _same(group)
            assert len(TracesData.FromString(data).resource_spans[0].scope_spans[0].spans) == len(group)
        _same(rows)
        _same(list(reversed(rows)))


def _request(body: bytes):  # type: ignore[no-untyped-def]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return ExportTraceServiceRequest.FromString(body)


def test_what_the_store_reads_back(tmp_path: Path) -> None:
    """Several resources and scopes, spans out of order: the snapshot equals spans_for_bytes."""
    req = make_request(make_span(TRACE_A, "00000000000000b2", "b", start=50),
                       make_span(TRACE_A, "00000000000000a1", "a", start=50),
                       make_span(TRACE_A, "00000000000000c3", "c", start=10))
    other = make_request(make_span(TRACE_A, "00000000000000d4", "d", start=20), service="remote", scope="x")
    req.resource_spans.extend(other.resource_spans)
    rows, _ = extract_rows(req.resource_spans)
    with TraceStore(tmp_path) as ts:
        ts.add_spans(req)
        assert _same(rows) == ts.spans_for_bytes(TRACE_A)


def test_ties_keep_input_order_and_groups_compare_by_value() -> None:
    a, b = _env(1), _env(2)
    a2 = tuple(bytes(x) for x in a)  # equal by value, other objects
    rows = [
        _row(TRACE_A, "0000000000000001", 7, a, b"\x22\x00"),
        _row(TRACE_A, "0000000000000001", 7, b, b"\x22\x01"),  # same key: input order decides
        _row(TRACE_A, "0000000000000001", 7, a2, b"\x22\x02"),
        _row(TRACE_A, "0000000000000000", 7, b),
        _row(TRACE_A, "00000000000000ff", 2**64 - 1, a),
        _row(TRACE_A, "0000000000000002", 0, _env(3, resource_only=True)),
    ]
    _same(rows)
    _same(rows[::-1])
    _same([])


@pytest.mark.parametrize("bad", [
    "not a list",
    "start negative",
    "start 2**64",
    "start float",
    "non-ascii span id",
    "env short",
    "env not bytes",
    "payload too short",
    "row too short",
])
def test_declines_unusual_rows_and_the_python_answer_stands(bad: str) -> None:
    env = _env(1)
    rows: object = [_row(TRACE_A, "0000000000000001", 5, env), _row(TRACE_A, "0000000000000002", 6, env)]
    assert isinstance(rows, list)
    last = rows[-1]
    if bad == "not a list":
        rows = tuple(rows)
    elif bad == "start negative":
        rows[-1] = last._replace(start=-1)
    elif bad == "start 2**64":
        rows[-1] = last._replace(start=2**64)
    elif bad == "start float":
        rows[-1] = last._replace(start=6.0)
    elif bad == "non-ascii span id":
        rows[-1] = last._replace(span_id="00000000000000é")
    elif bad == "env short":
        rows[-1] = last._replace(env=env[:3])
    elif bad == "env not bytes":
        rows[-1] = last._replace(env=(env[0], bytearray(env[1]), env[2], env[3]))
    elif bad == "payload too short":
        rows[-1] = last._replace(payload=last.payload[: len(env[0]) + 1])
    elif bad == "row too short":
        rows[-1] = tuple(last)[:8]
    assert cwire is not None
    assert cwire.snapshot(rows) is None
    try:
        expected: object = snapshot_bytes_py(rows)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the same error from the public call
        with pytest.raises(type(exc)):
            snapshot_bytes(rows)  # type: ignore[arg-type]
    else:
        assert snapshot_bytes(rows) == expected  # type: ignore[arg-type]


def test_too_many_groups_declines() -> None:
    rows = [_row(TRACE_A, f"{i + 1:016x}", i, envelope(None, f"r{i}", None, "")) for i in range(300)]
    assert cwire is not None and cwire.snapshot(rows) is None
    assert snapshot_bytes(rows) == snapshot_bytes_py(rows)
    assert _same(rows[:200])


def test_seeded_shuffles_and_truncations() -> None:
    rng = random.Random(20261126)
    envs = [_env(i) for i in range(6)]
    for _ in range(300):
        rows = [_row(TRACE_A, f"{rng.randrange(1, 40):016x}", rng.choice([0, 1, 5, 2**40, 2**63, 2**64 - 1]),
                     rng.choice(envs), b"\x22" + bytes([k := rng.randrange(0, 3)]) + b"x" * k)
                for _ in range(rng.randrange(0, 30))]
        if rows and rng.random() < 0.3:  # a damaged payload: both roads agree or both raise
            i = rng.randrange(len(rows))
            rows[i] = rows[i]._replace(payload=rows[i].payload[: rng.randrange(len(rows[i].payload))])
            native = _native(rows)
            try:
                expected = snapshot_bytes_py(rows)
            except IndexError:
                assert native is None
                continue
            assert native is None or native == expected
            continue
        _same(rows)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**64 - 1), st.integers(0, 4),
                          st.binary(max_size=40)), max_size=25))
def test_hypothesis_rows(spec: list[tuple[int, int, int, bytes]]) -> None:
    envs = [_env(i) for i in range(5)]
    rows = [_row(TRACE_A, f"{sid:016x}", start, envs[e], b"\x22" + bytes([len(extra)]) + extra)
            for start, sid, e, extra in spec]
    _same(rows)
