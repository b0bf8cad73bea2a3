"""Collector ingest benchmark: spans rebuilt per second on one core vs. the parse-only limit.

What is measured (``python bench/bench_collector.py [--batches 60] [--write-docs]``):

1. **parse-only**: ``ExportTraceServiceRequest.FromString`` over the very payloads posted below,
   in this process pinned to one core: the floor cost of receiving OTLP protobuf in Python, the
   limit any Python collector can reach.
2. **end to end**: ``vauban-trace collector`` in a subprocess pinned to ONE core
   (``os.sched_setaffinity``), the client pinned to another. The client posts OTLP/HTTP protobuf
   batches of 512 realistic vauban spans (32 traces of a root + 15 stage spans carrying counters
   with provenance and an artifact event each) over one keep-alive connection; the clock stops
   when every trace has been rebuilt and stored (``TraceStore.trace_count``), so the rate covers
   receive + durable write + assembly (rebuild + put_trace). The ingest-only rate (time until the
   last 200) is reported too.

Targets: end-to-end >= 50% of parse-only and >= 20,000 spans/s on one core.

``--baseline DIR`` also measures the collector of an earlier source tree (``DIR/src``; its step
breakdown with ``DIR/bench``), its runs interleaved with those of this tree, so a before/after
comparison is made under the same machine load (the order alternates from run to run).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchdoc import cpu_model, replace_section
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from vauban_trace import semconv as sc
from vauban_trace.store import TraceStore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Collector ingest"
STAGES = ("tokenize", "prefill", "forward", "decode", "emit")
TRACES_PER_BATCH = 32
SPANS_PER_TRACE = 16  # root + 15 stages -> 512 spans per batch


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def make_batch(index: int) -> bytes:
    """512 spans: 32 vauban traces (root + 15 stage spans with counters and an artifact event)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "bench"), _kv("host.name", "bench-host")])
    ss = rs.scope_spans.add()
    ss.scope.name = "vauban_trace"
    ss.scope.version = "0.1.0"
    t0 = 1_700_000_000_000_000_000 + index * 10**9
    for t in range(TRACES_PER_BATCH):
        tid = hashlib.blake2b(f"bench:{index}:{t}".encode(), digest_size=16).digest()
        root_id = hashlib.blake2b(tid + b"root", digest_size=8).digest()
        root = ss.spans.add(trace_id=tid, span_id=root_id, name="text_completion tiny-llama", kind=1,
                            start_time_unix_nano=t0, end_time_unix_nano=t0 + 50_000_000)
        root.attributes.extend([
            _kv(sc.TRACE_ROOT, True), _kv(sc.GEN_AI_OPERATION_NAME, "text_completion"),
            _kv(sc.GEN_AI_REQUEST_MODEL, "tiny-llama"), _kv(sc.GEN_AI_PROVIDER_NAME, "huggingface.transformers"),
            _kv(sc.REQUEST_INPUT_TEXT, "The quick brown fox"), _kv(sc.SWEEP_AXIS, "token_count"),
            _kv(sc.SWEEP_AXIS_VALUE, 64 * (1 + t % 4)), _kv(sc.EXECUTOR_NAME, "torch"),
        ])
        for i in range(SPANS_PER_TRACE - 1):
            stage = STAGES[i % len(STAGES)]
            sid = hashlib.blake2b(tid + i.to_bytes(2, "big"), digest_size=8).digest()
            start = t0 + 1_000 + i * 3_000_000
            sp = ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=root_id, name=stage, kind=1,
                              start_time_unix_nano=start, end_time_unix_nano=start + 2_500_000)
            sp.attributes.extend([
                _kv(sc.STAGE, stage), _kv(sc.DEVICE_KIND, "cpu"), _kv(sc.DEVICE_LABEL, "cpu"),
                _kv(sc.usl("token_count"), 64), _kv(sc.usl_provenance("token_count"), "derived"),
                _kv(sc.usl("batch_size"), 1), _kv(sc.usl_provenance("batch_size"), "declared"),
                _kv(sc.usl("input_bytes"), 65536), _kv(sc.usl_provenance("input_bytes"), "derived"),
                _kv(sc.usl("output_bytes"), 131072), _kv(sc.usl_provenance("output_bytes"), "derived"),
                _kv(sc.usl("memory_bytes"), 1 << 20), _kv(sc.usl_provenance("memory_bytes"), "measured"),
                _kv(sc.MEMORY_METHOD, "cpu.rss_peak_delta"),
                _kv(sc.usl_provenance("sync_points"), "unavailable"),
            ])
            ev = sp.events.add(time_unix_nano=start + 2_000_000, name=sc.EVENT_ARTIFACT)
            ev.attributes.extend([
                _kv(sc.ARTIFACT_ID, f"{stage}-{i}"), _kv(sc.ARTIFACT_KIND, "activation"),
                _kv(sc.ARTIFACT_DIGEST, "blake3:" + hashlib.sha256(sid).hexdigest()),
                _kv(sc.ARTIFACT_URI, "file:///blobs/x"), _kv(sc.ARTIFACT_MEDIA_TYPE, "application/vnd.safetensors"),
                _kv(sc.ARTIFACT_DTYPE, "float32"), _kv(sc.ARTIFACT_BYTE_SIZE, 131072),
                _kv(sc.ARTIFACT_STAT_MEAN, 0.01), _kv(sc.ARTIFACT_STAT_STD, 1.02),
            ])
    data: bytes = req.SerializeToString()
    return data


