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

SECTION = "GPU sweeps (concurrency and arrival rate)"
COMMAND = "OTEL_BSP_MAX_QUEUE_SIZE=500000 python3 bench/gpu_sweeps.py --settle --out result.json"


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


# ---------------------------------------------------------------------------------------------- report


def _ms(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _rate(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}/s"


def _iv(fit: dict[str, Any], name: str, key: str) -> str:
    v = fit.get(key)
    if v is None:
        return "none"
    iv = (fit.get("intervals") or {}).get(name)
    return f"{v:.4g} [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else f"{v:.4g}"


def fit_lines(label: str, fit: dict[str, Any] | None) -> list[str]:
    if fit is None:
        return [f"- {label}: no fit (no request stage)"]
    if fit["status"] != "fitted":
        return [f"- {label}: **refused**: {fit['reason']}"]
    peak = "none (kappa = 0)" if fit.get("peak_n") is None else f"{fit['peak_n']:.3g}"
    if fit.get("peak_interval"):
        lo, hi = fit["peak_interval"]
        peak += f" [{lo:.3g}, {hi:.3g}]"
    lof = fit.get("lack_of_fit") or {}
    lof_s = lof.get("result", "n/a")
    if lof.get("p") is not None:
        lof_s += f" (F = {lof['f']:.3g}, p = {lof['p']:.3g})"
    return [f"- {label}: lambda {_iv(fit, 'lambda', 'lambda')}, sigma {_iv(fit, 'sigma', 'sigma')}, "
            f"kappa {_iv(fit, 'kappa', 'kappa')}, peak N* {peak}, R² {fit['r2']:.3f}, weighting {fit['weighting']}, "
            f"lack of fit: {lof_s}" + (f"; notes: {fit['reason']}" if fit.get("reason") else "")]


_REASON_TAGS = (("fell behind", "lateness"), ("after the window", "sent late"), ("achieved", "throughput"),
                ("in-flight cap", "cap"), ("backlog", "backlog"), ("failed", "failures"))


def _x_medians(sweep: dict[str, Any]) -> dict[int, float]:
    return {int(n): v["x_median"] for n, v in sweep["by_n"].items() if v["x_median"] is not None}


def _fit_short(fit: dict[str, Any] | None) -> str:
    if fit is None or fit["status"] != "fitted":
        return "refused" if fit is None else f"refused ({fit['reason']})"
    return (f"lambda {fit['lambda']:.3g}, sigma {fit['sigma']:.3g}, kappa {fit['kappa']:.3g}, R² {fit['r2']:.2f}, "
            f"lack of fit {(fit.get('lack_of_fit') or {}).get('result', 'n/a')}")


def also_line(other: dict[str, Any]) -> str:
    """One paragraph summarising another run of the script (another call, maybe another host)."""
    m, st = other["machine"], other["settings"]
    parts = [f"Same script {'with' if st.get('settle') else 'without'} `--settle` in an earlier call "
             f"(a fresh {m['card']} machine, {m['date']}, {other.get('elapsed_s', 0):.0f} s):"]
    if other.get("service"):
        parts.append("served callable alone " + ", ".join(
            f"B = {r['batch']}: {_ms(r['median_s'])}" for r in other["service"]) + ";")
    for key, name in (("batching", "batching"), ("no_batching", "no batching")):
        if other.get(key):
            xs = _x_medians(other[key])
            parts.append(f"{name} X(N) " + ", ".join(f"{n}: {x:.3g}" for n, x in sorted(xs.items())) +
                         f" req/s, USL {_fit_short(other[key]['fit'])};")
    op = other.get("open")
    if op and "open_loop" in op:
        ol = op["open_loop"]
        parts.append(f"open loop at {', '.join(f'{r:g}' for r in op['rates'])}/s: highest sustained "
                     f"{_rate(ol['highest_sustained']) or 'none'}, lowest saturated {_rate(ol['lowest_saturated']) or 'none'}.")
    return " ".join(parts)


def reading(result: dict[str, Any]) -> list[str]:
    """Bullets computed from the result (no number typed in by hand)."""
    out: list[str] = []
    b, nb, st = result.get("batching"), result.get("no_batching"), result["settings"]
    svc = {r["batch"]: r for r in result.get("service", [])}
    if b:
        xs = _x_medians(b)
        if xs:
            n_top = max(xs, key=lambda n: xs[n])
            n1 = min(xs)
            top = svc.get(st["max_batch"])
            bt = b["by_n"][str(n_top)]["batch"] or {}
            out.append(
                f"- Dynamic batching: X grows from {xs[n1]:.3g} req/s at N = {n1} to {xs[n_top]:.3g} req/s at N = {n_top} "
                f"({xs[n_top] / (n_top / n1 * xs[n1]):.0%} of linear scaling from N = {n1}). The model is launch-bound "
                f"at this size (the served callable alone: " + ", ".join(
                    f"{_ms(r['median_s'])} for B = {k}" for k, r in sorted(svc.items())) +
                "), so a batch costs little more than one request; "
                + (f"at B = {st['max_batch']} it could serve {top['items_per_s']:.4g} items/s alone, " if top else "")
                + f"while the loop at N = {n_top} reached {xs[n_top]:.3g} req/s with a median batch stage of "
                f"{_ms(bt.get('duration_median_s'))} and a median response of {_ms(b['by_n'][str(n_top)]['response_median_s'])}: "
                "the rest lies outside the served call (the N client threads, the serving loop, the spans and their "
                "export share one interpreter lock with the model's launches). Past N = max batch the batch size is capped and "
                "the queue stage grows.")
    if nb:
        xs = _x_medians(nb)
        stage = [v["batch"]["duration_median_s"] for v in nb["by_n"].values() if v.get("batch")]
        if xs and stage:
            out.append(
                f"- No batching: X stays between {min(xs.values()):.3g} and {max(xs.values()):.3g} req/s for every N "
                f"(1 / the batch stage's median {_ms(statistics.median(stage))} = {1 / statistics.median(stage):.3g}/s) "
                "and the response time grows like N times the service time, in the queue stage. The USL fit "
                "says so with sigma at its upper bound 1 (fully serial) and a low R² (X is flat: nothing to explain "
                "but scatter); its kappa and peak mean nothing here.")
    spread = [(max(v["x_runs"]) / min(v["x_runs"]), int(n), sw["label"]) for sw in (b, nb) if sw
              for n, v in sw["by_n"].items() if len(v["x_runs"]) > 1 and min(v["x_runs"]) > 0]
    if spread:
        worst = max(spread)
        out.append(f"- Runs of one N scatter: the largest max/min ratio of X over the runs of one N is {worst[0]:.2f} "
                   f"({worst[2].replace('_', ' ')}, N = {worst[1]}); the repeats and the lack-of-fit test carry that "
                   "scatter into the fit's intervals, so read those rather than the point estimates.")
    flushes = [f for v in (b, nb) if v for f in v.get("settle_flush_s", [])]
    if flushes:
        out.append(f"- `--settle`: the flush before each run took {min(flushes):.2f} to {max(flushes):.2f} s (median "
                   f"{statistics.median(flushes):.2f} s): the export kept up with the load, no run inherited a "
                   "backlog worth the name.")
    op = result.get("open")
    if op and "open_loop" in op:
        pts = op["open_loop"]["points"]
        late_ok = [p for p in pts if p["late"] and p["achieved"] is not None and
                   p["achieved"] >= 0.95 * min(p["offered_realised"], p["offered_sent"])]
        if late_ok:
            rates = sorted({f"{p['value']:g}/s" for p in late_ok})
            lat = max(p["lateness_s"]["p95"] or 0 for p in late_ok)
            out.append(
                f"- Open loop: {len(late_ok)} run(s) at {', '.join(rates)} achieved within 5 % of the load sent but were "
                f"late (the generator's p95 lateness up to {_ms(lat)}, more than the mean gap between arrivals at "
                "those rates): one Python process cannot keep a Poisson schedule of a few hundred arrivals per second "
                "to the millisecond while it also runs the clients' threads, the loop, the model's launches and the "
                "export. The verdict does not count such a run as sustained (the load offered was not the rate); "
                "`highest_sustained` is therefore a lower bound set by the instrument, and the capacity lies "
                "between it and the achieved plateau at the highest rates. To go further, send from another "
                "process and profile the stored traces (`--profile`).")
    return out


def markdown(result: dict[str, Any], pytest_line: str = "", command: str = COMMAND,
             write_cmd: str = "", also: Sequence[dict[str, Any]] = ()) -> str:
    m, mod, st = result["machine"], result["model"], result["settings"]
    lines = [f"## {SECTION}", "",
             f"Command (on the GPU machine, through the device tool): `{command}`" +
             (f", then here `{write_cmd}`" if write_cmd else "") + ".", "",
             f"Machine: {m['card']}" + (f" ({m['memory_gib']} GiB)" if "memory_gib" in m else "") +
             f", {m['cpu_count']} CPU cores, Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), "
             f"transformers {m['transformers']}, {m['date']}; whole run {result.get('elapsed_s', 0):.0f} s.", "",
             f"Model: random-initialised Llama, hidden {mod['hidden']}, {mod['layers']} layers, {mod['dtype']}, "
             f"{mod['parameters'] / 1e6:.0f} M parameters, served by `TorchExecutor.run` (its own tracing on) "
             f"behind a `ServingLoop` with one worker; every client request is a {mod['prompt_tokens']}-token prompt, "
             f"{mod['new_tokens']} new tokens (prefill only when 0). Closed loop: N in {st['values']}, "
             f"{st['repeats']} runs per N (interleaved), {st['window']} s window per run after {st['warmup']} "
             f"warm-up request(s) per client; X is the window count (completions in the clients' common window)" +
             ("; `--settle`: every run starts with `session.force_flush()` while its clients wait at their first "
              "warm-up call, so the previous run's spans are exported with no load on and no run is measured on "
              "another's export backlog." if st.get("settle") else ".")]
    if pytest_line:
        lines += ["", f"CUDA tests on the GPU machine: `python3 -m pytest -q tests/executors/torch -k "
                      f"\"cuda or intervene\" -p no:cacheprovider`: {pytest_line}"]
    if result.get("service"):
        lines += ["", "Served callable alone (one `run` of B identical prompts, CUDA synced around it):", "",
                  "| batch B | median | min | items/s |", "|---|---|---|---|"]
        for r in result["service"]:
            lines.append(f"| {r['batch']} | {_ms(r['median_s'])} | {_ms(r['min_s'])} | {r['items_per_s']:.4g} |")
    b, nb = result.get("batching"), result.get("no_batching")
    if b or nb:
        bl = f"batches up to {st['max_batch']}, wait {st['max_wait_ms']:g} ms"
        lines += ["", "### Closed loop: X(N), median over runs [min, max]", "",
                  f"| N | X, {bl} | response p50 | queue p50 | batch size p50 | X, no batching | response p50 |",
                  "|---|---|---|---|---|---|---|"]

        def cell(v: dict[str, Any] | None) -> tuple[str, str, str, str]:
            if not v:
                return "", "", "", ""
            xs = v["x_runs"]
            x = f"{v['x_median']:.4g} [{min(xs):.4g}, {max(xs):.4g}]" if xs else "unavailable"
            bs = "" if not v.get("batch") or v["batch"]["batch_size_median"] is None else f"{v['batch']['batch_size_median']:g}"
            return x, _ms(v["response_median_s"]), _ms(v["queue_median_s"]), bs
        for n in st["values"]:
            bx = cell(b["by_n"].get(str(n)) if b else None)
            nx = cell(nb["by_n"].get(str(n)) if nb else None)
            lines.append(f"| {n} | {bx[0]} | {bx[1]} | {bx[2]} | {bx[3]} | {nx[0]} | {nx[1]} |")
        lines += ["", "USL fit of the request throughput (estimate [95 % bootstrap interval]):", ""]
        if b:
            lines += fit_lines(f"batching ({b['wall_s']:.0f} s, {b['traces']} traces)", b["fit"])
        if nb:
            lines += fit_lines(f"no batching ({nb['wall_s']:.0f} s, {nb['traces']} traces)", nb["fit"])
        probs = [f"{v['label']}: {p}" for v in (b, nb) if v for p in v["problems"] + v["notes"]]
        if probs:
            lines += ["", "Problems and notes the sweeps reported:", ""] + [f"- {p}" for p in probs[:12]]
            if len(probs) > 12:
                lines.append(f"- ... and {len(probs) - 12} more (in the JSON)")
    op = result.get("open")
    if op and "skipped" in op:
        lines += ["", f"Open loop: not run ({op['skipped']})."]
    elif op:
        ol = op["open_loop"]
        lines += ["", "### Open loop against the batching loop", "",
                  f"Rates: fractions {op['rate_fractions']} of the closed-loop capacity {op['capacity_closed_loop']:.4g}/s "
                  f"(largest median X(N) above); Poisson arrivals (seed 0), {op['window_s']:g} s windows after "
                  f"{op['warmup_s']:g} s of warm-up, {op['repeats']} runs per rate, at most {op['max_in_flight']} in "
                  f"flight, switch interval 0.5 ms; {op['wall_s']:.0f} s, {op['traces']} traces.", "",
                  "| offered | run | realised | achieved | p50 | p95 | p99 | queue p50 | lateness p95 | L | refused "
                  "| verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in ol["points"]:
            verdict = "sustained" if p["sustained"] else ", ".join(
                w for w, on in (("late", p["late"]), ("saturated", p["saturated"]), ("failures", p["failed"] > 0)) if on)
            tags = [tag for key, tag in _REASON_TAGS if any(key in r for r in p["reasons"])]
            if tags and not p["sustained"]:
                verdict += " (" + ", ".join(tags) + ")"
            r, q, lt = p["response_s"], p["queue_wait_s"], p["lateness_s"]
            ll = p["littles_law_n"]["value"] if p["littles_law_n"] else None
            lines.append(
                f"| {p['value']:g}/s | {p['run']} | {_rate(p['offered_realised'])} | {_rate(p['achieved'])} | "
                f"{_ms(r['p50']['median'])} | {_ms(r['p95'])} | {_ms(r['p99'])} | "
                f"{'' if q is None else _ms(q['p50']['median'])} | {_ms(lt['p95'])} | "
                f"{'' if ll is None else f'{ll:.3g}'} | {p['dropped']} | {verdict} |")
        lines += ["", f"Highest rate sustained: {_rate(ol['highest_sustained']) or 'none'}; lowest saturated: "
                      f"{_rate(ol['lowest_saturated']) or 'none'}. USL on this axis: {ol['usl']['status']} (by design)."]
        reasons = [r for p in ol["points"] for r in p["reasons"]]
        if reasons:
            lines += ["", "Verdict reasons:", ""] + [f"- {r}" for r in reasons[:10]]
            if len(reasons) > 10:
                lines.append(f"- ... and {len(reasons) - 10} more (in the JSON)")
    for other in also:
        lines += ["", also_line(other)]
        s1, s2 = {r["batch"]: r for r in result.get("service", [])}, {r["batch"]: r for r in other.get("service", [])}
        if 1 in s1 and 1 in s2:
            lines += ["", f"The served callable alone at B = 1 took {_ms(s2[1]['median_s'])} there and "
                          f"{_ms(s1[1]['median_s'])} here: at this size the model is launch-bound, so its speed is the "
                          "host CPU's, and two machines of the same kind differ; compare X(N) within one call only."]
    bullets = reading(result)
    if bullets:
        lines += ["", "Reading the figures:", ""] + bullets
    return "\n".join(lines) + "\n"


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
