"""Throughput of the rebuild path: OTLP -> Trace, from protobuf and from OTLP JSON, and of the
Trace JSON document (``to_dict``, ``to_json``, ``from_json``).

Workload: ``--traces`` traced requests made with the real OpenTelemetry SDK (in-memory exporter)
and encoded by the official OTLP encoder. Each request has a root span carrying the request,
capabilities and GenAI attributes, ``--stages`` stage spans with four counters (value +
provenance) and ``--artifacts`` artifact events each (digest, shape, summary statistics). The
table gives the median CPU time (``time.process_time``: load from other processes on a shared
machine does not inflate it) over ``--repeat`` interleaved runs of: ``rebuild_traces`` on the
``ExportTraceServiceRequest``, on its serialized bytes, ``traces_data_from_json`` alone,
``rebuild_from_json`` on the OTLP JSON text (hex ids), and ``to_dict`` / ``to_json`` /
``Trace.from_json`` of the rebuilt traces, in spans per second and microseconds per span.

``--baseline-src DIR`` also measures another checkout of the package (``DIR`` is its ``src``
folder, e.g. a ``git worktree`` of an older commit in /tmp) on the very same workload bytes, in
alternating subprocesses (``--rounds`` each), and prints the two side by side::

    python bench/bench_rebuild.py                 # print the table
    python bench/bench_rebuild.py --write-docs    # also replace the "Rebuild" section of docs/benchmarks.md
    git worktree add /tmp/old <commit>
    python bench/bench_rebuild.py --baseline-src /tmp/old/src --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.rebuild import rebuild_from_json, rebuild_traces, traces_data_from_json, traces_data_to_json

SECTION = "## Rebuild"
REPO = Path(__file__).resolve().parents[1]


def workload(n_traces: int, n_stages: int, n_artifacts: int) -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    digest = "sha256:" + "ab" * 32
    for _ in range(n_traces):
        with tracer.start_as_current_span("text_completion tiny") as root:
            root.set_attributes({
                sc.TRACE_ROOT: True, sc.GEN_AI_OPERATION_NAME: "text_completion", sc.GEN_AI_REQUEST_MODEL: "tiny",
                sc.REQUEST_INPUT_REF: digest, sc.REQUEST_REQUESTED_ARTIFACTS: ["tokens", "activation"],
                sc.REQUEST_LAYERS: [0, 1], sc.EXECUTOR_NAME: "torch", sc.capability("can_emit_activations"): "full",
            })
            for i in range(n_stages):
                with tracer.start_as_current_span(f"stage-{i}") as st:
                    st.set_attribute(sc.STAGE, "forward")
                    for counter, value in (("token_count", 8), ("batch_size", 1), ("memory_bytes", 4096),
                                           ("duration_s", 0.001)):
                        st.set_attribute(sc.usl(counter), value)
                        st.set_attribute(sc.usl_provenance(counter), "measured")
                    for j in range(n_artifacts):
                        st.add_event(sc.EVENT_ARTIFACT, {
                            sc.ARTIFACT_ID: f"a{i}-{j}", sc.ARTIFACT_KIND: "activation", sc.ARTIFACT_DIGEST: digest,
                            sc.ARTIFACT_SHAPE: [1, 8, 64], sc.ARTIFACT_DTYPE: "float32", sc.ARTIFACT_LAYER: j,
                            sc.ARTIFACT_STAT_MEAN: 0.1, sc.ARTIFACT_STAT_STD: 1.0, sc.ARTIFACT_STAT_L2_NORM: 22.6,
                        })
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def _time_s(fn: Callable[[], Any]) -> float:
    """CPU seconds of one call: this process's CPU time, so that other work on a shared machine
    (time spent descheduled) does not count; the work is single-threaded."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def write_section(doc: Path, body: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{body.rstrip()}\n\n"
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    doc.write_text(text.rstrip("\n") + "\n")


