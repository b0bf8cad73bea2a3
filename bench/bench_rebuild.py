"""Throughput of the rebuild path: OTLP -> Trace, from protobuf and from OTLP JSON.

Workload: ``--traces`` traced requests made with the real OpenTelemetry SDK (in-memory exporter)
and encoded by the official OTLP encoder. Each request has a root span carrying the request,
capabilities and GenAI attributes, ``--stages`` stage spans with four counters (value +
provenance) and ``--artifacts`` artifact events each (digest, shape, summary statistics). The
table gives the median over ``--repeat`` interleaved runs of: ``rebuild_traces`` on the
``ExportTraceServiceRequest``, on its serialized bytes, ``traces_data_from_json`` alone, and
``rebuild_from_json`` on the OTLP JSON text (hex ids), in spans per second and ms per trace.

::

    python bench/bench_rebuild.py                 # print the table
    python bench/bench_rebuild.py --write-docs    # also replace the "Rebuild" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
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
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_section(doc: Path, body: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{body.rstrip()}\n\n"
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    doc.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--artifacts", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    req = workload(args.traces, args.stages, args.artifacts)
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)
    raw = req.SerializeToString()
    text = json.dumps(traces_data_to_json(td))
    n_spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    assert len(rebuild_traces(req)) == args.traces and rebuild_from_json(text) == rebuild_traces(raw)
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("rebuild_traces(ExportTraceServiceRequest)", lambda: rebuild_traces(req)),
        ("rebuild_traces(protobuf bytes)", lambda: rebuild_traces(raw)),
        ("traces_data_from_json(text) only", lambda: traces_data_from_json(text)),
        ("rebuild_from_json(text)", lambda: rebuild_from_json(text)),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(args.repeat):  # interleaved, so load drift hits every variant alike
        for label, fn in variants:
            samples[label].append(_time_s(fn))
    rows = []
    for label, _ in variants:
        s = statistics.median(samples[label])
        rows.append(f"| {label} | {n_spans / s:,.0f} | {1000 * s / args.traces:.3f} |")
    body = "\n".join([
        "Command: `python bench/bench_rebuild.py --write-docs`",
        "",
        f"Machine: `uname -m` = {platform.machine()}, `nproc` = {os.cpu_count()}; Python {platform.python_version()}; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        f"Workload: {args.traces} traces x (1 root + {args.stages} stage spans with 4 counters and "
        f"{args.artifacts} artifact events each) = {n_spans} spans, {len(raw) / 1e6:.1f} MB protobuf, "
        f"{len(text) / 1e6:.1f} MB OTLP JSON; median of {args.repeat} interleaved runs, one thread.",
        "",
        "| path | spans/s | ms per trace |",
        "|---|---|---|",
        *rows,
    ])
    print(body)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", body)
        print(f"updated docs/benchmarks.md ({SECTION})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
