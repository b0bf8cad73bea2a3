"""The collector benchmark's per-step costs and floors, measured in this process.

:func:`breakdown` times each step of the collector's pipeline alone (CPU µs per span, with the C
accelerators, or the Python reference paths under ``VAUBAN_TRACE_NO_NATIVE=1``:
:func:`python_breakdown` runs it in a subprocess so); :func:`floors` times the cheapest durable
writes any design needs; :func:`floor_text` and :func:`why_text` write the paragraphs of the
"Collector ingest" section that explain the figures. Used by bench/bench_collector.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector_payloads import SPANS_PER_TRACE, TRACES_PER_BATCH, make_batch
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.store import TraceStore

CUT = "receiver: cut the body into the store's rows (C splitter; no protobuf decode)"
DECODE = "  fallback when the splitter declines: decode protobuf (FromString)"
CHECKS = "  fallback: id/time checks (collector)"
EXTRACT = "  fallback: extract_rows (rows from the decoded request)"
DURABLE = ("TraceStore.ingest_parts of the cut rows (durable write: span batches appended to a span segment + "
           "fdatasync, a row per trace + commit)")
SPANS_STEP = "spans for the rebuild (new trace: in-memory snapshot)"
REBUILD = "rebuild_documents (rebuild + Trace JSON + summary)"
METRICS = "stage histograms (collector: values grouped per assembly pass, folded per series before scrapes)"
PUT = "TraceStore.put_documents (Trace JSON appended to a segment + rows, committed as the assembler does; files on read)"
FILES = "traces/<id>.json files with --trace-files eager (median of 3 rounds)"
READ_BACK = "TraceStore.spans_for_bytes (read back, digest-checked: late spans, after a restart)"
PIPELINE = (CUT, DURABLE, SPANS_STEP, REBUILD, METRICS, PUT)
FALLBACK = (DECODE, CHECKS, EXTRACT)


def breakdown(batches: int = 8) -> dict[str, float]:
    """CPU microseconds per span of each step of the pipeline, measured in this process (with
    ``VAUBAN_TRACE_NO_NATIVE=1`` in the environment: the pure-Python paths). ``native share``:
    the fraction of traces the C rebuild produced."""
    from vauban_trace.collector import CollectorMetrics
    from vauban_trace.collector._codec import drop_invalid_spans
    from vauban_trace.rebuild import rebuild_documents
    from vauban_trace.store import CutRequest, cut_request
    from vauban_trace.store._documents import _write_atomic
    from vauban_trace.store._ingest import extract_rows

    payloads = [make_batch(5_000_000 + i) for i in range(batches)]
    n = batches * TRACES_PER_BATCH * SPANS_PER_TRACE
    out: dict[str, float] = {}
    clock = time.process_time
    with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
        store = TraceStore(Path(tmp) / "store", trace_files="on_read")
        t = clock()
        reqs = [ExportTraceServiceRequest.FromString(p) for p in payloads]
        out[DECODE] = clock() - t
        t = clock()
        for r in reqs:
            drop_invalid_spans(r)
        out[CHECKS] = clock() - t
        t = clock()
        for r in reqs:
            extract_rows(r.resource_spans)
        out[EXTRACT] = clock() - t
        t = clock()
        # what the receiver does with a protobuf body (ingest_protobuf): the C splitter, else the
        # decode + checks + extract_rows path (then counted here too)
        parts: list[Any] = []
        for body in payloads:
            cut = cut_request(body)
            if cut is None:
                request = ExportTraceServiceRequest.FromString(body)
                drop_invalid_spans(request)
                cut = CutRequest(extract_rows(request.resource_spans)[0])
            parts.append(cut)
        out[CUT] = clock() - t
        snapshots: dict[str, Any] = {}
        t = clock()
        for part in parts:  # the writer: one transaction per request (a lone client gets no group commit)
            snapshots.update(store.ingest_parts([part], snapshots=True).snapshots)
        out[DURABLE] = clock() - t
        pending = store.pending_traces()
        t = clock()
        datas = [snapshots[p.trace_id].data() for p in pending]
        out[SPANS_STEP] = clock() - t
        t = clock()
        docs = [rebuild_documents(d)[0] for d in datas]
        out[REBUILD] = clock() - t
        metrics = CollectorMetrics()
        # a running collector created its series (one histogram child per label set) long ago: warm
        # them with the same label sets under other trace ids, then time the steady state
        metrics.observe_documents([dataclasses.replace(d, trace_id="w" + d.trace_id[1:]) for d in docs])
        metrics.flush()
        t = clock()
        for k in range(0, len(docs), TRACES_PER_BATCH):  # one call per assembly pass, as the assembler does
            metrics.observe_documents(docs[k:k + TRACES_PER_BATCH])
        metrics.flush()  # and the fold into the histograms (done before each scrape, or when values pile up)
        out[METRICS] = clock() - t
        t = clock()
        # as the assembler commits (durable=False: the raw spans are the durable copy), one call per
        # request's traces (an assembly pass under load)
        items = [(doc, p.version) for doc, p in zip(docs, pending, strict=True)]
        for k in range(0, len(items), TRACES_PER_BATCH):
            store.put_documents(items[k:k + TRACES_PER_BATCH], sync_files=False, durable=False)
        out[PUT] = clock() - t
        rounds = []
        for k in range(3):  # file creation cost swings several-fold on this VM: median of 3 rounds
            t = clock()
            for doc in docs:
                _write_atomic(store.dir / f"scratch{k}" / f"{doc.trace_id}.json", doc.json, sync=False)
            rounds.append(clock() - t)
        out[FILES] = statistics.median(rounds)
        t = clock()
        for p in pending:
            store.spans_for_bytes(p.trace_id)
        out[READ_BACK] = clock() - t
        store.close()
    steps = {k: v / n * 1e6 for k, v in out.items()}
    steps["native share"] = sum(doc.native for doc in docs) / len(docs)
    return steps


def floors(batches: int = 16) -> dict[str, float]:
    """Per span, the CPU µs (``cpu``) and wall µs (``wall``) of the cheapest durable writes any
    collector design needs: each request body appended to one file and ``fdatasync``'d (raw spans
    durable, no index), and the Trace JSON of the same traces appended and synced likewise (the
    rebuilt traces durable, no index). With the receiver and the C rebuild they bound what an
    ideal storage layer would leave of the pipeline (``_why``)."""
    from vauban_trace.rebuild import rebuild_documents
    from vauban_trace.store import cut_request
    from vauban_trace.store._ingest import snapshot_bytes

    payloads = [make_batch(6_000_000 + i) for i in range(batches)]
    texts = []
    for body in payloads:
        cut = cut_request(body)
        assert cut is not None
        by_trace: dict[str, list[Any]] = {}
        for row in cut.rows:
            by_trace.setdefault(row.trace_id, []).append(row)
        texts.append("".join(doc.json for rows in by_trace.values()
                             for doc in rebuild_documents(snapshot_bytes(rows))).encode())
    n = batches * TRACES_PER_BATCH * SPANS_PER_TRACE
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
        for name, chunks in (("raw", payloads), ("json", texts)):
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                cpu, wall = time.process_time(), time.perf_counter()
                for chunk in chunks:
                    os.write(fd, chunk)
                    os.fdatasync(fd)
                out[f"{name} cpu"] = (time.process_time() - cpu) / n * 1e6
                out[f"{name} wall"] = (time.perf_counter() - wall) / n * 1e6
            finally:
                os.close(fd)
    out["json bytes"] = sum(len(t) for t in texts) / n
    return out


def python_breakdown() -> dict[str, float]:
    """:func:`breakdown` with the C accelerators off (``VAUBAN_TRACE_NO_NATIVE=1``, a subprocess)."""
    prog = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "import collector_steps as b; print(json.dumps(b.breakdown()))")
    env = dict(os.environ, VAUBAN_TRACE_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", prog, str(Path(__file__).parent)], capture_output=True,
                         text=True, check=True, env=env)
    steps: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return steps


def floor_text(floor: dict[str, float], steps: dict[str, float], parse_rate: float, recv_cpu: float) -> str:
    """What an ideal storage layer would leave: measured floors, summed (not a projection of code
    that does not exist: each term is measured here, and the sum is a lower bound for this rebuild)."""
    recv_us = 1e6 / recv_cpu
    ideal = recv_us + floor["raw cpu"] + steps[REBUILD] + floor["json cpu"]
    budget = 2e6 / parse_rate
    left = budget - recv_us - floor["raw cpu"] - floor["json cpu"]
    need = (f"a rebuild (protobuf to Trace JSON) of at most {left:.2f} µs per span, {steps[REBUILD] / left:.1f}x "
            f"faster than the C rebuild measured here, before any index, metrics or bookkeeping"
            if left > 0 else "no time at all for the rebuild")
    return (
        f"Floors, measured in this run (CPU µs per span): the receiver alone (HTTP + C splitter, per CPU-second "
        f"above) {recv_us:.2f}; appending each request body to one file with `fdatasync` {floor['raw cpu']:.2f} "
        f"(wall {floor['raw wall']:.2f}); appending the Trace JSON ({floor['json bytes']:,.0f} bytes per span) "
        f"likewise {floor['json cpu']:.2f} (wall {floor['json wall']:.2f}); the C rebuild {steps[REBUILD]:.2f}. "
        f"A collector doing only these four (no index, no metrics, no bookkeeping) would need {ideal:.1f} µs "
        f"per span: {1e6 / ideal:,.0f} spans/s, {1e6 / ideal / parse_rate:.0%} of parse-only. The 50% target "
        f"leaves {budget:.2f} µs per span, so it needs {need}."
    )


def why_text(steps: dict[str, float], total: float, parse_rate: float, decode_rate: float, rebuilt: float,
         recv: float, cpu_rate: float) -> str:
    load = os.getloadavg()[0]
    budget = 2e6 / parse_rate
    verdict = "within" if steps[DURABLE] + steps[REBUILD] + steps[PUT] <= budget else "over"
    return (
        f"The steps add up to about {total:.0f} CPU µs per span, a ceiling of {1e6 / total:,.0f} spans/s on "
        f"one core; end to end the collector rebuilt {cpu_rate:,.0f} spans per CPU-second (HTTP handling, the "
        f"assembler's bookkeeping queries and the threads' hand-offs come on top of the steps). The 50% target "
        f"is measured against `FromString` at {1e6 / parse_rate:.1f} µs per span: half of that rate leaves "
        f"{budget:.1f} µs per span for everything, while the durable write of the raw spans costs "
        f"{steps[DURABLE]:.1f} µs, the C rebuild {steps[REBUILD]:.1f} µs and committing the Trace JSON "
        f"{steps[PUT]:.1f} µs ({verdict} that budget together); the receiver alone (HTTP + C splitter, no "
        f"decode) runs at {recv / parse_rate:.0%} of parse-only. Against decoding the spans into Python values "
        f"({decode_rate:,.0f} spans/s) the collector reaches {rebuilt / decode_rate:.0%}. 1-minute load average "
        f"at the end of the run: {load:.2f} (the machine is shared)."
    )
