"""TraceStore rebuilt traces: put/get/last/list, pending logic, id checks, files, durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from store_testlib import CHILD, CHILD2, ROOT, TRACE_A, TRACE_B, make_request, make_span

from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.store import (
    TraceNotFoundError,
    TraceStore,
    TraceStoreError,
    TraceSummary,
    check_trace_id,
)
from vauban_trace.store._wire import traces_data_bytes

TRACE_C = "5b8efff798038103d269b633813fc60c"


def _trace(tid: str, *, start: int, end: int, service: str = "demo", name: str = "root",
           complete: bool = True, extra_spans: int = 0) -> Trace:
    spans = [TraceSpan(id=ROOT, name=name, start_unix_nano=start, end_unix_nano=end)]
    for i in range(extra_spans):
        spans.append(TraceSpan(id=f"{i + 1:016x}", name=f"s{i}", parent_id=ROOT,
                               start_unix_nano=start, end_unix_nano=end))
    problems = () if complete else ("no root span",)
    return Trace(id=tid, spans=tuple(spans), resource={"service.name": service}, complete=complete, problems=problems)


def test_put_get_round_trip_and_file(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    trace = _trace(TRACE_A, start=1_000_000_000, end=3_500_000_000, extra_spans=2)
    path = ts.put_trace(trace)
    assert path == ts.trace_json_path(TRACE_A) == tmp_path / "traces" / f"{TRACE_A}.json"
    assert Trace.from_json(path.read_text()) == trace
    assert ts.get_trace(TRACE_A) == trace
    assert ts.get_trace(TRACE_A.upper()) == trace
    assert ts.get_trace(f"  {TRACE_A}\n") == trace
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    assert ts.trace_count() == 1


def test_put_trace_replaces_previous_rebuild(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.put_trace(_trace(TRACE_A, start=1, end=2, complete=False))
    ts.put_trace(_trace(TRACE_A, start=1, end=5, extra_spans=1))
    got = ts.get_trace(TRACE_A)
    assert got.complete and len(got.spans) == 2
    (summary,) = ts.list_traces()
    assert summary.span_count == 2 and summary.complete


def test_list_traces_order_filters_and_summary(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.put_trace(_trace(TRACE_A, start=1_000, end=2_000_001_000, service="alpha", name="text_completion tiny"))
    ts.put_trace(_trace(TRACE_B, start=5_000, end=6_000, service="beta", complete=False, extra_spans=3))
    ts.put_trace(_trace(TRACE_C, start=3_000, end=4_000, service="alpha"))
    listed = ts.list_traces()
    assert [s.trace_id for s in listed] == [TRACE_B, TRACE_C, TRACE_A]  # newest start first
    a = listed[-1]
    assert a == TraceSummary(trace_id=TRACE_A, service="alpha", root_name="text_completion tiny",
                             start_unix_nano=1_000, duration_s=2.0, span_count=1, complete=True)
    assert listed[0].complete is False and listed[0].span_count == 4
    assert [s.trace_id for s in ts.list_traces(service="alpha")] == [TRACE_C, TRACE_A]
    assert [s.trace_id for s in ts.list_traces(since_unix_nano=3_000)] == [TRACE_B, TRACE_C]
    assert [s.trace_id for s in ts.list_traces(limit=1)] == [TRACE_B]
    assert len(ts.list_traces(limit=None)) == 3
    assert ts.list_traces(service="nobody") == []
    assert json.loads(json.dumps(a.to_dict()))["trace_id"] == TRACE_A
    assert ts.last_trace().id == TRACE_B
    with pytest.raises(TraceStoreError, match="limit"):
        ts.list_traces(limit=-1)


def test_last_trace_on_empty_store(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFoundError, match="no rebuilt traces"):
        TraceStore(tmp_path).last_trace()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("xyz", "has 3 characters"),
        ("4bf92f3577b34da6a3ce929d0e0e473g", "not hexadecimal"),
        ("../../../etc/passwd", "characters"),
        ("0" * 32, "all-zero"),
        (42, "expected a string"),
    ],
)
def test_garbage_trace_ids_are_refused(tmp_path: Path, bad: object, message: str) -> None:
    ts = TraceStore(tmp_path)
    with pytest.raises(TraceStoreError, match=message):
        ts.get_trace(bad)  # type: ignore[arg-type]
    with pytest.raises(TraceStoreError):
        ts.trace_json_path(bad)  # type: ignore[arg-type]
    with pytest.raises(TraceStoreError):
        ts.spans_for(bad)  # type: ignore[arg-type]


def test_put_trace_refuses_bad_ids_and_types(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    with pytest.raises(TraceStoreError, match="put_trace: trace.id"):
        ts.put_trace(Trace(id="not-a-trace-id"))
    with pytest.raises(TraceStoreError, match="expected a Trace"):
        ts.put_trace({"id": TRACE_A})  # type: ignore[arg-type]
    assert check_trace_id(TRACE_A.upper()) == TRACE_A


def test_not_found_messages_distinguish_unknown_and_unrebuilt(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    with pytest.raises(TraceNotFoundError, match=f"no trace {TRACE_A}"):
        ts.get_trace(TRACE_A)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    with pytest.raises(TraceNotFoundError, match="1 raw span.*not been rebuilt yet"):
        ts.get_trace(TRACE_A)
    assert ts.list_traces() == []


def test_pending_until_rebuilt_and_again_after_new_spans(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", start=10, end=20)))
    (p,) = ts.pending_traces()
    ts.put_trace(_trace(TRACE_A, start=10, end=20), version=p.version)
    assert ts.pending_traces() == []
    # a span arriving during the rebuild keeps the trace pending
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "late", parent=ROOT)))
    (q,) = ts.pending_traces()
    assert q.rebuilt_version == p.version and q.version > p.version
    ts.put_trace(_trace(TRACE_A, start=10, end=20), version=p.version)
    assert [x.trace_id for x in ts.pending_traces()] == [TRACE_A]
    ts.put_trace(_trace(TRACE_A, start=10, end=20, extra_spans=1))  # no version: rebuilt from all
    assert ts.pending_traces() == []
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "late", parent=ROOT)))  # duplicate
    assert ts.pending_traces() == []


def test_pending_order_and_limit(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b")))
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "a")))
    assert [p.trace_id for p in ts.pending_traces()] == [TRACE_B, TRACE_A]
    assert [p.trace_id for p in ts.pending_traces(limit=1)] == [TRACE_B]


def test_pending_due_filters(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b")))  # a root: due after the quiet period
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "a", parent=ROOT)))  # rootless
    b, a = ts.pending_traces()  # oldest activity first
    assert a.trace_id == TRACE_A and not a.has_root and b.has_root
    late = max(a.last_received_unix_nano, b.last_received_unix_nano)
    # everything arrived after the cut-off: nothing is due
    assert ts.pending_traces(received_by=b.last_received_unix_nano - 1, rootless_received_by=0) == []
    # past the quiet period only the rooted trace is due; the rootless one waits for its own cut-off
    due = ts.pending_traces(received_by=late, rootless_received_by=a.last_received_unix_nano - 1)
    assert [p.trace_id for p in due] == [TRACE_B]
    due = ts.pending_traces(received_by=late, rootless_received_by=a.last_received_unix_nano, limit=5)
    assert [p.trace_id for p in due] == [TRACE_B, TRACE_A]
    assert ts.pending_traces(received_by=late, rootless_received_by=late, limit=1) == due[:1]
    # the filters read the pending index (a range scan), not the whole traces table
    plan = " ".join(str(r) for r in ts._conn().execute(
        "EXPLAIN QUERY PLAN SELECT trace_id FROM traces WHERE version > 0 AND (rebuilt_version IS NULL "
        "OR rebuilt_version < version) AND last_received_unix_nano <= ? AND (has_root OR "
        "last_received_unix_nano <= ?) ORDER BY last_received_unix_nano LIMIT 5", (late, late)))
    assert "traces_pending" in plan


def test_imported_trace_without_raw_spans(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.put_trace(_trace(TRACE_C, start=1, end=2))
    assert ts.pending_traces() == []
    assert len(ts.spans_for(TRACE_C).resource_spans) == 0
    assert ts.get_trace(TRACE_C).id == TRACE_C


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    with TraceStore(tmp_path) as ts:
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
        ts.put_trace(_trace(TRACE_A, start=1, end=2))
    ts2 = TraceStore(tmp_path)
    assert ts2.get_trace(TRACE_A).id == TRACE_A and ts2.raw_span_count(TRACE_A) == 1
    assert ts2.blobs.root == (tmp_path / "blobs").resolve()
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    TraceStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(TraceStoreError, match="schema version 99"):
        TraceStore(tmp_path)


def test_garbage_database_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "traces.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TraceStoreError, match="traces.sqlite"):
        TraceStore(tmp_path)


def test_spans_survive_sigkill_right_after_add_spans(tmp_path: Path) -> None:
    here = Path(__file__).parent
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(here)!r})
        from store_testlib import make_request, make_span
        from vauban_trace.store import TraceStore
        ts = TraceStore({str(tmp_path)!r})
        spans = [make_span({TRACE_A!r}, f"{{i + 1:016x}}", f"s{{i}}") for i in range(200)]
        result = ts.add_spans(make_request(*spans))
        assert result == (200, 0), result
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ts = TraceStore(tmp_path)
    assert ts.raw_span_count(TRACE_A) == 200
    (p,) = ts.pending_traces()
    assert p.span_count == 200
    assert ts.add_spans(make_request(make_span(TRACE_A, f"{1:016x}", "s0"))) == (0, 1)
    assert os.path.exists(tmp_path / "traces.sqlite")


_V1_SCHEMA = """
CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
    service TEXT, start_unix_nano INTEGER NOT NULL, end_unix_nano INTEGER NOT NULL,
    received_unix_nano INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID;
