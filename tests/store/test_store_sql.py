"""Database settings: 16 KiB pages for a new store, an old store keeps its pages, WAL checkpoints by bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from store_testlib import ROOT, TRACE_A, make_request, make_span

from vauban_trace.store import TraceStore
from vauban_trace.store._sql import CHECKPOINT_BYTES, PAGE_SIZE


def _pragma(ts: TraceStore, name: str) -> int:
    return int(ts._conn().execute(f"PRAGMA {name}").fetchone()[0])


def test_new_store_pages_and_checkpoint_interval(tmp_path: Path) -> None:
    with TraceStore(tmp_path) as ts:
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
        assert _pragma(ts, "page_size") == PAGE_SIZE
        assert _pragma(ts, "wal_autocheckpoint") * PAGE_SIZE == CHECKPOINT_BYTES
    with TraceStore(tmp_path) as again:  # reopened: same settings, spans still there
        assert _pragma(again, "page_size") == PAGE_SIZE
        assert again.raw_span_count(TRACE_A) == 1


def test_an_existing_4k_database_keeps_its_pages(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("CREATE TABLE scratch (x)")  # the file exists with 4 KiB pages
    conn.execute("DROP TABLE scratch")
    conn.commit()
    conn.close()
    with TraceStore(tmp_path) as ts:
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
        assert _pragma(ts, "page_size") == 4096
        assert _pragma(ts, "wal_autocheckpoint") == CHECKPOINT_BYTES // 4096
        assert ts.raw_span_count(TRACE_A) == 1