def measure(raw: bytes, n_traces: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per run of every variant over the workload ``raw`` (serialized request)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from vauban_trace.contract import Trace

    req = ExportTraceServiceRequest.FromString(raw)
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)
    text = json.dumps(traces_data_to_json(td))
    traces = rebuild_traces(req)
    docs = [t.to_json() for t in traces]
    assert len(traces) == n_traces and rebuild_from_json(text) == rebuild_traces(raw)
    assert [Trace.from_json(d) for d in docs] == traces
    from vauban_trace.rebuild._values import attributes

    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def decode_attributes() -> None:  # the part of rebuild_traces spent in the protobuf runtime
        for span in spans:
            attributes(span.attributes)
            for ev in span.events:
                attributes(ev.attributes)

    variants: list[tuple[str, Callable[[], Any]]] = [
        ("rebuild_traces(ExportTraceServiceRequest)", lambda: rebuild_traces(req)),
        ("of which: attribute decoding (every span and event attribute read once)", decode_attributes),
        ("rebuild_traces(protobuf bytes)", lambda: rebuild_traces(raw)),
        ("traces_data_from_json(text) only", lambda: traces_data_from_json(text)),
        ("rebuild_from_json(text)", lambda: rebuild_from_json(text)),
        ("Trace.to_dict() of the rebuilt traces", lambda: [t.to_dict() for t in traces]),
        ("Trace.to_json() of the rebuilt traces", lambda: [t.to_json() for t in traces]),
        ("Trace.from_json(text) of those documents", lambda: [Trace.from_json(d) for d in docs]),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(repeat):  # interleaved, so load drift hits every variant alike
        for label, fn in variants:
            samples[label].append(_time_s(fn))
    return samples


def _run_child(src: str | None, workload_file: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--measure-only", str(workload_file), "--traces", str(args.traces),
           "--repeat", str(args.repeat)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if src is not None and not str(result.pop("package")).startswith(str(Path(src).resolve())):
        raise SystemExit(f"--baseline-src {src}: the child imported another vauban_trace")
    result.pop("package", None)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--artifacts", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline-src", help="src folder of another checkout to compare against")
    parser.add_argument("--baseline-label", default="before", help="column title of the baseline")
    parser.add_argument("--rounds", type=int, default=3, help="alternating subprocess rounds with --baseline-src")
    parser.add_argument("--measure-only", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.measure_only:  # child of --baseline-src: print the samples as JSON
        import vauban_trace

        samples: dict[str, Any] = measure(Path(args.measure_only).read_bytes(), args.traces, args.repeat)
        samples["package"] = str(Path(vauban_trace.__file__).resolve())
        print(json.dumps(samples))
        return 0
    req = workload(args.traces, args.stages, args.artifacts)
    raw = req.SerializeToString()
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)
    text_mb = len(json.dumps(traces_data_to_json(td))) / 1e6
    n_spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    load = os.getloadavg()[0]
    if args.baseline_src:
        with tempfile.TemporaryDirectory() as tmp:
            wl = Path(tmp) / "workload.pb"
            wl.write_bytes(raw)
            before: dict[str, list[float]] = {}
            after: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for into, src in ((before, args.baseline_src), (after, None)):
                    for label, values in _run_child(src, wl, args).items():
                        into.setdefault(label, []).extend(values)
    else:
        before, after = {}, measure(raw, args.traces, args.repeat)

    def us(samples: list[float], pick: Callable[[list[float]], float] = min) -> float:
        return 1e6 * pick(samples) / n_spans

    rows = []
    for label, values in after.items():
        now = f"{us(values):.1f} | {us(values, statistics.median):.1f} | {1e6 / us(values):,.0f}"
        if before:
            old = before[label]
            rows.append(f"| {label} | {us(old):.1f} | {us(old, statistics.median):.1f} | {1e6 / us(old):,.0f} | {now} | "
                        f"{us(old) / us(values):.2f}x |")
        else:
            rows.append(f"| {label} | {now} |")
    runs = f"{args.repeat} interleaved runs" + (
        f" x {args.rounds} alternating subprocess rounds per side" if before else "")
    command = "python bench/bench_rebuild.py" + "".join(
        f" {flag} {value}" for flag, value, default in (
            ("--traces", args.traces, 200), ("--stages", args.stages, 8), ("--artifacts", args.artifacts, 4),
            ("--repeat", args.repeat, 7), ("--baseline-src", args.baseline_src, None),
            ("--rounds", args.rounds if before else 3, 3)) if value != default)
    if before and args.baseline_label != "before":
        command += f" --baseline-label '{args.baseline_label}'"
    command += " --write-docs"
    cols = "µs/span best | µs/span median | spans/s (best)"
    if before:
        b = args.baseline_label
        head = [f"| path | {b}: {cols.replace(' | ', f' | {b}: ')} | now: {cols.replace(' | ', ' | now: ')} "
                "| speed-up (best) |", "|---|---|---|---|---|---|---|---|"]
    else:
        head = [f"| path | {cols} |", "|---|---|---|---|"]
    body = "\n".join([
        f"Command: `{command}`",
        "",
        f"Machine: `uname -m` = {platform.machine()}, `nproc` = {os.cpu_count()}; Python {platform.python_version()}; "
        f"load average at start {load:.1f}",
        "",
        f"Workload: {args.traces} traces x (1 root + {args.stages} stage spans with 4 counters and "
        f"{args.artifacts} artifact events each) = {n_spans} spans, {len(raw) / 1e6:.1f} MB protobuf, "
        f"{text_mb:.1f} MB OTLP JSON; {runs}, one thread, CPU time of the process per run; best = the fastest run (the least disturbed by other work on this shared machine), median for the spread. The to_dict/to_json/from_json rows are per span of "
        "the rebuilt traces (each span's share of its Trace document).",
        "",
        *head,
        *rows,
    ])
    print(body)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", body)
        print(f"updated docs/benchmarks.md ({SECTION})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
