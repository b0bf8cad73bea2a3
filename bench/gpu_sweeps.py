"""GPU sweeps: closed-loop concurrency (with and without dynamic batching) and open-loop arrival rate.

What it runs, against a random-initialised Llama served by :class:`TorchExecutor` behind a
:class:`vauban_trace.sweep.ServingLoop` (one worker; the served callable is one executor
``run`` per formed batch, prefill only unless ``--new-tokens``):

1. **Service time** of the served callable alone (one batch of B identical prompts, CUDA synced
   around it, the executor's own tracing on), for a few B: what the model could serve.
2. **Closed loop, dynamic batching** (batches up to ``--max-batch``, ``--max-wait-ms``):
   ``run_concurrency`` over N clients, ``--repeats`` runs per N, ``--window`` seconds per run;
   X(N) (window count) per run and the USL fit of the request throughput (or its refusal).
3. **Closed loop, no batching** (max batch 1), the same N: the contrast.
4. **Open loop** against the batching loop: ``run_open_loop`` at a few arrival rates placed
   around the capacity measured in step 2 (fractions ``--rate-fractions`` of the largest median
   X(N)), Poisson arrivals; achieved vs offered, p95, saturation verdicts.

Nothing is downloaded: the model is built offline with ``cached_tiny_model`` (random weights, a
byte-level BPE tokenizer trained locally). The JSON result is written after every step, so a run
cut short still leaves what it measured.

Usage::

    # on the GPU machine (through the device tool)
    OTEL_BSP_MAX_QUEUE_SIZE=500000 python bench/gpu_sweeps.py --out result.json
    # on a CPU, to check the script end to end in a minute
    OMP_NUM_THREADS=1 python bench/gpu_sweeps.py --device cpu --small --out /tmp/sweeps.json
    # here: write the "GPU sweeps (concurrency and arrival rate)" section of docs/benchmarks.md
    python bench/gpu_sweeps.py --write-docs bench/results/gpu_sweeps_h100.json --pytest-line "44 passed in 61s"
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchdoc import replace_section
from gpu_sweeps_report import SECTION, markdown


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out["card"] = torch.cuda.get_device_name(0)
        out["memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        from benchdoc import cpu_model

        out["card"] = cpu_model()
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _closed(label: str, loop_kw: dict[str, Any], args: argparse.Namespace, ex: Any, text: str,
            serve_batch: Callable[[list[str]], list[Any]], session: Any) -> dict[str, Any]:
    from vauban_trace.sweep import ConcurrencySpec, ServingLoop, run_concurrency, schedule

    spec = ConcurrencySpec(values=args.values, window_s=args.window, warmup_requests=args.warmup,
                           repeats=args.repeats, sweep_id=f"gpu-{label}-{int(time.time())}")
    flushes: list[float] = []
    order = [int(v) for v in schedule(args.values, args.repeats)]
    starts = list(itertools.accumulate(order, initial=0))  # index of each run's first seq-0 call
    lock = threading.Lock()
    gates: dict[int, threading.Event] = {}
    seq0 = [0]

    def settle() -> None:
        # every client's first call of a run (seq 0, a warm-up call) comes here: the run's first
        # one flushes the session while the others wait, so the previous run's spans are exported
        # with no load on, and no run starts on another's export backlog
        with lock:
            i = seq0[0]
            seq0[0] += 1
            run_index = bisect.bisect_right(starts, i) - 1
            gate = gates.setdefault(run_index, threading.Event())
            first = i == starts[run_index]
        if not first:
            gate.wait()
            return
        t = time.perf_counter()
        try:
            session.force_flush()
        finally:
            flushes.append(time.perf_counter() - t)
            gate.set()

    def request(client: int, seq: int) -> Any:
        if args.settle and seq == 0:
            settle()
        return loop.call(text)

    with ServingLoop(serve_batch=serve_batch, model=ex.name, workers=1, executor="torch", device=args.device,
                     **loop_kw) as loop:
        result = run_concurrency(request, spec, session=session)
    prof = result.profile
    by_n: dict[int, dict[str, Any]] = {}
    for n in args.values:
        xs = [p.throughput(prof.throughput_method or "window") for p in prof.throughput if p.value == n]
        xs_f = [x for x in xs if x is not None]
        resp = [r.response_s for r in result.requests if r.value == n and r.response_s is not None]
        queue = [r.queue_wait_s for r in result.requests if r.value == n and r.queue_wait_s is not None]
        batch = None
        try:
            pt = prof.point("batch", n)
            batch = {"duration_median_s": pt.duration_s.median,
                     "batch_size_median": (pt.counters["batch_size"].median if "batch_size" in pt.counters else None)}
        except KeyError:
            pass
        driver = [r.window_throughput for r in result.runs if r.value == n and r.window_throughput is not None]
        by_n[n] = {"x_runs": xs_f, "x_median": _median(xs_f), "driver_x_runs": driver,
                   "response_median_s": _median(resp), "queue_median_s": _median(queue),
                   "requests": len(resp), "batch": batch}
    return {
        "label": label, "loop": loop_kw, "sweep_id": result.sweep_id, "wall_s": result.wall_s,
        "order": order, "settle_flush_s": flushes,
        "traces": len(result.traces), "throughput_method": prof.throughput_method,
        "by_n": {str(k): v for k, v in by_n.items()},
        "throughput": [p.to_dict() for p in prof.throughput],
        "fit": prof.fits["request"].to_dict() if "request" in prof.fits else None,
        "problems": list(prof.problems), "notes": list(result.notes),
    }


def _service_times(serve_batch: Callable[[list[str]], list[Any]], text: str, sizes: Sequence[int], reps: int,
                   device: str) -> list[dict[str, Any]]:
    rows = []
    for b in sizes:
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            serve_batch([text] * b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"batch": b, "median_s": med, "min_s": min(times), "items_per_s": b / med})
    return rows


def _open(args: argparse.Namespace, ex: Any, text: str, serve_batch: Callable[[list[str]], list[Any]],
          session: Any, capacity: float) -> dict[str, Any]:
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    rates = tuple(sorted({float(f"{capacity * f:.3g}") for f in args.rate_fractions}))
    spec = OpenLoopSpec(rates=rates, duration_s=args.open_window, warmup_s=args.open_warmup, repeats=args.open_repeats,
                        arrivals="poisson", seed=0, max_in_flight=args.max_in_flight,
                        switch_interval_s=0.0005, sweep_id=f"gpu-open-{int(time.time())}")
    with ServingLoop(serve_batch=serve_batch, model=ex.name, workers=1, max_batch=args.max_batch,
                     max_wait_s=args.max_wait_ms / 1000.0, executor="torch", device=args.device) as loop:
        result = run_open_loop(lambda seq: loop.call(text), spec, session=session, on_error="record")
    ol = result.profile.open_loop
    assert ol is not None
    return {
        "capacity_closed_loop": capacity, "rate_fractions": list(args.rate_fractions), "rates": list(rates),
        "window_s": args.open_window, "warmup_s": args.open_warmup, "repeats": args.open_repeats,
        "max_in_flight": args.max_in_flight, "sweep_id": result.sweep_id, "wall_s": result.wall_s,
        "traces": len(result.traces), "open_loop": ol.to_dict(),
        "runs": [r.to_dict() for r in result.runs], "problems": list(result.profile.problems),
        "notes": list(result.notes),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import vauban_trace as vt
    from vauban_trace.cli._demo import _quiet_transformers
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch.tiny import SENTENCES, cached_tiny_model

    t_start = time.perf_counter()
    _quiet_transformers()
    result: dict[str, Any] = {"machine": _machine(args.device), "command": " ".join(sys.argv)}

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        Path(args.out).write_text(json.dumps(result, indent=2, allow_nan=False, default=str))

    directory = cached_tiny_model("llama", hidden_size=args.hidden, num_layers=args.layers,
                                  max_position_embeddings=1024)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    ex = TorchExecutor.from_pretrained(directory, device=args.device, dtype=dtype)
    ex.load()
    tok = ex._require().tokenizer
    ids = tok(" ".join(SENTENCES * 8), add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    text = tok.decode(ids)
    n_params = sum(p.numel() for p in ex.model.parameters())
    result["model"] = {"family": "llama", "hidden": args.hidden, "layers": args.layers, "dtype": dtype,
                       "parameters": n_params, "prompt_tokens": len(tok(text)["input_ids"]),
                       "new_tokens": args.new_tokens, "build_and_load_s": time.perf_counter() - t_start}
    result["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                          if k not in ("write_docs", "pytest_line")}

    def serve_batch(prompts: list[str]) -> list[Any]:
        out = ex.run(ex.make_request(prompts), prompts=prompts, max_new_tokens=args.new_tokens, ignore_eos=True)
        return [out] * len(prompts)

    store = tempfile.mkdtemp(prefix="vauban-gpu-sweeps-")
    session = vt.configure(store_dir=store, service_name="vauban-gpu-sweeps")
    try:
        # warm every batch shape once (kernel selection, allocator), outside any measurement
        t0 = time.perf_counter()
        for b in range(1, args.max_batch + 1):
            serve_batch([text] * b)
        _sync(args.device)
        sizes = sorted({1, min(4, args.max_batch), min(16, args.max_batch), args.max_batch})
        result["service"] = _service_times(serve_batch, text, sizes, args.service_reps, args.device)
        result["service_warm_s"] = time.perf_counter() - t0
        save()
        print(f"[{time.perf_counter() - t_start:.0f}s] service times: {result['service']}", flush=True)
        result["batching"] = _closed("batching", {"max_batch": args.max_batch, "max_wait_s": args.max_wait_ms / 1000.0},
                                     args, ex, text, serve_batch, session)
        save()
        print(f"[{time.perf_counter() - t_start:.0f}s] batching sweep done", flush=True)
        result["no_batching"] = _closed("no_batching", {"max_batch": 1}, args, ex, text, serve_batch, session)
        save()
        print(f"[{time.perf_counter() - t_start:.0f}s] no-batching sweep done", flush=True)
        meds = [v["x_median"] for v in result["batching"]["by_n"].values() if v["x_median"] is not None]
        if not meds:
            result["open"] = {"skipped": "no closed-loop throughput to place the rates"}
        elif time.perf_counter() - t_start > args.open_deadline_s:
            result["open"] = {"skipped": f"closed-loop part took {time.perf_counter() - t_start:.0f} s, over "
                                         f"--open-deadline-s {args.open_deadline_s:g}"}
        else:
            result["open"] = _open(args, ex, text, serve_batch, session, max(meds))
        save()
        print(f"[{time.perf_counter() - t_start:.0f}s] open-loop sweep done", flush=True)
    finally:
        session.shutdown()
        if args.device == "cuda":
            result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        save()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_sweeps.json")
    parser.add_argument("--write-docs", metavar="RESULT_JSON", help="write the docs/benchmarks.md section from a result")
    parser.add_argument("--pytest-line", default="", help="summary line of the CUDA test run, for the docs")
    parser.add_argument("--also", nargs="*", default=[], help="other results of this script, one paragraph each")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--small", action="store_true", help="tiny model and settings (a CPU check of the script)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=0)
    parser.add_argument("--values", type=_ints, default=(1, 2, 4, 8, 16, 32, 64))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=2.0, help="seconds measured per closed-loop run")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up requests per client and run")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--service-reps", type=int, default=7)
    parser.add_argument("--rate-fractions", type=_floats, default=(0.25, 0.5, 0.65, 0.8, 1.0, 1.3))
    parser.add_argument("--open-window", type=float, default=2.0)
    parser.add_argument("--open-warmup", type=float, default=0.5)
    parser.add_argument("--open-repeats", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--settle", action="store_true",
                        help="closed loop: flush the exporter at the start of each run's warm-up")
    parser.add_argument("--open-deadline-s", type=float, default=360.0,
                        help="skip the open loop when the run is already this old")
    args = parser.parse_args(argv)
    if args.settle and args.warmup < 1:
        parser.error("--settle needs --warmup >= 1 (the settling call is a warm-up call)")
    if args.write_docs:
        result = json.loads(Path(args.write_docs).read_text())
        others = [json.loads(Path(p).read_text()) for p in args.also]
        write_cmd = f"python bench/gpu_sweeps.py --write-docs {args.write_docs}" + (
            f" --also {' '.join(args.also)}" if args.also else "") + (" --pytest-line '...'" if args.pytest_line else "")
        replace_section(f"## {SECTION}", markdown(result, args.pytest_line or result.get("pytest_line", ""),
                                                  write_cmd=write_cmd, also=others))
        return 0
    if args.small:
        args.hidden, args.layers, args.prompt_tokens = 64, 2, 16
        args.values, args.repeats, args.window, args.max_batch = (1, 2, 4, 8), 2, 0.4, 4
        args.service_reps, args.rate_fractions, args.open_window, args.open_repeats = 3, (0.5, 1.3), 0.5, 1
        args.open_warmup = 0.2
    result = run(args)
    print(markdown(result, command=" ".join(["python bench/gpu_sweeps.py"] + sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
