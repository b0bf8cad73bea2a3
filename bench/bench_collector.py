"""Collector ingest benchmark: spans rebuilt per second on one core vs. the parse-only limit.

What is measured (``python bench/bench_collector.py [--batches 60] [--repeat 3] [--write-docs]
[--baseline DIR]``):

1. **parse-only**: ``ExportTraceServiceRequest.FromString`` over the very payloads posted below,
   in this process pinned to one core (the target's reference); **decode to Python** also reads
   every span field and attribute into Python values.
2. **end to end**: ``vauban-trace collector`` in a subprocess pinned to ONE core
   (``os.sched_setaffinity``), the client pinned to another. The client posts OTLP/HTTP protobuf
   batches of 512 realistic vauban spans (32 traces of a root + 15 stage spans carrying counters
   with provenance and an artifact event each) over one keep-alive connection; the clock stops
   when every trace has been rebuilt and its Trace JSON committed (``TraceStore.trace_count``),
   so the rate covers receive + durable write + assembly (rebuild + stored Trace). Variants, their
   runs interleaved: the default (C accelerators, trace files on read), ``--trace-files eager``,
   pure Python (``VAUBAN_TRACE_NO_NATIVE=1``), ingest only (assembly deferred), and with
   ``--baseline DIR`` the collector of an earlier source tree (``DIR/src``).
3. **receiver only**: the HTTP receiver over a null store.
4. **steps**: CPU µs per span of each step, measured alone in this process, with and without the
   C accelerators.

Targets: end-to-end >= 50% of parse-only and >= 20,000 spans/s on one core.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchdoc import cpu_model, replace_section
from collector_payloads import SPANS_PER_TRACE, TRACES_PER_BATCH, make_batch
from collector_steps import (
    FALLBACK,
    FILES,
    PIPELINE,
    READ_BACK,
    breakdown,
    floor_text,
    floors,
    python_breakdown,
    why_text,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Collector ingest"


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
               *, assemble: bool = True, code: Path | None = None, native: bool = True,
               args: tuple[str, ...] = (), perf: str | None = None) -> dict[str, float]:
    """Post ``payloads`` to a collector subprocess pinned to ``core``; with ``assemble`` False the
    quiet period is an hour, so only the durable ingest is measured. ``code``: run the collector
    of that source tree (``<code>/src``) instead of this one (the ``--baseline`` comparison);
    ``native`` False: with ``VAUBAN_TRACE_NO_NATIVE=1`` (the pure-Python rebuild and split);
    ``args``: more collector flags; ``perf``: ``perf record -g`` the collector into that file
    while the timed payloads go through (bench/collector_probe.py)."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())", "collector",
           "--store", str(store), "--http", f"127.0.0.1:{port}", "--grpc", "off", "--metrics", "off",
           "--quiet-period", "0s" if assemble else "1h", *args]
    env = dict(os.environ)
    env.pop("VAUBAN_TRACE_NO_NATIVE", None)
    if not native:
        env["VAUBAN_TRACE_NO_NATIVE"] = "1"
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
        # read-only SQL, not a TraceStore: opening one would migrate a baseline collector's older
        # schema under it (the --baseline tree may predate the current schema)
        reader = sqlite3.connect(f"file:{store / 'traces.sqlite'}?mode=ro", uri=True, timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def send(batch: list[bytes]) -> None:
            for body in batch:
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"collector answered {resp.status}")

        def wait_rebuilt(n: int) -> None:
            # rebuilt_at is set by every schema's put (v3 held the JSON in the row, v4 in a segment)
            while reader.execute("SELECT COUNT(*) FROM traces WHERE rebuilt_at_unix_nano IS NOT NULL").fetchone()[0] < n:
                time.sleep(0.002)

        send(warmup)
        if assemble:
            wait_rebuilt(len(warmup) * TRACES_PER_BATCH)
        recorder = None
        if perf is not None:
            recorder = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-o", perf, "-p", str(proc.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # perf attaches
        cpu0, wchar0 = _proc_cpu(proc.pid), _proc_wchar(proc.pid)
        t0 = time.perf_counter()
        send(payloads)
        t_ingest = time.perf_counter() - t0
        if assemble:
            wait_rebuilt((len(warmup) + len(payloads)) * TRACES_PER_BATCH)
        t_total = time.perf_counter() - t0
        cpu = _proc_cpu(proc.pid) - cpu0
        wchar = _proc_wchar(proc.pid) - wchar0
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        conn.close()
        reader.close()
    finally:
        if assemble:
            proc.terminate()
        else:
            proc.kill()  # skip the final assembly pass of an hour-long quiet period
        proc.wait(60)
    spans = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    return {"ingest": spans / t_ingest, "rebuilt": spans / t_total, "cpu_s": cpu, "wall_s": t_total,
            "written_per_span": wchar / spans}