def _pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def parse_only(payloads: list[bytes], repeat: int) -> float:
    """Spans/s of ExportTraceServiceRequest.FromString alone (median of ``repeat`` passes)."""
    spans = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in payloads:
            ExportTraceServiceRequest.FromString(p)
        rates.append(spans / (time.perf_counter() - t0))
    return statistics.median(rates)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end_to_end(payloads: list[bytes], warmup: list[bytes], core: int, store: Path,
               *, assemble: bool = True, code: Path | None = None) -> dict[str, float]:
    """Post ``payloads`` to a collector subprocess pinned to ``core``; with ``assemble`` False the
    quiet period is an hour, so only the durable ingest is measured. ``code``: run the collector
    of that source tree (``<code>/src``) instead of this one (the ``--baseline`` comparison)."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())", "collector",
           "--store", str(store), "--http", f"127.0.0.1:{port}", "--grpc", "off", "--metrics", "off",
           "--quiet-period", "0s" if assemble else "1h"]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: _pin(core), env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " store " in line:
                break
        else:
            raise RuntimeError("collector did not start")
        reader = TraceStore(store)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def send(batch: list[bytes]) -> None:
            for body in batch:
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"collector answered {resp.status}")

        def wait_rebuilt(n: int) -> None:
            while reader.trace_count() < n:
                time.sleep(0.002)

        send(warmup)
        if assemble:
            wait_rebuilt(len(warmup) * TRACES_PER_BATCH)
        cpu0 = _proc_cpu(proc.pid)
        t0 = time.perf_counter()
        send(payloads)
        t_ingest = time.perf_counter() - t0
        if assemble:
            wait_rebuilt((len(warmup) + len(payloads)) * TRACES_PER_BATCH)
        t_total = time.perf_counter() - t0
        cpu = _proc_cpu(proc.pid) - cpu0
        conn.close()
        reader.close()
    finally:
        if assemble:
            proc.terminate()
        else:
            proc.kill()  # skip the final assembly pass of an hour-long quiet period
        proc.wait(60)
    spans = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    return {"ingest": spans / t_ingest, "rebuilt": spans / t_total, "cpu_s": cpu, "wall_s": t_total}


class _NullStore:
    """Accepts spans and forgets them: isolates the receiver (HTTP, decode, checks, hand-off)."""

    def add_spans(self, request: object) -> tuple[int, int]:
        return 0, 0

    def pending_traces(self, *, limit: int | None = None) -> list[object]:
        return []

    def pending_count(self) -> int:
        return 0

    def close(self) -> None:
        pass


def serve_null(port: int) -> None:
    """``--serve-null PORT``: run the collector's receiver over a null store until SIGTERM."""
    import signal
    import threading

    from vauban_trace.cli._collector import _tune_malloc
    from vauban_trace.collector import Collector, CollectorConfig

    _tune_malloc()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    config = CollectorConfig(http=("127.0.0.1", port), grpc=None, metrics=None)
    with Collector(config, store=_NullStore()):  # type: ignore[arg-type]
        print("vauban-trace collector: store null", flush=True)
        stop.wait()


