"""A collector on a store with a damaged raw span batch: it keeps answering 200 and storing spans,
and the damaged trace is stored incomplete, its problem naming the trace and the span segment."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

from store_testlib import CHILD, CHILD2, ROOT, TRACE_A, TRACE_B, make_request, make_span

from vauban_trace.collector import Collector, CollectorConfig
from vauban_trace.store import TraceStore
from vauban_trace.store._segments import SPANS, segment_path


def _post(address: tuple[str, int], body: bytes) -> int:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=30)
    try:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    finally:
        conn.close()


def test_the_collector_survives_a_damaged_span_batch(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with TraceStore(store) as ts:
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", attrs={"pad": "a" * 200}),
                                  make_span(TRACE_A, CHILD, "c", parent=ROOT)))
        seg, off, length = ts._conn().execute("SELECT seg, off, len FROM span_batches").fetchone()
    path = segment_path(store / SPANS.folder, seg, SPANS)
    data = bytearray(path.read_bytes())
    data[off + length // 2] ^= 0x10
    path.write_bytes(bytes(data))
    config = CollectorConfig(store_dir=store, http=("127.0.0.1", 0), grpc=None, metrics=None, quiet_period_s=0.05,
                             incomplete_after_s=0.5, assemble_interval_s=0.05)
    collector = Collector(config).start()
    try:
        late_and_new = make_request(make_span(TRACE_A, CHILD2, "late", parent=ROOT),
                                    make_span(TRACE_B, ROOT, "b"), make_span(TRACE_B, CHILD, "b.c", parent=ROOT))
        address = collector.http_address
        assert address is not None
        assert _post(address, late_and_new.SerializeToString()) == 200
        assert _post(address, late_and_new.SerializeToString()) == 200  # a retry: duplicates
        deadline = time.monotonic() + 30
        while collector.store.pending_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert collector.store.pending_count() == 0
        good = collector.store.get_trace(TRACE_B)
        assert good.complete and len(good.spans) == 2
        damaged = collector.store.get_trace(TRACE_A)
        assert not damaged.complete
        assert any(f"raw spans of trace {TRACE_A}" in p and path.name in p for p in damaged.problems)
    finally:
        collector.stop(timeout=10)
    with TraceStore(store) as ts:
        report = ts.verify_store()
        assert report.span_batches_bad == 1 and report.span_batches_checked == 3  # the damaged one + 2 new (the retry: duplicates)
