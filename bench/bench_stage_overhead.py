"""Per-stage cost of ``vauban_trace.stage`` with and without an OpenTelemetry SDK.

Targets (issue 2): without an SDK a stage costs <= 1 µs; with the SDK and a BatchSpanProcessor
it costs <= 1.5x a bare ``tracer.start_as_current_span`` carrying the same attributes on the
same SDK configuration.

Method: each variant runs ``--ops`` empty stages per sample; samples of all variants are
interleaved, ``--repeat`` times, so drift hits every variant alike; the table gives the median
per-stage time and, for ratios, the median of the per-round ratios. The no-SDK figures are taken
before any provider is installed (the process starts clean). The SDK runs a ``TracerProvider``
with a ``BatchSpanProcessor`` in front of an exporter that discards. The bare span gets exactly
the final attribute set a stage span ends with (stage name, declared counters, every
unavailable-counter provenance, the measured duration), passed once at start.

::

    python bench/bench_stage_overhead.py                 # print the table
    python bench/bench_stage_overhead.py --write-docs    # also replace the "Stage span overhead"
                                                         # section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchdoc import cpu_model, replace_section

SECTION = "## Stage span overhead"


def _per_op_us(fn: Callable[[], None], ops: int) -> tuple[float, float]:
    """(wall µs, calling-thread CPU µs) per call of ``fn``."""
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(ops):
        fn()
    t1, c1 = time.perf_counter(), time.thread_time()
    return (t1 - t0) / ops * 1e6, (c1 - c0) / ops * 1e6


def _rounds(variants: dict[str, Callable[[], None]], ops: int, repeat: int) -> dict[str, list[tuple[float, float]]]:
    for fn in variants.values():  # warm-up
        _per_op_us(fn, max(ops // 10, 100))
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            out[name].append(_per_op_us(fn, ops))
    return out


def no_sdk_variants() -> dict[str, Callable[[], None]]:
    import vauban_trace as vt

    assert not vt.instrument.sdk_active(), "the no-SDK figures need a process without a provider"

    def empty() -> None:
        return None

    def with_stage() -> None:
        with vt.stage("decode", token_count=8, batch_size=1):
            pass

    @vt.stage("decode", token_count=8, batch_size=1)
    def decorated() -> None:
        return None

    return {"empty call (loop floor)": empty, "with stage()": with_stage, "@stage call": decorated}


def sdk_variants() -> tuple[dict[str, Callable[[], None]], Any, int]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import vauban_trace as vt

    class Discard(SpanExporter):
        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    discard = Discard()
    provider.add_span_processor(BatchSpanProcessor(discard))
    trace.set_tracer_provider(provider)

    # the attribute set a stage span ends with, captured once from a real stage
    probe_provider = TracerProvider()
    memory = InMemorySpanExporter()
    probe_provider.add_span_processor(SimpleSpanProcessor(memory))
    with vt.stage("decode", token_count=8, batch_size=1, tracer_provider=probe_provider):
        pass
    attrs = dict(memory.get_finished_spans()[0].attributes or {})
    tracer = provider.get_tracer("bench")

    def bare() -> None:
        with tracer.start_as_current_span("decode", attributes=attrs):
            pass

    def with_stage() -> None:
        with vt.stage("decode", token_count=8, batch_size=1):
            pass

    @vt.stage("decode", token_count=8, batch_size=1)
    def decorated() -> None:
        return None

    variants = {"bare start_as_current_span": bare, "with stage()": with_stage, "@stage call": decorated}
    return variants, (provider, discard), len(attrs)


def machine() -> str:
    cpu = cpu_model()
    import opentelemetry.version as otel_version

    return (
        f"`uname -m` = {platform.machine()}, `nproc` = {os.cpu_count()}, CPU: {cpu}; "
        f"Python {platform.python_version()}, opentelemetry-sdk {otel_version.__version__}"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000, help="stages per sample (no SDK; SDK uses ops/10)")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)

    no_sdk = _rounds(no_sdk_variants(), args.ops, args.repeat)
    sdk, (provider, discard), n_attrs = sdk_variants()
    sdk_runs = _rounds(sdk, max(args.ops // 10, 200), args.repeat)
    provider.force_flush()

    rows: list[list[str]] = []

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    for name, values in no_sdk.items():
        wall, cpu = med(values, 0), med(values, 1)
        verdict = "" if name.startswith("empty") else ("meets <= 1 µs" if cpu <= 1.0 else "MISSES <= 1 µs")
        rows.append(["no SDK", name, f"{wall:.3f}", f"{cpu:.3f}", "", verdict])
    bare = sdk_runs["bare start_as_current_span"]
    for name, values in sdk_runs.items():
        wall, cpu = med(values, 0), med(values, 1)
        if name.startswith("bare"):
            rows.append(["SDK + BatchSpanProcessor", name, f"{wall:.2f}", f"{cpu:.2f}", "1.00x / 1.00x", ""])
            continue
        r_wall = statistics.median(v[0] / b[0] for v, b in zip(values, bare, strict=True))
        r_cpu = statistics.median(v[1] / b[1] for v, b in zip(values, bare, strict=True))
        verdict = "meets <= 1.5x" if max(r_wall, r_cpu) <= 1.5 else "MISSES <= 1.5x"
        rows.append(["SDK + BatchSpanProcessor", name, f"{wall:.2f}", f"{cpu:.2f}",
                     f"{r_wall:.2f}x / {r_cpu:.2f}x", verdict])
    table = _table(
        ["setup", "variant", "wall µs/stage", "CPU µs/stage", "vs bare span (wall / CPU)", "target"], rows
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python bench/bench_stage_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (
        f"Command: `{command.strip()}`\n\n"
        f"Machine: {machine()}\n\n"
        f"Empty stages (`stage(\"decode\", token_count=8, batch_size=1)`), {args.ops} per sample without an SDK and "
        f"{max(args.ops // 10, 200)} with it, {args.repeat} interleaved rounds; medians. Wall time is "
        f"`perf_counter`; CPU time is the calling thread's (`thread_time`), which other processes on a shared "
        f"machine do not inflate (1-minute load average at the end of the run: {load:.2f}); the no-SDK target is "
        f"judged on CPU time, the ratio target on both. The bare span carries the same {n_attrs} attributes as the "
        f"stage span; ratios are medians of per-round ratios. Spans exported (discarded) by the batch processor: "
        f"{discard.count}.\n\n{table}\n"
    )
    print(body)
    if args.write_docs:
        replace_section(SECTION, f"{SECTION}\n\n{body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
