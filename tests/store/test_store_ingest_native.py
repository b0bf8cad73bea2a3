"""The durable write's C hot path (``_cwire_src/ingest.c``) against the Python reference.

``group_rows`` must equal ``_ingest._group_rows_py``, ``bookkeeping`` ``_ingest._bookkeeping_py``
(for a trace with no stored span), ``new_traces`` the blobs of ``encode_batch_py``, the payload
sums and ``snapshot_bytes_py``; where the extension declines (None) the Python answer stands. A
whole store written with the C path and one written with the Python reference hold the same
bytes and rows.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest
from store_testlib import ROOT, TRACE_A, TRACE_B, batch_rows, make_request, make_span

from vauban_trace.store import TraceStore, _ingest, cut_request
from vauban_trace.store._batch import encode_batch_py
from vauban_trace.store._ingest import SpanRow, extract_rows, snapshot_bytes_py
from vauban_trace.store._native import cwire

pytestmark = pytest.mark.skipif(cwire is None, reason="the _cwire extension is not built (or disabled)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_collector import make_batch  # noqa: E402

TRACE_C = "1af7651916cd43dd8448eb211c80319d"


def _rows(*spans_and_services: tuple[object, str]) -> list[SpanRow]:
    rows: list[SpanRow] = []
    for span, service in spans_and_services:
        got, problems = extract_rows(make_request(span, service=service).resource_spans)  # type: ignore[arg-type]
        assert not problems
        rows.extend(got)
    return rows


def _random_rows(rng: random.Random, n: int) -> list[SpanRow]:
    """Rows of three traces, interleaved, with repeated span ids (same or other payload), roots
    with equal starts, spans with and without a service."""
    rows: list[SpanRow] = []
    for _ in range(n):
        tid = rng.choice((TRACE_A, TRACE_B, TRACE_C))
        sid = f"{rng.randrange(1, 12):016x}"
        parent = None if rng.random() < 0.3 else f"{rng.randrange(1, 12):016x}"
        start = rng.choice((5, 7, 7, 9, rng.randrange(0, 2**63)))
        span = make_span(tid, sid, rng.choice(("a", "b", "ü")), parent=parent, start=start,
                         end=start + rng.randrange(0, 100))
        got, _ = extract_rows(make_request(span, service=rng.choice(("svc", "other"))).resource_spans)
        row = got[0]
        if rng.random() < 0.2:
            row = row._replace(service=None)
        rows.append(row)
        if rng.random() < 0.2:
            rows.append(row)  # the same span again
    return rows


def _native_group(rows: object) -> object:
    assert cwire is not None
    return cwire.group_rows(rows)


@pytest.mark.parametrize("seed", range(40))
def test_group_rows_equals_the_reference(seed: int) -> None:
    rows = _random_rows(random.Random(seed), seed % 7 * 9)
    expected = _ingest._group_rows_py(rows)
    got = _native_group(rows)
    assert got == expected
    assert isinstance(got, tuple)
    assert list(got[0]) == list(expected[0])  # trace order too
    for tid, group in got[0].items():
        assert [r.span_id for r in group] == [r.span_id for r in expected[0][tid]]
        assert all(a is b for a, b in zip(group, expected[0][tid], strict=True))  # the same row objects


def test_group_rows_counts_duplicates_and_later_copies() -> None:
    first = _rows((make_span(TRACE_A, ROOT, "root"), "svc"))[0]
    later = _rows((make_span(TRACE_A, ROOT, "root", end=9_000), "svc"))[0]
    other = _rows((make_span(TRACE_B, ROOT, "root"), "svc"))[0]
    equal_copy = first._replace(payload=bytes(bytearray(first.payload)))  # equal by value, another object
    groups, superseded, duplicates = _native_group([first, other, equal_copy, later, first])  # type: ignore[misc]
    assert (superseded, duplicates) == (2, 1)
    assert groups == {TRACE_A: [first], TRACE_B: [other]}
    assert groups[TRACE_A][0] is first  # the last copy, at the first copy's place


@pytest.mark.parametrize("bad", ["not a list", "row too short", "trace id not str", "payload not bytes",
                                 "span id not str"])
def test_group_rows_declines_unusual_rows(bad: str) -> None:
    rows = _rows((make_span(TRACE_A, ROOT, "root"), "svc"))
    row = rows[0]
    if bad == "not a list":
        assert _native_group(tuple(rows)) is None
        return
    broken: object = {
        "row too short": tuple(row)[:8],
        "trace id not str": row._replace(trace_id=b"x"),
        "payload not bytes": row._replace(payload=bytearray(row.payload)),
        "span id not str": row._replace(span_id=1),
    }[bad]
    assert _native_group([row, broken]) is None


def _bookkeeping_native(tid: str, rows: list[SpanRow], now: int) -> object:
    assert cwire is not None
    return cwire.bookkeeping(tid, rows, now)


@pytest.mark.parametrize("seed", range(40))
def test_bookkeeping_equals_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows = [r for r in _random_rows(rng, 1 + seed % 9 * 3) if r.trace_id == TRACE_A] or []
    rng.shuffle(rows)
    now = time.time_ns()
    expected = _ingest._bookkeeping_py(TRACE_A, None, rows, now)
    got = _bookkeeping_native(TRACE_A, rows, now)
    assert got == expected
    assert [type(x) for x in got] == [type(x) for x in expected]  # type: ignore[attr-defined]
    assert _ingest._bookkeeping(TRACE_A, None, rows, now) == expected


def test_bookkeeping_roots_services_and_ties() -> None:
    now = 12345
    rows = _rows(
        (make_span(TRACE_A, "0000000000000009", "child", parent=ROOT, start=1), "first"),
        (make_span(TRACE_A, "0000000000000005", "root b", start=7), "b"),
        (make_span(TRACE_A, "0000000000000003", "root a", start=7), "a"),  # same start: lower id wins
    )
    cases = [rows, rows[::-1], [rows[0]], [], [rows[0]._replace(service=None), rows[1]._replace(service=None)],
             [rows[0], rows[2]._replace(service=None)]]  # a root without a service: the first service stays
    for case in cases:
        assert _bookkeeping_native(TRACE_A, case, now) == _ingest._bookkeeping_py(TRACE_A, None, case, now)
    assert _bookkeeping_native(TRACE_A, rows, now)[1:5] == ("a", "0000000000000003", "root a", 7)  # type: ignore[index]


@pytest.mark.parametrize("bad", ["start negative", "end 2**64", "start float", "non-ascii span id", "not a list",
                                 "row too short"])
def test_bookkeeping_declines_and_the_python_answer_stands(bad: str) -> None:
    rows = _rows((make_span(TRACE_A, ROOT, "root", start=5), "svc"), (make_span(TRACE_A, "0000000000000002", "x"), "svc"))
    changed: object = {
        "start negative": [rows[0]._replace(start=-1), rows[1]],
        "end 2**64": [rows[0]._replace(end=2**64), rows[1]],
        "start float": [rows[0]._replace(start=5.0), rows[1]],
        "non-ascii span id": [rows[0]._replace(span_id="é" * 16), rows[1]],
        "not a list": tuple(rows),
        "row too short": [tuple(rows[0])[:8], rows[1]],
    }[bad]
    assert _bookkeeping_native(TRACE_A, changed, 1) is None  # type: ignore[arg-type]
    if bad not in ("not a list", "row too short"):
        assert isinstance(changed, list)
        assert _ingest._bookkeeping(TRACE_A, None, changed, 1) == _ingest._bookkeeping_py(TRACE_A, None, changed, 1)


def test_new_traces_equals_encode_and_snapshot() -> None:
    assert cwire is not None
    for i in range(3):
        cut = cut_request(make_batch(8_100_000 + i))
        assert cut is not None
        groups, _s, _d = _native_group(cut.rows)  # type: ignore[misc]
        for snapshots in (True, False):
            blobs, sizes, datas = cwire.new_traces(groups, snapshots)
            assert blobs == [encode_batch_py(rows) for rows in groups.values()]
            assert sizes == [sum(len(r.payload) for r in rows) for rows in groups.values()]
            assert datas == ([snapshot_bytes_py(rows) for rows in groups.values()] if snapshots
                             else [None] * len(groups))


def test_new_traces_declines_a_row_encode_batch_declines() -> None:
    assert cwire is not None
    rows = _rows((make_span(TRACE_A, ROOT, "root"), "svc"))
    assert cwire.new_traces({TRACE_A: rows, TRACE_B: [rows[0]._replace(span_id="XYZ")]}, True) is None
    assert cwire.new_traces({TRACE_A: tuple(rows)}, True) is None
    assert cwire.new_traces([rows], True) is None


def _write_all(path: Path, parts: list[object], monkeypatch: pytest.MonkeyPatch, native: bool) -> TraceStore:
    with monkeypatch.context() as m:
        if not native:
            for name in ("_native_group", "_native_new", "_native_bookkeeping"):
                m.setattr(_ingest, name, None)
        m.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
        ts = TraceStore(path)
        for k, part in enumerate(parts):
            result = ts.ingest_parts([part], snapshots=True)
            for tid, snap in result.snapshots.items():
                assert snap.data() == ts.spans_for_bytes(tid), (native, k, tid)
    return ts


def test_a_store_written_natively_equals_one_written_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New traces, resent requests, late spans and later copies of spans, both ways: same segment
    bytes, same span_batches and traces rows, same snapshots."""
    bodies = [make_batch(8_200_000 + i) for i in range(3)]
    late = make_request(make_span(TRACE_A, ROOT, "root", start=3), make_span(TRACE_A, "0000000000000002", "c",
                        parent=ROOT), make_span(TRACE_B, ROOT, "other"))
    later = make_request(make_span(TRACE_A, ROOT, "root", start=3, end=99), make_span(TRACE_C, ROOT, "new"),
                         make_span(TRACE_C, ROOT, "new"))
    parts: list[object] = [*bodies, bodies[1], late, later, late]
    stores = [_write_all(tmp_path / name, parts, monkeypatch, native) for name, native in (("c", True), ("py", False))]
    try:
        segs = [sorted((p.name, p.read_bytes()) for p in (ts.dir / "spans").iterdir()) for ts in stores]
        assert segs[0] == segs[1]
        assert batch_rows(stores[0]) == batch_rows(stores[1])
        query = "SELECT * FROM traces ORDER BY rowid"
        assert stores[0]._conn().execute(query).fetchall() == stores[1]._conn().execute(query).fetchall()
        query = "SELECT id, bytes, live_bytes FROM span_segments ORDER BY id"
        assert stores[0]._conn().execute(query).fetchall() == stores[1]._conn().execute(query).fetchall()
    finally:
        for ts in stores:
            ts.close()


@pytest.mark.parametrize("start", [0, 1, 2**31, 2**62, 2**63 - 1, 2**63, 2**64 - 2])
def test_times_at_the_limits_of_64_bits(start: int) -> None:
    """Times past 2^63 (``fastrow.h`` leaves them to the slow conversion) are read as the Python
    reference reads them, up to 2^64 - 1."""
    assert cwire is not None
    rows = _rows((make_span(TRACE_A, ROOT, "root"), "svc"), (make_span(TRACE_A, "0000000000000002", "x"), "svc"))
    rows = [rows[0]._replace(start=start, end=start + 1), rows[1]._replace(start=start + 1, end=2**64 - 1)]
    assert _bookkeeping_native(TRACE_A, rows, 1) == _ingest._bookkeeping_py(TRACE_A, None, rows, 1)
    blobs, sizes, datas = cwire.new_traces({TRACE_A: rows}, True)
    assert blobs == [encode_batch_py(rows)]
    assert datas == [snapshot_bytes_py(rows)]
