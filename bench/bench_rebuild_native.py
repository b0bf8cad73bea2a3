"""Cost per span of turning ONE trace's OTLP protobuf into its stored Trace JSON: the Python
rebuild (``rebuild_traces`` + ``to_json``) against the native accelerator (``_crebuild``).

Workloads (each a list of serialized one-trace requests, as the collector stores them):

* ``collector``: the collector benchmark's batches (``make_batch`` of bench/bench_collector.py)
  split per trace: 16 spans per trace, counters with provenance, one artifact event per stage;
* ``artifacts``: SDK traces with many artifact events (``workload`` of bench/bench_rebuild.py:
  ``--stages`` stage spans x ``--artifacts`` artifact events each).

Per workload and road, the median over ``--repeat`` interleaved runs of the CPU time
(``time.process_time``) of the whole list, in microseconds per span:

* ``python``: ``rebuild_traces(data)`` then ``to_json()`` of each trace;
* ``python docs``: ``python_documents(data)`` (the fallback of ``rebuild_documents``, with the
  summary fields);
* ``native``: ``_crebuild.rebuild_one(data)`` alone;
* ``rebuild_documents``: the public call (native road + TraceDocument wrapping);
* ``native (baseline)``, with ``--baseline PATH``: ``rebuild_one`` of another build of the
  extension (e.g. one compiled from an earlier commit), timed in the same interleaved runs, so
  that a change to the C code is measured against its predecessor on the same machine and load.

Before timing, every document of the native road is checked byte for byte against the Python
road (a mismatch aborts the benchmark)::

    python bench/bench_rebuild_native.py [--batches 4] [--traces 32] [--stages 8] [--artifacts 16]
        [--baseline OLD_crebuild.so] [--write-docs]

``--write-docs`` replaces the "Native rebuild" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collector import make_batch  # noqa: E402
from bench_rebuild import workload  # noqa: E402

from vauban_trace.rebuild import _documents as documents  # noqa: E402
from vauban_trace.rebuild import native_available, rebuild_documents, rebuild_traces  # noqa: E402
from vauban_trace.store._ingest import SpanRow, extract_rows, snapshot_bytes  # noqa: E402


def split_per_trace(data: bytes) -> list[bytes]:
    """One serialized TracesData per trace id, exactly as the collector hands a new trace to the
    rebuild (the store's rows of the request, regrouped by ``snapshot_bytes``)."""
    rows = extract_rows(ExportTraceServiceRequest.FromString(data).resource_spans)[0]
    by_trace: dict[str, list[SpanRow]] = {}
    for row in rows:
        by_trace.setdefault(row.trace_id, []).append(row)
    return [snapshot_bytes(group) for group in by_trace.values()]


def span_count(parts: list[bytes]) -> int:
    return sum(len(ss.spans) for p in parts for rs in ExportTraceServiceRequest.FromString(p).resource_spans
               for ss in rs.scope_spans)


def _cpu(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def load_baseline(path: Path) -> Any:
    """Another build of the _crebuild extension, loaded beside the installed one and configured
    the same way (its own module object: the two do not share state)."""
    name = "vauban_bench_baseline._crebuild"  # the init function is named after the last part
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    if spec is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.configure(documents._config())
    return module


def roads(parts: list[bytes], baseline: Any = None) -> dict[str, Callable[[], Any]]:
    native = documents._NATIVE

    def python() -> None:
        for p in parts:
            for t in rebuild_traces(p):
                t.to_json()

    def python_docs() -> None:
        for p in parts:
            documents.python_documents(p)

    def c_only() -> None:
        for p in parts:
            native.rebuild_one(p)

    def public() -> None:
        for p in parts:
            rebuild_documents(p)

    fns: dict[str, Callable[[], Any]] = {"python": python, "python docs": python_docs, "native": c_only}
    if baseline is not None:
        def c_baseline() -> None:
            for p in parts:
                baseline.rebuild_one(p)

        fns["native (baseline)"] = c_baseline
    fns["rebuild_documents"] = public
    return fns


def verify(parts: list[bytes], baseline: Any = None) -> None:
    for p in parts:
        doc = rebuild_documents(p)[0]
        if not doc.native:
            raise SystemExit("a workload trace did not take the native road")
        ref = documents.python_documents(p)[0]
        if doc.json != ref.json or doc.stages != ref.stages or doc.root_labels != ref.root_labels:
            raise SystemExit("native and Python documents differ")
        if baseline is not None and baseline.rebuild_one(p) != documents._NATIVE.rebuild_one(p):
            raise SystemExit("the baseline build and the installed one give different results")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=4, help="collector batches (32 traces of 16 spans each)")
    ap.add_argument("--traces", type=int, default=32, help="artifact-heavy traces")
    ap.add_argument("--stages", type=int, default=8)
    ap.add_argument("--artifacts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--baseline", type=Path, help="another build of the _crebuild extension (.so) to time beside it")
    ap.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    args = ap.parse_args()
    if not native_available():
        raise SystemExit("the _crebuild extension is not built (python setup.py build_ext --inplace)")
    baseline = load_baseline(args.baseline) if args.baseline is not None else None
    workloads = {
        "collector": [p for i in range(args.batches) for p in split_per_trace(make_batch(i))],
        "artifacts": split_per_trace(workload(args.traces, args.stages, args.artifacts).SerializeToString()),
    }
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"CPU time, median of {args.repeat}")
    print(f"{'workload':<10} {'spans':>6} {'road':<18} {'us/span':>9} {'spans/s':>10} {'speed-up':>9}")
    table: list[str] = []
    versus: list[str] = []
    for name, parts in workloads.items():
        verify(parts, baseline)
        n = span_count(parts)
        fns = roads(parts, baseline)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeat):
            for k, fn in fns.items():
                times[k].append(_cpu(fn))
        base = statistics.median(times["python"])
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:<10} {n:>6} {k:<18} {med / n * 1e6:>9.2f} {n / med:>10,.0f} {base / med:>8.1f}x")
            table.append(f"| {name} | {n:,} | {k} | {med / n * 1e6:.2f} | {n / med:,.0f} | {base / med:.1f}x |")
        if baseline is not None:
            ratio = statistics.median(times["native (baseline)"]) / statistics.median(times["native"])
            print(f"{name:<10} native vs baseline: {ratio:.2f}x faster")
            versus.append(f"`{name}` {ratio:.2f}x")
    if args.write_docs:
        from benchdoc import cpu_model, replace_section

        replace_section(SECTION, "\n".join([
            SECTION, "",
            f"Command: `python bench/bench_rebuild_native.py --batches {args.batches} --traces {args.traces} "
            f"--stages {args.stages} --artifacts {args.artifacts} --repeat {args.repeat}"
            f"{' --baseline OLD_crebuild.so' if baseline is not None else ''} --write-docs`", "",
            f"Machine: `uname -m` = {platform.machine()}, CPU: {cpu_model()}; Python {platform.python_version()}", "",
            "One trace's serialized OTLP protobuf to its stored Trace JSON, CPU time per span (median of "
            f"{args.repeat} interleaved runs). `python`: `rebuild_traces` + `to_json` (the reference); "
            "`python docs`: the same plus the summary fields (the fallback of `rebuild_documents`); `native`: "
            "the C accelerator alone; `rebuild_documents`: the public call. Every native document was first "
            "checked byte for byte against the Python one. `collector`: the collector benchmark's traces "
            "(16 spans, counters with provenance, one artifact event per stage); `artifacts`: "
            f"{args.stages} stage spans x {args.artifacts} artifact events per trace.", "",
            *([f"`native (baseline)`: the same C road from another build of the extension ({args.baseline.name}, "
               f"see below), in the same interleaved runs; native vs baseline: {', '.join(versus)}.", ""]
              if baseline is not None else []),
            "| workload | spans | road | µs/span | spans/s | speed-up vs python |",
            "|---|---|---|---|---|---|",
            *table, "",
            *([NOTES] if NOTES else []),
        ]))


