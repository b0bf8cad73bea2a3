"""Assembly: completeness rules, late spans, pending work found on disk, graceful SIGTERM."""

from __future__ import annotations

import time

import pytest
from collector_helpers import add_vauban_trace, post, span_id_of, trace_id_of, vauban_request, wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.store import TraceNotFoundError, TraceStore


def _rebuilt(c, state: str) -> float:
    return c.metrics.traces_rebuilt.labels(state)._value.get()


def test_complete_trace_waits_for_the_quiet_period(make_collector):
    c = make_collector(quiet_period_s=0.6)
    req, (tid,) = vauban_request(1, salt=50)
    sent = time.monotonic()
    assert post(c.http_address, req.SerializeToString())[0] == 200
    time.sleep(0.2)
    if time.monotonic() - sent < 0.5:  # (on an overloaded machine the check would be racy)
        with pytest.raises(TraceNotFoundError, match="not been rebuilt yet"):
            c.store.get_trace(tid)
    trace = wait_for(lambda: c.store.trace_count() and c.store.get_trace(tid))
    assert time.monotonic() - sent >= 0.6
    assert trace.complete and not trace.problems and len(trace.spans) == 5
    assert _rebuilt(c, "complete") == 1


def test_trace_without_root_is_stored_incomplete_after_timeout(make_collector):
    c = make_collector(quiet_period_s=0.1, incomplete_after_s=0.8)
    req, (tid,) = vauban_request(1, salt=51, root=False)
    sent = time.monotonic()
    post(c.http_address, req.SerializeToString())
    trace = wait_for(lambda: c.store.trace_count() and c.store.get_trace(tid))
    assert time.monotonic() - sent >= 0.8
    assert not trace.complete and trace.problems
    assert any("root" in p for p in trace.problems)
    assert _rebuilt(c, "incomplete") == 1


def test_orphan_parent_is_marked_incomplete(make_collector):
    c = make_collector(quiet_period_s=0.1)
    req, (tid,) = vauban_request(1, salt=52)
    spans = req.resource_spans[0].scope_spans[0].spans
    spans.add(trace_id=trace_id_of(0, 52), span_id=b"\x09" * 8, parent_span_id=b"\x08" * 8, name="orphan",
              start_time_unix_nano=1, end_time_unix_nano=2)
    post(c.http_address, req.SerializeToString())
    trace = wait_for(lambda: c.store.trace_count() and c.store.get_trace(tid))
    assert not trace.complete and any("0808080808080808" in p for p in trace.problems)


def test_late_span_reopens_and_rebuilds(make_collector):
    c = make_collector(quiet_period_s=0.1)
    req, (tid,) = vauban_request(1, salt=53)
    post(c.http_address, req.SerializeToString())
    first = wait_for(lambda: c.store.trace_count() and c.store.get_trace(tid))
    late = ExportTraceServiceRequest()
    late.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace_id_of(0, 53), span_id=b"\x07" * 8, parent_span_id=span_id_of(trace_id_of(0, 53), 0),
        name="late", start_time_unix_nano=1_700_000_000_000_100_000, end_time_unix_nano=1_700_000_000_000_200_000,
    )
    post(c.http_address, late.SerializeToString())
    second = wait_for(lambda: len(c.store.get_trace(tid).spans) == len(first.spans) + 1 and c.store.get_trace(tid))
    assert second.complete and "0707070707070707" in {s.id for s in second.spans}
    assert _rebuilt(c, "complete") == 2
    wait_for(lambda: not c.store.pending_traces())


def test_pending_work_is_found_in_the_store_on_startup(make_collector, tmp_path):
    store_dir = tmp_path / "store"
    with TraceStore(store_dir) as ts:  # spans stored by a collector that died before assembling
        req, tids = vauban_request(3, salt=54)
        ts.add_spans(req)
        assert len(ts.pending_traces()) == ts.pending_count() == 3
    c = make_collector(store_dir=store_dir, quiet_period_s=0.0)
    wait_for(lambda: c.store.trace_count() == 3)
    assert all(c.store.get_trace(t).complete for t in tids)
    assert not c.store.pending_traces()