class _NullStore:
    """Accepts spans and forgets them: isolates the receiver (HTTP, decode, checks, hand-off)."""

    def ingest_parts(self, parts: object, *, snapshots: bool = False) -> Any:
        from vauban_trace.store import IngestResult

        return IngestResult(snapshots={}, accepted=0, duplicates=0, rejected=0, problems=(), trace_ids=())

    def pending_traces(self, **_filters: object) -> list[object]:  # limit, received_by, ...
        return []

    def pending_versions(self, **_filters: object) -> list[tuple[str, int]]:  # what the assembler asks
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


def _versus_text(label: str, wall: float, base_wall: float, cpu: float, base_cpu: float, written: float,
                 base_written: float) -> str:
    """The default collector against the ``--baseline`` one, both measured in this run."""
    return (
        f"Against the baseline ({label}), measured in the same run with the runs interleaved: rebuilt "
        f"{wall:,.0f} vs {base_wall:,.0f} spans/s wall ({wall / base_wall - 1:+.0%}) and {cpu:,.0f} vs "
        f"{base_cpu:,.0f} spans per collector CPU-second ({cpu / base_cpu - 1:+.0%}); the collector wrote "
        f"{written:,.0f} vs {base_written:,.0f} bytes per span (`wchar` of `/proc/PID/io`: the bytes handed to "
        f"write calls, files and sockets). What changed since c138012 (the previous round), each step "
        f"kept byte for byte (differential tests against the Python references): the HTTP receiver reads the "
        f"header block without the email parser, reads bodies into pooled buffers, lets the kernel time the "
        f"plaintext sockets out (no poll before each call) and hands requests to the writer and back through "
        f"eventfds; the C splitter checks a span in one pass of its fields and walks each ScopeSpans once; "
        f"the durable write's grouping and bookkeeping moved to C (one UPDATE per span segment append, "
        f"snapshots cut while the payload is hot); the C rebuild copies an attribute equal to the one at the "
        f"same place in the previous span instead of parsing it again and writes numbers and ids in wider "
        f"steps; an assembly pass lists traces/ once instead of an unlink per trace, asks for (id, version) "
        f"pairs only and, under load, waits 20 ms for more traces (fewer, larger passes)."
    )


