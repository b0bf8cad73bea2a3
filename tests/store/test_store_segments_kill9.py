"""kill -9 of a real collector subprocess while it ingests and stores Trace JSON in segments.

The collector commits rebuilt traces without waiting for the disk (``durable=False``), so a power
cut may lose the tail of a segment whose rows survived. After the kill the test tears the last
segment's tail (what such a cut leaves), restarts the collector on the same store, sends the rest
and stops it with SIGTERM (final assembly pass). Every trace must then be rebuilt exactly from its
raw spans: the broken texts were never served and their traces were rebuilt.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from store_testlib import make_request, make_span

from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceStore

BATCHES = 24
TRACES_PER_BATCH = 4
SPANS = 16


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(store: Path, port: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())", "collector",
           "--store", str(store), "--http", f"127.0.0.1:{port}", "--grpc", "off", "--metrics", "off",
           "--quiet-period", "0s"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if " store " in line:
            return proc
    raise AssertionError(f"collector did not start (exit {proc.wait()})")


def _batch(b: int) -> bytes:
    spans = []
    for t in range(TRACES_PER_BATCH):
        tid = f"{b * TRACES_PER_BATCH + t + 1:032x}"
        root = f"{1:016x}"
        spans.append(make_span(tid, root, f"root {b}.{t}", start=1_000, end=9_000, attrs={"pad": "r" * 200}))
        spans += [make_span(tid, f"{i + 2:016x}", f"stage {i}", parent=root, start=1_000 + i, end=2_000 + i,
                            attrs={"pad": "s" * 100}) for i in range(SPANS - 1)]
    body: bytes = make_request(*spans).SerializeToString()
    return body


def _post(port: int, bodies: list[bytes]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body in bodies:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()


def _rebuilt(store: Path) -> int:
    conn = sqlite3.connect(f"file:{store / 'traces.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM traces WHERE doc_segment IS NOT NULL").fetchone()[0])
    finally:
        conn.close()


def test_kill9_then_torn_segment_tail_rebuilds_every_trace(tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = _port()
    bodies = [_batch(b) for b in range(BATCHES)]
    proc = _start(store, port)
    try:
        _post(port, bodies[:BATCHES // 2])
        deadline = time.monotonic() + 30
        while _rebuilt(store) < BATCHES // 4 * TRACES_PER_BATCH and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: some traces rebuilt, others pending
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    conn = sqlite3.connect(f"file:{store / 'traces.sqlite'}?mode=ro", uri=True)
    segment, end = conn.execute("SELECT doc_segment, MAX(doc_offset + doc_length) FROM traces WHERE doc_segment = "
                                "(SELECT MAX(doc_segment) FROM traces)").fetchone()
    conn.close()
    last = store / "documents" / f"seg-{segment:06d}.jsonl"
    assert last.stat().st_size >= end > 50
    os.truncate(last, end - 50)  # the tail a power cut would lose: the last committed text is torn
    rebuilt = _rebuilt(store)
    with TraceStore(store) as ts:  # opening finds the row past the end: pending again
        assert ts.trace_count() == rebuilt - 1
        assert ts.pending_count() >= 1
    port = _port()
    proc = _start(store, port)
    try:
        _post(port, bodies[BATCHES // 2:])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    with TraceStore(store) as ts:
        assert ts.pending_traces() == []
        assert ts.trace_count() == BATCHES * TRACES_PER_BATCH
        for b in range(BATCHES):
            for t in range(TRACES_PER_BATCH):
                tid = f"{b * TRACES_PER_BATCH + t + 1:032x}"
                (expected,) = rebuild_traces(ts.spans_for(tid))
                got = ts.get_trace(tid)
                assert got == expected and got.complete
