"""Quick probes of the collector's cost per span, for before/after comparisons while tuning it.

Two modes (``python bench/collector_probe.py steps|e2e [options]``), both printing CPU
microseconds per span; run the old and the new tree alternately (``PYTHONPATH=OLD/src`` for the
old one, with its own C extensions built in place) and compare medians:

- ``steps``: the pipeline's steps in this process, as the collector does them: ``cut_request`` of
  each body, ``TraceStore.ingest_parts([cut], snapshots=True)`` per request, ``SpanSnapshot.data()``
  of every pending trace, ``rebuild_documents``, ``put_documents`` per 32 traces (``durable=False``,
  as the assembler commits). ``--repeat N`` repeats the cut and the rebuild N times (their figure
  is the mean), for profiling them under ``perf record``. ``--malloc`` applies the ``mallopt``
  settings ``vauban-trace collector`` makes first.
- ``e2e``: ``vauban-trace collector`` in a subprocess pinned to core 0 (quiet period 0 s), fed
  ``--requests`` OTLP/HTTP protobuf requests of 512 spans over one connection after 4 warm-up
  ones; the clock stops when every trace is rebuilt (``bench_collector.end_to_end``). Prints the wall rate, the rate per collector
  CPU-second and CPU µs per span. ``--perf FILE`` records the collector with ``perf record -g``
  meanwhile.

The payloads are the collector benchmark's (``collector_payloads.make_batch``); the full benchmark
with its documented figures is ``bench/bench_collector.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_collector import end_to_end
from collector_payloads import SPANS_PER_TRACE, TRACES_PER_BATCH, make_batch

SPANS_PER_REQUEST = TRACES_PER_BATCH * SPANS_PER_TRACE


def steps(requests: int, repeat: int, malloc: bool) -> dict[str, float]:
    """CPU µs per span of cut, durable write, snapshot, rebuild and put (see the module doc)."""
    from vauban_trace.rebuild import rebuild_documents
    from vauban_trace.store import TraceStore, cut_request

    if malloc:
        from vauban_trace.cli._collector import _tune_malloc

        _tune_malloc()
    payloads = [make_batch(5_000_000 + i) for i in range(requests)]
    n = len(payloads) * SPANS_PER_REQUEST
    clock = time.process_time
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vauban-probe-") as tmp:
        store = TraceStore(Path(tmp) / "store", trace_files="on_read")
        t = clock()
        for _ in range(repeat):
            parts = [cut_request(body) for body in payloads]
        out["cut"] = (clock() - t) / repeat
        snapshots: dict[str, object] = {}
        t = clock()
        for part in parts:
            snapshots.update(store.ingest_parts([part], snapshots=True).snapshots)
        out["durable"] = clock() - t
        pending = store.pending_versions()
        t = clock()
        datas = [snapshots[tid].data() for tid, _version in pending]  # type: ignore[attr-defined]
        out["snapshot"] = clock() - t
        t = clock()
        for _ in range(repeat):
            docs = [rebuild_documents(d)[0] for d in datas]
        out["rebuild"] = (clock() - t) / repeat
        items = [(doc, version) for doc, (_tid, version) in zip(docs, pending, strict=True)]
        t = clock()
        for k in range(0, len(items), TRACES_PER_BATCH):
            store.put_documents(items[k:k + TRACES_PER_BATCH], sync_files=False, durable=False)
        out["put"] = clock() - t
        store.close()
    return {k: v / n * 1e6 for k, v in out.items()}


def e2e(requests: int, perf: str | None) -> tuple[float, float]:
    """(rebuilt spans/s wall, CPU µs per span of the collector process); see the module doc."""
    payloads = [make_batch(1000 + i) for i in range(requests)]
    warm = [make_batch(9000 + i) for i in range(4)]
    with tempfile.TemporaryDirectory(prefix="vauban-probe-") as tmp:
        got = end_to_end(payloads, warm, 0, Path(tmp) / "store", perf=perf)
    return got["rebuilt"], got["cpu_s"] / (len(payloads) * SPANS_PER_REQUEST) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("steps", help="the pipeline's steps in this process")
    s.add_argument("--requests", type=int, default=16)
    s.add_argument("--repeat", type=int, default=1)
    s.add_argument("--malloc", action="store_true", help="the collector's mallopt settings first")
    e = sub.add_parser("e2e", help="a collector subprocess on core 0")
    e.add_argument("--requests", type=int, default=60)
    e.add_argument("--perf", default=None, metavar="FILE", help="perf record the collector into FILE")
    args = ap.parse_args()
    if args.mode == "steps":
        print(" ".join(f"{k} {v:.2f}" for k, v in steps(args.requests, max(1, args.repeat), args.malloc).items()))
    else:
        rate, per_span = e2e(args.requests, args.perf)
        print(f"rebuilt {rate:,.0f}/s wall, {1e6 / per_span:,.0f}/CPU-s, {per_span:.2f} cpu us/span")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