CREATE TABLE traces (trace_id TEXT PRIMARY KEY, service TEXT, root_span_id TEXT, root_name TEXT,
    start_unix_nano INTEGER, end_unix_nano INTEGER, raw_span_count INTEGER NOT NULL DEFAULT 0,
    has_root INTEGER NOT NULL DEFAULT 0, first_received_unix_nano INTEGER, last_received_unix_nano INTEGER,
    version INTEGER NOT NULL DEFAULT 0, rebuilt_version INTEGER, rebuilt_at_unix_nano INTEGER, trace_json TEXT,
    complete INTEGER, rb_service TEXT, rb_root_name TEXT, rb_start_unix_nano INTEGER, rb_duration_s REAL,
    rb_span_count INTEGER);
PRAGMA user_version = 1;
"""


def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    conn.executescript(_V1_SCHEMA)
    payloads = []
    for sid, parent, start, end in ((ROOT, None, 10, 100), (CHILD, ROOT, 5, 120)):
        rs = ResourceSpans()
        rs.scope_spans.add().spans.append(make_span(TRACE_A, sid, sid, parent=parent, start=start, end=end))
        payloads.append(rs.SerializeToString())
        conn.execute("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?)",
                     (TRACE_A, sid, parent, sid, None, start, end, 1, payloads[-1]))
    conn.execute("INSERT INTO traces (trace_id, root_span_id, root_name, start_unix_nano, end_unix_nano, "
                 "raw_span_count, has_root, first_received_unix_nano, last_received_unix_nano, version) "
                 "VALUES (?,?,?,?,?,?,?,?,?,?)", (TRACE_A, ROOT, ROOT, 10, 100, 2, 1, 1, 1, 1))
    conn.commit()
    # what version 2 read back: the payloads regrouped in start order
    before = traces_data_bytes(payloads[::-1])
    conn.close()
    ts = TraceStore(tmp_path)
    assert ts.spans_for_bytes(TRACE_A) == before
    assert ts.raw_span_count(TRACE_A) == 2
    (p,) = ts.pending_traces()
    assert (p.span_count, p.has_root, p.root_name) == (2, True, ROOT)
    assert ts.add_spans(make_request(make_span(TRACE_A, CHILD2, "new", parent=ROOT))) == (1, 0)
    assert ts.raw_span_count(TRACE_A) == 3
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'spans'").fetchall() == []
    assert conn.execute("SELECT start_unix_nano, end_unix_nano, root_start_unix_nano FROM traces").fetchone() == (
        5, 2_000, 10)
    conn.close()