def test_stage_metrics_are_observed_once_per_span(make_collector):
    c = make_collector(quiet_period_s=0.05)
    req = ExportTraceServiceRequest()
    add_vauban_trace(req, trace_id_of(0, 55), stages=4, model="m1", sweep=("token_count", 128))
    add_vauban_trace(req, trace_id_of(1, 55), stages=4, model="m1", sweep=("token_count", 128), sync_points=False)
    post(c.http_address, req.SerializeToString())
    wait_for(lambda: c.store.trace_count() == 2)
    # a duplicate delivery plus a late span rebuilds one trace again: no double counting
    post(c.http_address, req.SerializeToString())
    late = ExportTraceServiceRequest()
    add_vauban_trace(late, trace_id_of(0, 55), stages=5, model="m1", sweep=("token_count", 128))
    post(c.http_address, late.SerializeToString())
    wait_for(lambda: c.metrics.traces_rebuilt.labels("complete")._value.get() == 3 and not c.store.pending_traces())
    reg = c.metrics.registry
    labels = {"stage": "tokenize", "model": "m1", "sweep_axis": "token_count", "sweep_value": "128"}
    assert reg.get_sample_value("vauban_stage_duration_seconds_count", labels) == 2
    assert reg.get_sample_value("vauban_stage_duration_seconds_count", {**labels, "stage": "emit"}) == 1
    # sync points: only the trace whose counter was measured (the other says "unavailable")
    assert reg.get_sample_value("vauban_stage_sync_points_count", labels) == 1
    assert reg.get_sample_value("vauban_stage_sync_points_sum", labels) == 1
    assert reg.get_sample_value("vauban_stage_bytes_sum", {**labels, "direction": "in"}) == 2 * 4096
    assert reg.get_sample_value("vauban_stage_bytes_sum", {**labels, "direction": "out"}) == 2 * 8192
    # 10 from the re-delivery, 4 unchanged stage spans in the late batch (its root ends later: replaced)
    assert reg.get_sample_value("vauban_collector_spans_duplicated_total") == 10 + 4


def test_sigterm_finishes_with_a_final_assembly_pass(collector_process, tmp_path):
    proc = collector_process(extra=["--quiet-period", "60s"]).start()
    req, tids = vauban_request(2, salt=56)
    assert post(("127.0.0.1", proc.http_port), req.SerializeToString())[0] == 200
    code, out = proc.terminate()
    assert code == 0, out
    assert "stopped" in out
    with TraceStore(tmp_path / "store") as ts:
        assert ts.trace_count() == 2 and not ts.pending_traces()
        assert all(ts.get_trace(t).complete for t in tids)


def test_assembly_backlog_bound_refuses_new_requests(make_collector):
    c = make_collector(quiet_period_s=60, incomplete_after_s=60, max_pending_traces=2)
    req, _ = vauban_request(3, salt=57)
    assert post(c.http_address, req.SerializeToString())[0] == 200
    wait_for(lambda: c.admission.backlog == 3)
    assert c.metrics.pending_traces._value.get() == 3
    status, headers, _ = post(c.http_address, vauban_request(1, salt=58)[0].SerializeToString())
    assert status == 503 and headers["retry-after"] == "1"
    c.admission.max_backlog = 10  # once the backlog is under the bound again, requests flow
    assert post(c.http_address, vauban_request(1, salt=58)[0].SerializeToString())[0] == 200



def test_stage_histograms_wait_for_the_root_labels(make_collector) -> None:
    """A trace rebuilt incomplete (root not there yet) is observed only once its root arrives,
    under the root's model label, never under an empty one."""
    c = make_collector(quiet_period_s=0.1, incomplete_after_s=0.2)
    tid = trace_id_of(9001)
    full = ExportTraceServiceRequest()
    add_vauban_trace(full, tid, model="late-root-model")
    spans = list(full.resource_spans[0].scope_spans[0].spans)

    def only(keep) -> bytes:
        req = ExportTraceServiceRequest()
        req.CopyFrom(full)
        del req.resource_spans[0].scope_spans[0].spans[:]
        req.resource_spans[0].scope_spans[0].spans.extend(s for s in spans if keep(s))
        return req.SerializeToString()

    def stage_counts() -> list:
        reg = c.metrics.registry
        return [x for m in reg.collect() for x in m.samples if x.name == "vauban_stage_duration_seconds_count"]

    assert post(c.http_address, only(lambda s: s.parent_span_id))[0] == 200
    trace = wait_for(lambda: not c.store.pending_traces() and c.store.trace_count() and c.store.get_trace(tid.hex()))
    assert not trace.complete
    assert stage_counts() == []

    assert post(c.http_address, only(lambda s: not s.parent_span_id))[0] == 200
    wait_for(lambda: not c.store.pending_traces() and c.store.get_trace(tid.hex()).complete)
    counted = stage_counts()
    assert len(counted) == 4 and all(x.labels["model"] == "late-root-model" and x.value == 1 for x in counted)
