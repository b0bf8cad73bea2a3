"""The collector's C fast paths change nothing but speed: the same stored raw spans, Trace JSON,
index and metrics as the pure-Python paths, and bodies the splitter declines still work."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import post, vauban_request, wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.collector import Collector, CollectorConfig
from vauban_trace.rebuild import native_available, rebuild_traces
from vauban_trace.rebuild._documents import set_native
from vauban_trace.store import _split as split_module
from vauban_trace.store import cut_request

needs_native = pytest.mark.skipif(
    not (native_available() and split_module.native_available()), reason="the C accelerators are not built"
)


def _run(store_dir: Path, bodies: list[bytes], n_traces: int) -> dict[str, Any]:
    """Post ``bodies`` to a fresh collector; its stored spans, traces, index and stage metrics."""
    cfg = CollectorConfig(store_dir=store_dir, http=("127.0.0.1", 0), grpc=None, metrics=None,
                          quiet_period_s=0.0, incomplete_after_s=1.0, assemble_interval_s=0.02)
    c = Collector(cfg).start()
    try:
        assert c.http_address is not None
        for body in bodies:
            assert post(c.http_address, body)[0] == 200
        wait_for(lambda: c.store.trace_count() == n_traces and not c.store.pending_traces())
        ids = sorted(s.trace_id for s in c.store.list_traces(limit=None))
        metrics = sorted(
            (m.name, tuple(sorted(s.labels.items())), s.value)
            for m in c.metrics.registry.collect() if m.name.startswith("vauban_stage")
            for s in m.samples if not s.name.endswith("_created")  # creation times differ
        )
        return {
            "raw": {t: c.store.spans_for_bytes(t) for t in ids},
            "json": {t: c.store.get_trace(t).to_json() for t in ids},
            "index": sorted(c.store.list_traces(limit=None), key=lambda s: s.trace_id),
            "metrics": metrics,
        }
    finally:
        c.stop(timeout=5)


@needs_native
def test_native_and_python_collectors_store_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = [vauban_request(4, salt=400 + i)[0].SerializeToString() for i in range(3)]
    assert all(cut_request(b) is not None for b in bodies)  # the fast path is really taken
    native = _run(tmp_path / "native", bodies, 12)
    previous = set_native(False)
    monkeypatch.setattr(split_module, "_native", None)
    try:
        python = _run(tmp_path / "python", bodies, 12)
    finally:
        set_native(previous)
    assert native["raw"] == python["raw"]
    assert native["json"] == python["json"]
    assert native["index"] == python["index"]
    # the same series and counts; a histogram's sum adds its values in assembly order, which
    # depends on how the traces fell into passes: equal up to float rounding, not bit for bit
    assert [m[:2] for m in native["metrics"]] == [m[:2] for m in python["metrics"]] and native["metrics"]
    for (name, labels, a), (_, _, b) in zip(native["metrics"], python["metrics"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0), (name, labels, a, b)
    for tid, raw in native["raw"].items():  # and both equal the reference rebuild of the stored spans
        assert native["json"][tid] == rebuild_traces(raw)[0].to_json()


def test_a_body_the_splitter_declines_is_decoded_and_stored(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0)
    req, tids = vauban_request(2, salt=420)
    # an unknown top-level field: valid protobuf (upb keeps it), not the canonical form the
    # splitter slices, so the receiver decodes the body instead
    body = req.SerializeToString() + b"\xa0\x06\x01"
    assert cut_request(body) is None
    assert list(ExportTraceServiceRequest.FromString(body).resource_spans) == list(req.resource_spans)
    assert post(c.http_address, body)[0] == 200
    wait_for(lambda: c.store.trace_count() == 2)
    for tid in tids:
        assert c.store.get_trace(tid) == rebuild_traces(c.store.spans_for(tid))[0]
        assert c.store.get_trace(tid).complete


def test_trace_files_policy_flag(tmp_path: Path) -> None:
    from vauban_trace._exceptions import ConfigurationError
    from vauban_trace.cli import build_parser
    from vauban_trace.cli._collector import build_config

    args = build_parser().parse_args(["collector", "--store", str(tmp_path), "--trace-files", "eager"])
    assert build_config(args).trace_files == "eager"
    args = build_parser().parse_args(["collector", "--store", str(tmp_path)])
    assert build_config(args).trace_files == "on_read"
    with pytest.raises(ConfigurationError, match="trace files"):
        CollectorConfig(trace_files="sometimes")  # type: ignore[arg-type]


def test_eager_trace_files_are_written_at_rebuild(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0, trace_files="eager")
    req, tids = vauban_request(2, salt=430)
    assert post(c.http_address, req.SerializeToString())[0] == 200
    wait_for(lambda: c.store.trace_count() == 2)
    for tid in tids:
        path = c.store.trace_json_path(tid)
        assert path.is_file() and path.read_text() == c.store.get_trace(tid).to_json()
