"""CPU cost of the embedded exporter per span, before/after the C encoder, and the stall it causes.

Real spans: the torch executor serving the tiny random-init Llama (hidden 256, 4 layers, 64-token
prompts, batches of 1-4, no decoding), captured from a ``vauban_trace.configure`` session; then,
in this one process, on fresh stores each time (best of ``--reps``, ``time.process_time``):

- ``encode``: the official encoder (``encode_spans(...).SerializeToString()``) vs the C encoder;
- ``export``: the whole export of the batch as the exporter was BEFORE (official encoder, ingest
  of the decoded request, rebuild, ``put_documents`` with ``trace_files="eager"``) vs the
  :class:`EmbeddedExporter` now (C encoder, ``cut_request`` + ``ingest_parts``, rebuild,
  ``put_documents``) with ``trace_files`` "eager" and "on_read" (what ``configure`` opens now);
- ``serve``: the serving-process effect: a thread calls the model's forward pass (4 x 64 tokens)
  in a loop while the main thread exports the captured spans at ``--span-rate`` spans/s (a fresh
  store each batch), before vs now, and idle: the forward latencies (p50 / p99 / max);
- ``stall``: a probe thread sleeping 1 ms in a loop while the main thread exports the spans in
  ``BatchSpanProcessor``-sized batches (512): the worst and the summed lateness of its wake-ups,
  i.e. how long an inference thread of the serving process waits on the exporter's GIL holds.

::

    OMP_NUM_THREADS=1 python bench/bench_embedded_export.py            # print the table
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def capture(requests: int) -> tuple[list[Any], Any, Any]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import vauban_trace as vt
    from vauban_trace.cli._demo import _quiet_transformers
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch.tiny import SENTENCES, cached_tiny_model

    _quiet_transformers()
    d = cached_tiny_model("llama", hidden_size=256, num_layers=4, max_position_embeddings=1024)
    ex = TorchExecutor.from_pretrained(d, device="cpu", dtype="float32")
    ex.load()
    memory = InMemorySpanExporter()
    session = vt.configure(store_dir=tempfile.mkdtemp(), service_name="bench", exporter=["embedded", memory])
    tok = ex._require().tokenizer
    text = tok.decode(tok(" ".join(SENTENCES * 8), add_special_tokens=False)["input_ids"][:64])
    for i in range(requests):
        n = 1 + i % 4
        ex.run(ex.make_request([text] * n), prompts=[text] * n, max_new_tokens=0, ignore_eos=True)
    session.force_flush()
    spans = list(memory.get_finished_spans())
    session.shutdown()
    ids = tok([text] * 4, return_tensors="pt")["input_ids"]
    return spans, ex._require().model, ids


def serving(model: Any, ids: Any, variant: Callable[[Any, Sequence[Any]], None] | None, mode: str,
            spans: Sequence[Any], seconds: float, rate: float) -> list[float]:
    """Latencies (ms) of the model's forward pass (4 x 64 tokens) called in a loop by a serving
    thread for ``seconds``, while the main thread exports ``spans`` (a fresh store each time) with
    ``variant`` at ``rate`` spans per second (one batch every len(spans) / rate seconds), or stays
    idle (None)."""
    import torch

    from vauban_trace.store import TraceStore

    lat: list[float] = []
    stop = threading.Event()

    def serve() -> None:
        with torch.no_grad():
            while not stop.is_set():
                t = time.perf_counter()
                model(ids)
                lat.append((time.perf_counter() - t) * 1e3)

    th = threading.Thread(target=serve)
    th.start()
    period = len(spans) / rate
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        if variant is not None:
            store = TraceStore(Path(tempfile.mkdtemp()), trace_files=mode)  # type: ignore[arg-type]
            variant(store, spans)
            store.close()
        time.sleep(max(0.0, start + period - time.perf_counter()))
    stop.set()
    th.join()
    return lat[1:]


def export_before(store: Any, spans: Sequence[Any]) -> None:
    """The exporter's work before this change (official encoder, decoded-request ingest)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from vauban_trace.rebuild import rebuild_documents

    ingested = store.ingest(encode_spans(spans), snapshots=True)
    docs = [(doc, 1) for snap in ingested.snapshots.values() for doc in rebuild_documents(snap.data())]
    store.put_documents(docs)


def export_now(store: Any, spans: Sequence[Any]) -> None:
    from vauban_trace.instrument import EmbeddedExporter

    assert EmbeddedExporter(store).export(spans).name == "SUCCESS"