SECTION = "## Native rebuild (rebuild_documents)"

# Kept under the table by --write-docs: where the baseline comes from, and the history.
NOTES = (
    "Baseline: the extension as it was before the speed work (commit cd364f1): `git archive cd364f1 setup.py "
    "pyproject.toml README.md src/vauban_trace/rebuild/_crebuild_src src/vauban_trace/store/_cwire_src | tar -x "
    "-C /tmp/base`, then `python setup.py build_ext --inplace` there; its .so is the `--baseline`. Measured alone "
    "at the start of that work (same command without `--baseline`, same machine), `native` took 4.80 µs/span "
    "(collector) and 24.51 µs/span (artifacts). The speed-up came from: output buffers kept between calls and the "
    "Trace JSON copied once, into the str; attribute names looked up in a table of cache-line slots holding the "
    "name (a hash of three words of it); the vocabulary's keys and words (counter names, provenance, levels, "
    "kinds) escaped once by `configure`, and runs of absent counters copied as one piece; doubles that are short "
    "decimals written without dtoa, with exactly `repr`'s text (checked against `repr` on 2 x 10^8 doubles); "
    "whole-word escape, UTF-8 and hex-digest checks; short fields of the wire read on a short road; "
    "StageObservation slots filled directly. Same documents and same fallbacks (the differential tests and a "
    "fuzz of old against new build)."
    "\n\n"
    'Second pass (repeated spans; baseline: the build of commit c138012, loaded with `--baseline` in the same'
    ' interleaved runs, 7 repeats): `native` `collector` 2.07 -> 1.48 µs/span (1.40x), `artifacts` 10.25 -> '
    '7.73 µs/span (1.33x). The spans of a trace repeat one another, and the reader uses it: a KeyValue whose '
    "bytes are those of the attribute at the same position of the previous span's (or event's) list is that "
    'attribute again (copied, neither parsed nor validated again), one with the same key bytes takes its name'
    " id without the name table, and a list with the previous list's keys skips the duplicate-key check; "
    'string values found JSON-plain while their UTF-8 is checked are written without a second scan; the name '
    'table shrank to 8-byte entries (2 KiB, it stays in L1); stage names, provenance words and service / '
    'model names come from a small cache of str objects (fewer allocations, and their hashes are kept for the'
    " stage histograms' dicts); integers are written straight into the buffer; `put` and the buffer check are"
    ' always inlined, the growth path is not; the stages tuple is made from an array and not tracked by the '
    'garbage collector; the last few large int objects of the summary are kept (byte counts repeat within a '
    "trace); an attribute's int and double share their storage (an attribute is one cache line). Same "
    'documents and same fallbacks: the differential tests, and a fuzz of the old build against the new one '
    '(390,000 mutated traces, 90,000 of them on the final build, half of the edits aimed at the repeated-list'
    ' shortcuts, plus 30% byte-corrupted copies; 2.7 x 10^6 doubles).'
    "\n\n"
    "Why the collector's step breakdown (`bench/collector_steps.py`, 16 batches) showed ~3.3 µs/span for the "
    'same road: it rebuilds 512 traces while keeping all 512 documents alive (12 MB of new Trace JSON strs), '
    "so every str lands on fresh heap pages (page faults: glibc gave the previous run's memory back) and the "
    'allocations make a full garbage collection due; the input shape is the same (the snapshot bytes equal '
    "this bench's, byte for byte), and the Python wrapper adds nothing measurable. How many documents live at"
    " once is what matters (this bench's loop, documents kept per group, after this pass): 1.58 µs/span for "
    "groups of 32 (what one 512-span request gives the assembler), ~2.1 for 256 (the assembler's largest "
    'batch, when it has a backlog), 1.85 for 256 with `MALLOC_TRIM_THRESHOLD_=268435456` in the environment '
    '(glibc then keeps the freed pages). Measured in the step breakdown (5 interleaved runs, median): rebuild'
    " 3.25 -> 2.45 µs/span; the whole collector (the session's end-to-end run, 6 interleaved runs, median) "
    '10.26 -> 9.28 CPU µs/span (97,000 -> 108,000 spans per CPU-second).'
)


if __name__ == "__main__":
    main()