def _proc_wchar(pid: int) -> float:
    """Bytes the process handed to write system calls so far (``/proc/PID/io``; NaN where unreadable)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


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


def _decode_all(payloads: list[bytes]) -> float:
    """Spans/s of FromString + reading every span field and attribute into Python values (upb)."""
    from vauban_trace.rebuild._values import attributes

    spans = len(payloads) * TRACES_PER_BATCH * SPANS_PER_TRACE
    t0 = time.perf_counter()
    for p in payloads:
        for rs in ExportTraceServiceRequest.FromString(p).resource_spans:
            attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    (sp.trace_id, sp.span_id, sp.parent_span_id, sp.name, sp.start_time_unix_nano,
                     sp.end_time_unix_nano, sp.status.code, attributes(sp.attributes))
                    for ev in sp.events:
                        (ev.name, ev.time_unix_nano, attributes(ev.attributes))
    return spans / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=60, help="timed batches of 512 spans (default 60)")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs; the median is reported")
    ap.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="also measure the collector of an earlier source tree, interleaved with this one "
                         "(DIR/src; e.g. `git archive <commit> src bench | tar -x -C DIR`)")
    ap.add_argument("--baseline-label", default=None, help="how the baseline tree is named in the docs")
    ap.add_argument("--serve-null", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_null is not None:
        serve_null(args.serve_null)
        return
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[-1], cores[0]
    payloads = [make_batch(i) for i in range(args.batches)]
    parse_rate = decode_rate = 0.0
    variants: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("native", "python", "eager", "base", "ingest", "quiet", "basequiet")
    }
    receiver = []
    for r in range(args.repeat):
        _pin(client_core)
        parse_rate = max(parse_rate, parse_only(payloads, 5))
        decode_rate = max(decode_rate, _decode_all(payloads))
        warm = [make_batch(100_000 + r * 10 + i) for i in range(4)]
        fresh = [make_batch(1_000_000 * (r + 1) + i) for i in range(args.batches)]
        order = ["native", "python", "eager", "ingest", "quiet"]
        order += ["base", "basequiet"] if args.baseline is not None else []
        if r % 2:
            order.reverse()  # alternate the order: the machine is shared and its speed drifts
        for key in order:
            with tempfile.TemporaryDirectory(prefix="vauban-bench-") as tmp:
                store = Path(tmp) / "store"
                if key == "base":
                    res = end_to_end(fresh, warm, server_core, store, code=args.baseline)
                elif key == "basequiet":
                    res = end_to_end(fresh, warm, server_core, store, code=args.baseline,
                                     args=("--quiet-period", "2s"))
                elif key == "ingest":
                    res = end_to_end(fresh, warm, server_core, store, assemble=False)
                elif key == "quiet":  # the collector's default quiet period: traces wait 2 s before assembly
                    res = end_to_end(fresh, warm, server_core, store, args=("--quiet-period", "2s"))
                else:
                    res = end_to_end(fresh, warm, server_core, store, native=key != "python",
                                     args=("--trace-files", "eager") if key == "eager" else ())
            variants[key].append(res)
        receiver.append(receiver_only(fresh * 5, server_core))  # x5: CPU time has 10 ms ticks
        print(f"run {r + 1}: parse-only {parse_rate:,.0f} spans/s; receiver-only {receiver[-1][0]:,.0f} "
              f"spans/s; " + "; ".join(f"{k} {v[-1]['ingest' if k in ('ingest', 'quiet', 'basequiet') else 'rebuilt']:,.0f}"
                                        for k, v in variants.items() if v), flush=True)
    _pin(client_core)
    steps = breakdown()
    py_steps = python_breakdown()
    floor = floors()
    recv = statistics.median(r[0] for r in receiver)
    recv_cpu = statistics.median(r[1] for r in receiver)

    def med(key: str, what: str = "rebuilt") -> float:
        return statistics.median(r[what] for r in variants[key])

    def per_cpu(key: str, what: str = "rebuilt") -> float:
        return statistics.median(r[what] * r["wall_s"] / r["cpu_s"] for r in variants[key])

    rebuilt = med("native")
    ratio = rebuilt / parse_rate
    size = statistics.mean(len(p) for p in payloads)
    verdict_abs = "MEETS" if rebuilt >= 20_000 else f"MISSES by {20_000 - rebuilt:,.0f} spans/s"
    verdict_ratio = "MEETS" if ratio >= 0.5 else f"MISSES ({ratio:.1%} of the parse-only limit)"
    label = args.baseline_label or (str(args.baseline) if args.baseline is not None else "")

    def row(name: str, key: str, what: str = "rebuilt", target: str = "") -> str:
        if not variants[key]:
            return f"| {name} | not measured | | | | |"
        wall, cpu = med(key, what), per_cpu(key, what)
        return f"| {name} | {wall:,.0f} | {wall / parse_rate:.1%} | {cpu:,.0f} | {wall / decode_rate:.0%} | {target} |"

    def quiet_row(key: str, name: str) -> str:
        # the clock of `rebuilt` would include the 2 s wait: the wall column is the ingest rate, the
        # CPU column covers everything up to the last trace rebuilt
        if not variants[key]:
            return f"| {name} | not measured | | | | |"
        wall, cpu = med(key, "ingest"), per_cpu(key)
        return f"| {name} | {wall:,.0f} | {wall / parse_rate:.1%} | {cpu:,.0f} | {wall / decode_rate:.0%} | |"

    total = sum(steps[k] for k in PIPELINE)
    py_total = sum(py_steps[k] for k in PIPELINE)
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
        f"another; quiet period 0 s. `rebuilt` stops the clock when every trace is rebuilt and its Trace JSON "
        f"committed; `ingest` when the last 200 arrived. Medians of {args.repeat} runs, the variants' runs "
        f"interleaved (order reversed every other run). Parse-only is the best of {args.repeat}x5 passes of "
        f"`ExportTraceServiceRequest.FromString` over the same payloads on one core (upb parses into C "
        f"structures and creates Python objects only when a field is read); `decode to Python` also reads "
        f"every span field and attribute into Python values (what any Python consumer of the spans pays).",
        "",
        "| measure | spans/s (wall, one core) | vs parse-only | spans per collector CPU-second "
        "| vs decode to Python | target |",
        "|---|---|---|---|---|---|",
        f"| parse-only (`FromString`) | {parse_rate:,.0f} | 100% | | | the limit |",
        f"| decode to Python (FromString + every field read) | {decode_rate:,.0f} | {decode_rate / parse_rate:.1%} "
        f"| | 100% | |",
        f"| receiver only: HTTP + C splitter + hand-off, null store | {recv:,.0f} | {recv / parse_rate:.1%} "
        f"| {recv_cpu:,.0f} | {recv / decode_rate:.0%} | |",
        row("ingest only: posted, durable, 200 (assembly deferred)", "ingest", "ingest"),
        row("**rebuilt: ingest + assembly + stored Trace** (C accelerators, trace files on read: the default)",
            "native", target=f">= 20,000: {verdict_abs}; >= 50% of parse-only: {verdict_ratio}"),
        row("rebuilt, `--trace-files eager` (a traces/<id>.json file per trace)", "eager"),
        row("rebuilt, pure Python (`VAUBAN_TRACE_NO_NATIVE=1`)", "python"),
        row(f"rebuilt, before this round ({label})" if label else "rebuilt, before this round", "base"),
        quiet_row("quiet", "rebuilt with the default quiet period (`--quiet-period 2s`; wall: the ingest rate, "
                  "the rebuild trails by 2 s; CPU: until the last trace is rebuilt)"),
        *([quiet_row("basequiet", f"the same, before this round ({label})")] if variants["basequiet"] else []),
        "",
        *([_versus_text(label, med("native"), med("base"), per_cpu("native"), per_cpu("base"),
                        med("native", "written_per_span"), med("base", "written_per_span")), ""]
          if variants["base"] else []),
        "Where one core's time goes (CPU µs per span, each step measured alone in the bench process; the "
        "pure-Python column runs the same steps with `VAUBAN_TRACE_NO_NATIVE=1`, i.e. the reference "
        f"implementations the C code is checked against). C rebuild taken for {steps['native share']:.0%} of "
        "the traces.",
        "",
        "| step | C accelerators µs/span | pure Python µs/span |",
        "|---|---|---|",
        *(f"| {name} | {steps[name]:.1f} | {py_steps[name]:.1f} |" for name in (*PIPELINE, *FALLBACK)),
        f"| **pipeline total** (the steps above the fallback rows) | **{total:.1f}** | **{py_total:.1f}** |",
        f"| {FILES} | {steps[FILES]:.1f} | {py_steps[FILES]:.1f} |",
        f"| {READ_BACK} | {steps[READ_BACK]:.1f} | {py_steps[READ_BACK]:.1f} |",
        "",
        why_text(steps, total, parse_rate, decode_rate, rebuilt, recv, per_cpu("native")),
        "",
        floor_text(floor, steps, parse_rate, recv_cpu),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