def phases(spans: Sequence[Any], reps: int) -> dict[str, float]:
    """Best CPU seconds of each phase of the export as ``EmbeddedExporter`` does it now."""
    from vauban_trace.instrument._encode import encode_request
    from vauban_trace.rebuild import rebuild_documents
    from vauban_trace.store import TraceStore, cut_request

    out: dict[str, float] = {}
    for _ in range(reps):
        store = TraceStore(Path(tempfile.mkdtemp()), trace_files="on_read")
        t = [time.process_time()]
        data = encode_request(spans)
        t.append(time.process_time())
        cut = cut_request(data)
        t.append(time.process_time())
        ingested = store.ingest_parts([data if cut is None else cut], snapshots=True)
        t.append(time.process_time())
        docs = [(doc, 1) for snap in ingested.snapshots.values() for doc in rebuild_documents(snap.data())]
        t.append(time.process_time())
        store.put_documents(docs)
        t.append(time.process_time())
        store.close()
        for i, name in enumerate(("encode", "cut_request", "ingest_parts", "rebuild", "put_documents")):
            out[name] = min(out.get(name, 1e9), t[i + 1] - t[i])
    return out


def best(fn: Callable[[], Any], reps: int) -> float:
    out = 1e9
    for _ in range(reps):
        a = time.process_time()
        fn()
        out = min(out, time.process_time() - a)
    return out


def export_cost(variant: Callable[[Any, Sequence[Any]], None], mode: str, spans: Sequence[Any], reps: int) -> tuple[float, float]:
    from vauban_trace.store import TraceStore

    cpu, wall = 1e9, 1e9
    for _ in range(reps):
        store = TraceStore(Path(tempfile.mkdtemp()), trace_files=mode)  # type: ignore[arg-type]
        a, w = time.process_time(), time.perf_counter()
        variant(store, spans)
        cpu, wall = min(cpu, time.process_time() - a), min(wall, time.perf_counter() - w)
        store.close()
    return cpu, wall


def stalls(variant: Callable[[Any, Sequence[Any]], None], mode: str, spans: Sequence[Any]) -> tuple[float, float]:
    """Worst and summed lateness (ms) of a 1 ms sleeper while the spans are exported in 512s."""
    from vauban_trace.store import TraceStore

    store = TraceStore(Path(tempfile.mkdtemp()), trace_files=mode)  # type: ignore[arg-type]
    late: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - t - 0.001)

    th = threading.Thread(target=probe)
    th.start()
    time.sleep(0.05)
    for i in range(0, len(spans), 512):
        variant(store, spans[i:i + 512])
    stop.set()
    th.join()
    store.close()
    return max(late) * 1e3, sum(x for x in late if x > 0.001) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--serve-seconds", type=float, default=6.0)
    p.add_argument("--span-rate", type=float, default=2000.0, help="spans exported per second beside serving")
    args = p.parse_args(argv)

    from vauban_trace.instrument import _encode

    spans, model, ids = capture(args.requests)
    n = len(spans)
    print(f"spans {n}, traces {len({s.context.trace_id for s in spans})}, "
          f"OTLP bytes/span {len(_encode.encode_request_official(spans)) / n:.0f}, C encoder built: {_encode.native is not None}")
    assert _encode.encode_request(spans) == _encode.encode_request_official(spans)
    us = 1e6 / n
    off = best(lambda: _encode.encode_request_official(spans), args.reps)
    print(f"encode, official encoder       {off * us:7.1f} CPU us/span")
    if _encode.native is not None:
        native = _encode.native
        c = best(lambda: native.encode_spans(spans), args.reps)
        print(f"encode, C encoder              {c * us:7.2f} CPU us/span ({off / c:.0f}x)")
    rows = [("before (official, decoded ingest), eager", export_before, "eager"),
            ("now (C encoder, cut ingest), eager", export_now, "eager"),
            ("now (C encoder, cut ingest), on_read", export_now, "on_read")]
    for label, fn, mode in rows:
        cpu, wall = export_cost(fn, mode, spans, args.reps)
        print(f"export {label:42s} {cpu * us:7.1f} CPU us/span {wall * us:7.1f} wall us/span")
    print("phases of 'now, on_read' (CPU us/span):", {k: round(v * us, 1) for k, v in phases(spans, args.reps).items()})
    for label, fn, mode in (rows[0], rows[2]):
        worst, total = stalls(fn, mode, spans)
        print(f"stall  {label:42s} worst {worst:6.1f} ms, summed lateness over 1 ms {total:7.1f} ms")
    import statistics

    serve_rows: list[tuple[str, Callable[[Any, Sequence[Any]], None] | None, str]] = [
        ("idle (no export)", None, "on_read"), rows[0], rows[2]]
    for label, fn_or_none, mode in serve_rows:
        lat = sorted(serving(model, ids, fn_or_none, mode, spans, args.serve_seconds, args.span_rate))
        q = statistics.quantiles(lat, n=100)
        print(f"serve  {label:42s} forward ms: p50 {q[49]:6.1f} p99 {q[98]:6.1f} max {lat[-1]:6.1f} ({len(lat)} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