def receiver_only(payloads: list[bytes], core: int) -> tuple[float, float]:
    """Spans/s through the HTTP receiver alone (null store), collector pinned to ``core``:
    (wall-clock rate with one sequential client, rate per CPU-second of the collector)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-null", str(port)], stdout=subprocess.PIPE,
                            text=True, preexec_fn=lambda: _pin(core))
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in payloads[:4]:  # warm-up
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            conn.getresponse().read()
        cpu0 = _proc_cpu(proc.pid)
        t0 = time.perf_counter()
        for body in payloads:
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        elapsed = time.perf_counter() - t0
        cpu = _proc_cpu(proc.pid) - cpu0
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
    spans = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    return spans / elapsed, spans / max(cpu, 1e-9)


#: step names of the breakdown; READ_BACK is the fallback path, not on the way of a new trace
SPANS_STEP = "spans for the rebuild (new trace: in-memory snapshot)"
READ_BACK = "TraceStore.spans_for (read back: late spans, after a restart)"
FILES = "of which traces/<id>.json files (a new file per trace; median of 3 rounds)"
_OLD_NAMES = {"TraceStore.spans_for (read back)": SPANS_STEP}  # the same step before snapshots


def breakdown(batches: int = 8) -> dict[str, float]:
    """CPU microseconds per span of each step of the pipeline, measured in this process."""
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    from vauban_trace.collector import CollectorMetrics, root_attributes
    from vauban_trace.collector._codec import drop_invalid_spans
    from vauban_trace.rebuild import rebuild_traces

    payloads = [make_batch(5_000_000 + i) for i in range(batches)]
    n = batches * TRACES_PER_BATCH * SPANS_PER_TRACE
    out: dict[str, float] = {}
    clock = time.process_time
    with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
        store = TraceStore(Path(tmp) / "store")
        t = clock()
        reqs = [ExportTraceServiceRequest.FromString(p) for p in payloads]
        out["decode protobuf (FromString)"] = clock() - t
        t = clock()
        for r in reqs:
            drop_invalid_spans(r)
        out["id/time checks (collector)"] = clock() - t
        snapshots: dict[str, Any] = {}
        t = clock()
        for r in reqs:  # what the collector's writer calls: add_spans + snapshots of new traces
            snapshots.update(store.ingest(r, snapshots=True).snapshots)
        out["TraceStore.add_spans (durable write)"] = clock() - t
        pending = store.pending_traces()
        t = clock()
        datas = [TracesData.FromString(snapshots[p.trace_id].data()) for p in pending]
        out[SPANS_STEP] = clock() - t
        t = clock()
        traces = [rebuild_traces(d)[0] for d in datas]
        out["rebuild_traces"] = clock() - t
        metrics = CollectorMetrics()
        t = clock()
        for tr, d in zip(traces, datas, strict=True):
            metrics.observe_trace(tr, root_attributes(d))
        out["root attributes + stage histograms (collector)"] = clock() - t
        t = clock()
        for tr in traces:
            tr.to_json()
        out["Trace.to_json (inside put_traces)"] = clock() - t
        t = clock()
        store.put_traces([(tr, p.version) for tr, p in zip(traces, pending, strict=True)], sync_files=False)
        out["TraceStore.put_traces (incl. to_json)"] = clock() - t
        from vauban_trace.store._db import _write_atomic

        texts = [(f"{tr.id}.json", tr.to_json()) for tr in traces]
        rounds = []
        for k in range(3):  # file creation cost swings several-fold on this VM: median of 3 rounds
            t = clock()
            for name, text in texts:
                _write_atomic(store.dir / f"scratch{k}" / name, text, sync=False)
            rounds.append(clock() - t)
        out[FILES] = statistics.median(rounds)
        t = clock()
        for p in pending:
            store.spans_for(p.trace_id)
        out[READ_BACK] = clock() - t
        store.close()
    return {k: v / n * 1e6 for k, v in out.items()}


def baseline_breakdown(code: Path) -> dict[str, float]:
    """:func:`breakdown` of the bench script of the source tree ``code`` (run in a subprocess)."""
    prog = ("import json, sys; sys.path[:0] = [sys.argv[1] + '/src', sys.argv[1] + '/bench']; "
            "import bench_collector as b; print(json.dumps(b.breakdown()))")
    out = subprocess.run([sys.executable, "-c", prog, str(code)], capture_output=True, text=True, check=True)
    steps: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return {_OLD_NAMES.get(k, k): v for k, v in steps.items()}


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = cpu_model()
    import google.protobuf

    impl = "upb"
    try:
        from google.protobuf.internal import api_implementation

        impl = api_implementation.Type()
    except ImportError:
        pass
    return (f"`uname -m` = {platform.machine()}, `nproc` = {os.cpu_count()}, CPU: {cpu}; Python "
            f"{platform.python_version()}, protobuf {google.protobuf.__version__} ({impl}); store on "
            f"{_fs_of(tempfile.gettempdir())}")


def _fs_of(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True).stdout.splitlines()[-1].split()
        return f"{out[1]} ({path})"
    except (OSError, IndexError):
        return path


#: the figures this section showed before this round of work (docs/benchmarks.md at 02:19 UTC,
#: commit 32384e4, same machine): quoted in the text, never used as a measurement
RECORDED_BEFORE = {"rebuilt": 3_842, "ingest_only": 15_092}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=60, help="timed batches of 512 spans (default 60)")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs; the median is reported")
    ap.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also measure the collector of an earlier source tree, interleaved with this one "
                         "(DIR/src, DIR/bench; e.g. `git archive <commit> src bench | tar -x -C DIR`)")
    ap.add_argument("--baseline-label", default=None, help="how the baseline tree is named in the docs")
    ap.add_argument("--serve-null", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_null is not None:
        serve_null(args.serve_null)
        return
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[-1], cores[0]
    payloads = [make_batch(i) for i in range(args.batches)]
    parse_rate = None
    runs = []
    receiver = []
    ingest_only = []
    base_runs: list[dict[str, float]] = []
    base_ingest: list[dict[str, float]] = []
    for r in range(args.repeat):
        _pin(client_core)
        parse = parse_only(payloads, 5)
        parse_rate = parse if parse_rate is None else max(parse_rate, parse)
        warm = [make_batch(100_000 + r * 10 + i) for i in range(4)]
        fresh = [make_batch(1_000_000 * (r + 1) + i) for i in range(args.batches)]
        def baseline_runs(fresh: list[bytes] = fresh, warm: list[bytes] = warm, r: int = r) -> None:
            """The same payloads through the baseline tree's collector."""
            assert args.baseline is not None
            with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
                base_runs.append(end_to_end(fresh, warm, server_core, Path(tmp) / "store", code=args.baseline))
            with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
                base_ingest.append(end_to_end(fresh, warm, server_core, Path(tmp) / "store", assemble=False,
                                              code=args.baseline))
            print(f"run {r + 1} baseline: ingest only {base_ingest[-1]['ingest']:,.0f} spans/s; "
                  f"rebuilt {base_runs[-1]['rebuilt']:,.0f} spans/s", flush=True)

        if args.baseline is not None and r % 2 == 0:  # alternate the order: drift favours neither
            baseline_runs()
        with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
            runs.append(end_to_end(fresh, warm, server_core, Path(tmp) / "store"))
        with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
            ingest_only.append(end_to_end(fresh, warm, server_core, Path(tmp) / "store", assemble=False))
        if args.baseline is not None and r % 2 == 1:
            baseline_runs()
        receiver.append(receiver_only(fresh * 5, server_core))  # x5: CPU time has 10 ms ticks
        print(f"run {r + 1}: parse-only {parse:,.0f} spans/s; receiver-only {receiver[-1][0]:,.0f} spans/s "
              f"({receiver[-1][1]:,.0f} per CPU-s); "
              f"ingest only {ingest_only[-1]['ingest']:,.0f} spans/s; "
              f"ingest {runs[-1]['ingest']:,.0f} spans/s; "
              f"rebuilt {runs[-1]['rebuilt']:,.0f} spans/s (collector CPU {runs[-1]['cpu_s']:.2f}s "
              f"of {runs[-1]['wall_s']:.2f}s wall)", flush=True)
    assert parse_rate is not None
    _pin(client_core)
    steps = breakdown()
    base_steps = baseline_breakdown(args.baseline) if args.baseline is not None else {}
    spans_total = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    recv = statistics.median(r[0] for r in receiver)
    recv_cpu = statistics.median(r[1] for r in receiver)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    durable = statistics.median(r["ingest"] for r in ingest_only)
    durable_cpu = statistics.median(r["ingest"] * r["wall_s"] / r["cpu_s"] for r in ingest_only)
    cpu_rate = spans_total / med["cpu_s"]
    before: dict[str, float | None] = dict.fromkeys(
        ("durable", "durable_cpu", "ingest", "rebuilt", "cpu_rate"), None)
    if base_runs:
        bmed = {k: statistics.median(r[k] for r in base_runs) for k in base_runs[0]}
        before = {
            "durable": statistics.median(r["ingest"] for r in base_ingest),
            "durable_cpu": statistics.median(r["ingest"] * r["wall_s"] / r["cpu_s"] for r in base_ingest),
            "ingest": bmed["ingest"], "rebuilt": bmed["rebuilt"], "cpu_rate": spans_total / bmed["cpu_s"],
        }
    ratio = med["rebuilt"] / parse_rate
    size = statistics.mean(len(p) for p in payloads)
    verdict_abs = "meets" if med["rebuilt"] >= 20_000 else f"MISSES by {20_000 - med['rebuilt']:,.0f} spans/s"
    verdict_ratio = "meets" if ratio >= 0.5 else f"MISSES ({ratio:.1%} of the parse-only limit)"
    label = args.baseline_label or (str(args.baseline) if args.baseline is not None else "")

    def b(key: str) -> str:
        value = before[key]
        return "not measured" if value is None else f"{value:,.0f}"

    lines = [
        SECTION, "",
        f"Command: `python bench/bench_collector.py --batches {args.batches} --repeat {args.repeat} --write-docs"
        + (" --baseline DIR" if args.baseline is not None else "") + "`"
        + (f", DIR holding {label}" if args.baseline is not None else ""),
        "",
        f"Machine: {machine()}",
        "",
        f"OTLP/HTTP protobuf batches of {TRACES_PER_BATCH * SPANS_PER_TRACE} spans ({size / 1024:.0f} KiB each; "
        f"{TRACES_PER_BATCH} vauban traces of a root + {SPANS_PER_TRACE - 1} stage spans with counters and an "
        f"artifact event), {args.batches} timed batches per run after 4 warm-up batches, one keep-alive client "
        f"connection. The collector subprocess is pinned to one core (`os.sched_setaffinity`), the client to "
        f"another; quiet period 0 s. `rebuilt` stops the clock when every trace is rebuilt and stored; "
        f"`ingest` when the last 200 arrived. Medians of {args.repeat} runs; parse-only is the best of "
        f"{args.repeat}x5 passes of `ExportTraceServiceRequest.FromString` over the same payloads on one core."
        + (f" `before` is the collector of {label}, driven by the same process with the same payloads, its "
           f"runs alternating with those of the current code (before them in odd runs, after them in even "
           f"ones: the machine is shared and its speed drifts)." if args.baseline is not None else ""),
        "",
        "| measure | before: spans/s | now: spans/s (one core) | now vs parse-only | target |",
        "|---|---|---|---|---|",
        f"| parse-only (`FromString`) | | {parse_rate:,.0f} | 100% | the limit |",
        f"| receiver only: HTTP + decode + checks + hand-off, null store | | {recv:,.0f} | "
        f"{recv / parse_rate:.1%} | |",
        f"| receiver only, per collector CPU-second (the client's latency excluded) | | {recv_cpu:,.0f} | "
        f"{recv_cpu / parse_rate:.1%} | |",
        f"| ingest only: posted, durable, 200 (assembly deferred) | {b('durable')} | {durable:,.0f} | "
        f"{durable / parse_rate:.1%} | |",
        f"| ingest only, per collector CPU-second | {b('durable_cpu')} | {durable_cpu:,.0f} | "
        f"{durable_cpu / parse_rate:.1%} | |",
        f"| ingest with the assembler running alongside | {b('ingest')} | {med['ingest']:,.0f} | "
        f"{med['ingest'] / parse_rate:.1%} | |",
        f"| rebuilt: ingest + assembly + stored Trace (wall) | {b('rebuilt')} | {med['rebuilt']:,.0f} | "
        f"{ratio:.1%} | >= 20,000: {verdict_abs}; >= 50%: {verdict_ratio} |",
        f"| rebuilt per collector CPU-second | {b('cpu_rate')} | {cpu_rate:,.0f} | {cpu_rate / parse_rate:.1%} | |",
        "",
        f"Recorded before this round of work (this section at 02:19 UTC, same machine, another hour's load): "
        f"{RECORDED_BEFORE['rebuilt']:,} spans/s rebuilt, {RECORDED_BEFORE['ingest_only']:,} ingest-only.",
        "",
        "Where one core's time goes (CPU µs per span, each step measured alone in the bench process"
        + (f"; `before`: the same measurement by the bench of {label}" if base_steps else "") + "):",
        "",
        "| step | owner | before µs/span | now µs/span |",
        "|---|---|---|---|",
        *(f"| {name} | {_OWNERS.get(name, '')} | "
          f"{'' if name not in base_steps else f'{base_steps[name]:.1f}'} | {us:.1f} |"
          for name, us in steps.items()),
        "",
        _why(steps, recv_cpu, parse_rate, med["rebuilt"]),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        replace_section(SECTION, text)


def _why(steps: dict[str, float], recv: float, parse_rate: float, rebuilt: float) -> str:
    skip = ("Trace.to_json (inside put_traces)", READ_BACK, FILES)
    total = sum(v for k, v in steps.items() if k not in skip)
    own = steps["id/time checks (collector)"] + steps["root attributes + stage histograms (collector)"]
    rebuild = steps["rebuild_traces"] + steps["Trace.to_json (inside put_traces)"]
    store = (steps["TraceStore.add_spans (durable write)"] + steps[SPANS_STEP]
             + steps["TraceStore.put_traces (incl. to_json)"] - steps["Trace.to_json (inside put_traces)"])
    load = os.getloadavg()[0]
    verdict = "met" if rebuilt >= max(20_000, 0.5 * parse_rate) else "missed"
    return (
        f"Targets {verdict}. The pipeline costs about {total:.0f} CPU µs per span on this machine, i.e. at most "
        f"{1e6 / total:,.0f} spans/s on one core. Of that, `rebuild_traces` + `Trace.to_json` (rebuild and "
        f"contract packages, already optimised by their owners) are {rebuild:.0f} µs/span: on their own they "
        f"cap a Python collector at {1e6 / rebuild:,.0f} spans/s per core, so 20,000 spans/s (50 µs/span for "
        f"everything) is out of reach without moving the rebuild and the JSON encoding out of Python. The "
        f"store's share (durable write, spans for the rebuild, Trace row + `traces/<id>.json` file) is "
        f"{store:.0f} µs/span and the collector's own per-span work (checks, metrics) {own:.1f} µs; its whole "
        f"receiver (HTTP, decode, checks, hand-off to the writer) handles {recv:,.0f} spans per CPU-second "
        f"({recv / parse_rate:.0%} of parse-only). What the collector and store do about their share: one "
        f"writer thread with group commit (one SQLite connection, one fsync per group of requests; a 200 still "
        f"means committed with `synchronous=FULL`), one bookkeeping lookup per write for all its traces and one "
        f"`executemany` for the spans of traces new to the store; the spans of a trace that came in one write "
        f"are handed to the assembler in memory (byte-identical to `spans_for_bytes`, bounded to 16 MiB, used "
        f"only while the trace's version is still 1) instead of being read back from SQLite; stage histograms "
        f"observed in bulk per label set; rebuild deferred to the assembler and done once per trace after the "
        f"quiet period; one transaction per assembly pass (`TraceStore.put_traces`). Not removed: the "
        f"`traces/<id>.json` copy (documented layout, read by the CLI and tests right after a trace is stored) "
        f"costs one new file per trace (create + write + rename): {steps[FILES]:.0f} µs/span here, "
        f"{steps[FILES] * SPANS_PER_TRACE:.0f} µs per trace, nearly all of it creating the inode in the kernel "
        f"(this VM's ext4; it varies several-fold from run to run). Writing it from another thread would "
        f"not make it cheaper on one core; writing it lazily (on first `trace_json_path`) would skip it for "
        f"traces nobody opens, but the documented layout, the CLI and the tests expect the file as soon as "
        f"the trace is stored, so it stays. Before/after: `rebuild_traces` and `Trace.to_json` are the same "
        f"code in both columns, and the filesystem's share moves with the machine's load, so compare the "
        f"collector/store rows. "
        f"1-minute load average at the end of the run: {load:.2f} (the machine is shared)."
    )


_OWNERS = {
    "decode protobuf (FromString)": "protobuf (upb)",
    "id/time checks (collector)": "collector",
    "root attributes + stage histograms (collector)": "collector",
    "TraceStore.add_spans (durable write)": "store",
    SPANS_STEP: "store + collector",
    READ_BACK: "store",
    FILES: "store (filesystem)",
    "rebuild_traces": "rebuild",
    "Trace.to_json (inside put_traces)": "contract",
    "TraceStore.put_traces (incl. to_json)": "store + contract",
}


if __name__ == "__main__":
    main()
