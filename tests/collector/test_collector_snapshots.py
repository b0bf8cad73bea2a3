"""The assembler rebuilds new traces from the writer's in-memory snapshot, and from the store otherwise."""

from __future__ import annotations

import os

from collector_helpers import add_vauban_trace, post, trace_id_of, vauban_request, wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.collector import Assembler, CollectorMetrics
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceStore


def test_assembler_uses_version_one_snapshots_only_and_stays_bounded(tmp_path):
    with TraceStore(tmp_path / "s") as store:
        asm = Assembler(store, CollectorMetrics(), quiet_period_s=0.0)
        req, tids = vauban_request(3, salt=73)
        asm.remember(store.ingest(req, snapshots=True).snapshots)
        # a later span of the first trace: version 2, its snapshot must not be used
        more = ExportTraceServiceRequest()
        add_vauban_trace(more, bytes.fromhex(tids[0]), stages=6)
        assert store.ingest(more, snapshots=True).snapshots == {}
        assert asm.run_once(force=True) == 3
        assert asm.snapshot_hits == 2
        assert len(store.get_trace(tids[0]).spans) == 7  # rebuilt from the store, late spans included
        for tid in tids:
            assert store.get_trace(tid) == rebuild_traces(store.spans_for(tid))[0]
        # over the cap, new snapshots are not kept (and the traces are read back)
        tiny = Assembler(store, CollectorMetrics(), snapshot_bytes=1)
        req2, tids2 = vauban_request(2, salt=74)
        tiny.remember(store.ingest(req2, snapshots=True).snapshots)
        assert tiny.run_once(force=True) == 2 and tiny.snapshot_hits == 0
        assert all(store.get_trace(t).complete for t in tids2)


def test_snapshot_rebuild_equals_store_rebuild_and_late_spans_read_the_store(make_collector):
    c = make_collector(quiet_period_s=0.0)
    req, tids = vauban_request(3, salt=71)
    assert post(c.http_address, req.SerializeToString())[0] == 200
    wait_for(lambda: c.store.trace_count() == 3 and not c.store.pending_traces())
    # no read-back for traces that came in one write (the assembler's query waits for the hand-over)
    assert c.assembler.snapshot_hits == 3
    for tid in tids:  # the same Trace as a rebuild from what the store holds
        assert c.store.get_trace(tid) == rebuild_traces(c.store.spans_for(tid))[0]

    # a trace whose root comes later: version 2 when assembled, so it is read back from the store
    late = trace_id_of(0, salt=72)
    first = ExportTraceServiceRequest()
    add_vauban_trace(first, late, root=False, stages=2)
    assert post(c.http_address, first.SerializeToString())[0] == 200
    whole = ExportTraceServiceRequest()
    add_vauban_trace(whole, late, stages=3)  # the root, the two stages again and a third one
    assert post(c.http_address, whole.SerializeToString())[0] == 200
    trace = wait_for(lambda: not c.store.pending_traces() and c.store.trace_count() == 4
                     and c.store.get_trace(late.hex()))
    assert trace.complete and len(trace.spans) == 4
    assert trace == rebuild_traces(c.store.spans_for(late.hex()))[0]


def test_every_new_trace_is_rebuilt_from_its_snapshot_under_load(make_collector):
    """The writer holds the hand-over lock from its commit until the snapshots are remembered and a
    pass queries the ready traces under it: with the assembler running all the time (quiet period 0,
    short interval) while requests keep coming, all on one core, no new trace is read back."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # receiver, writer and assembler compete for one core
    try:
        c = make_collector(quiet_period_s=0.0, assemble_interval_s=0.001)
        bodies, tids = [], []
        for i in range(30):
            req, more = vauban_request(16, salt=900 + i)
            bodies.append(req.SerializeToString())
            tids += more
        for body in bodies:
            assert post(c.http_address, body)[0] == 200
        wait_for(lambda: c.store.trace_count() == len(tids) and not c.store.pending_traces())
    finally:
        os.sched_setaffinity(0, cores)
    assert c.assembler.rebuilt == len(tids) and c.assembler.snapshot_hits == len(tids)


def test_the_idle_drop_of_leftover_snapshots_keeps_one_handed_over_meanwhile(tmp_path, monkeypatch):
    """A pass that finds no backlog drops leftover snapshots; a trace committed (and its snapshot handed
    over) between that count and the drop must keep its snapshot, or it is read back from SQLite."""
    import threading

    with TraceStore(tmp_path / "s") as store:
        asm = Assembler(store, CollectorMetrics(), quiet_period_s=0.0)
        old, _ = vauban_request(2, salt=75)
        asm.remember(store.ingest(old, snapshots=True).snapshots)
        assert Assembler(store, CollectorMetrics()).run_once(force=True) == 2  # asm keeps leftovers
        new, tids = vauban_request(3, salt=76)

        def writer():  # the collector's writer: commit and hand-over under the hand-off lock
            with asm.handoff:
                asm.remember(store.ingest(new, snapshots=True).snapshots)

        real = store.pending_count
        raced: list[int] = []

        def count_then_commit():
            n = real()
            if not raced:  # the first count of the pass; the writer commits right after it
                raced.append(n)
                t = threading.Thread(target=writer)
                t.start()
                t.join(2.0)
            return n

        monkeypatch.setattr(store, "pending_count", count_then_commit)
        assert asm.run_once() == 0 and raced == [0]
        monkeypatch.setattr(store, "pending_count", real)
        assert asm.run_once(force=True) == 3
        assert asm.snapshot_hits == 3 and all(store.get_trace(t).complete for t in tids)
