"""Where the serving loop's response tail comes from: one open-loop run with stall probes.

Diagnostic companion of ``bench/gpu_open_generators.py`` (same model and loop). While one
open-loop run goes on it records, on ``time.monotonic``:

- **interpreter stalls:** a probe thread sleeps 1 ms in a loop and logs every wake-up more than
  ``--stall-ms`` late (the interpreter lock or the machine was busy elsewhere);
- **garbage collections:** ``gc.callbacks`` start/stop of every collection, with its generation;
- **exports:** the start and end of every call of the embedded exporter's ``export``;
- **batches:** the start and end of every served batch, with its size.

Then every request whose response exceeds ``--slow-ms`` is listed with what overlapped it. ::

    OTEL_BSP_MAX_QUEUE_SIZE=500000 python bench/gpu_tail_probe.py --rate 60 --out probe.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gpu_open_generators import load_model, prefill


def _plain(call: Any, rate: float, window: float) -> list[float]:
    """Poisson arrivals at ``rate`` for ``window`` s (after 0.5 s unmeasured), each call on a pool thread;
    the response times (s) of the measured ones, timed here."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(0)
    out: list[float] = []
    lock = threading.Lock()

    def one(t_sched: float, measured: bool) -> None:
        call()
        if measured:
            with lock:
                out.append(time.monotonic() - t_sched)

    with ThreadPoolExecutor(max_workers=64) as pool:
        t0 = time.monotonic()
        t = t0
        while t < t0 + 0.5 + window:
            t += rng.expovariate(rate)
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, t, t >= t0 + 0.5)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--rate", type=float, default=60.0)
    p.add_argument("--window", type=float, default=4.0)
    p.add_argument("--generator", default="process")
    p.add_argument("--stall-ms", type=float, default=5.0)
    p.add_argument("--slow-ms", type=float, default=50.0)
    p.add_argument("--out", default="gpu_tail_probe.json")
    p.add_argument("--exporter", default="embedded", choices=("embedded", "none"),
                   help="none: configure(exporter='none', keep_local=False), spans are made but not exported")
    p.add_argument("--driver", default="sweep", choices=("sweep", "plain"),
                   help="plain: Poisson arrivals from a thread here, responses timed here (no read-back: works with "
                        "--exporter none)")
    p.add_argument("--no-probe", action="store_true", help="no stall-probe thread (it takes the GIL every 1 ms)")
    args = p.parse_args(argv)

    import vauban_trace as vt
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    ex, text = load_model(args)
    none = args.exporter == "none"
    session = vt.configure(store_dir=tempfile.mkdtemp(prefix="vauban-probe-"), service_name="vauban-probe",
                           exporter="none" if none else None, keep_local=False if none else None)
    clock = time.monotonic
    batches: list[tuple[float, float, int]] = []

    def serve_batch(prompts: list[str]) -> list[Any]:
        t = clock()
        out = prefill(ex, prompts)
        batches.append((t, clock(), len(prompts)))
        return out

    for b in range(1, args.max_batch + 1):
        serve_batch([text] * b)
    batches.clear()
    gc.collect()
    gc.freeze()

    stalls: list[tuple[float, float]] = []
    gcs: list[tuple[float, float, int]] = []
    exports: list[tuple[float, float, int]] = []
    gc_start: dict[str, float] = {}
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = clock()
            time.sleep(0.001)
            late = clock() - t - 0.001
            if late * 1000 > args.stall_ms:
                stalls.append((t, late))

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start["t"] = clock()
        elif "t" in gc_start:
            gcs.append((gc_start.pop("t"), clock(), int(info.get("generation", -1))))

    exporters = [session.embedded] if session.embedded is not None else []
    for e in exporters:
        orig = e.export

        def export(spans: Any, _orig: Any = orig) -> Any:
            t = clock()
            try:
                return _orig(spans)
            finally:
                exports.append((t, clock(), len(spans)))
        e.export = export  # type: ignore[method-assign]

    gc.callbacks.append(on_gc)
    th = threading.Thread(target=probe, daemon=True)
    if not args.no_probe:
        th.start()
    if args.driver == "plain":
        with ServingLoop(serve_batch=serve_batch, model=ex.name, workers=1, max_batch=args.max_batch,
                         max_wait_s=0.002, executor="torch", device=args.device) as loop:
            resp = _plain(lambda: loop.call(text), args.rate, args.window)
        stop.set()
        if not args.no_probe:
            th.join()
        gc.callbacks.remove(on_gc)
        session.shutdown()
        resp.sort()
        plain = {"driver": "plain", "exporter": args.exporter, "probe": not args.no_probe, "rate": args.rate,
                 "requests": len(resp), "response_p50_ms": resp[len(resp) // 2] * 1000,
                 "response_p95_ms": resp[int(0.95 * len(resp))] * 1000, "response_max_ms": resp[-1] * 1000,
                 "batches": len(batches), "batch_ms_median": statistics.median([(b - a) * 1000 for a, b, _ in batches]),
                 "batch_ms_max": max((b - a) * 1000 for a, b, _ in batches),
                 "batch_size_median": statistics.median([n for _, _, n in batches]),
                 "exports": len(exports), "export_ms_max": max(((b - a) * 1000 for a, b, _ in exports), default=0)}
        Path(args.out).write_text(json.dumps(plain, indent=1))
        print(json.dumps(plain, indent=1))
        return 0
    spec = OpenLoopSpec(rates=(args.rate,), duration_s=args.window, warmup_s=0.5, repeats=1, seed=0,
                        switch_interval_s=0.0005, generator=args.generator)
    with ServingLoop(serve_batch=serve_batch, model=ex.name, workers=1, max_batch=args.max_batch,
                     max_wait_s=0.002, executor="torch", device=args.device) as loop:
        res = run_open_loop(lambda seq: loop.call(text), spec, session=session, on_error="record")
    stop.set()
    if not args.no_probe:
        th.join()
    gc.callbacks.remove(on_gc)
    session.shutdown()

    # ArrivalRecord times are Unix ns; map them onto monotonic through one paired reading
    off = time.time() - clock()
    slow: list[dict[str, Any]] = []
    rs = [r.response_s for r in res.requests if r.response_s is not None]
    for r in res.requests:
        if r.response_s is None or r.response_s * 1000 < args.slow_ms:
            continue
        t0 = r.scheduled_unix_nano / 1e9 - off
        t1 = t0 + r.lateness_s + r.response_s

        def over(events: list[Any], t0: float = t0, t1: float = t1) -> list[Any]:
            return [list(e) for e in events if e[0] < t1 and (e[1] if len(e) == 3 else e[0] + e[1]) > t0]
        slow.append({"t": t0, "response_ms": r.response_s * 1000, "queue_ms": (r.queue_wait_s or 0) * 1000,
                     "stalls": over(stalls), "gcs": over(gcs), "exports": over(exports),
                     "batches": over(batches)})
    out: dict[str, Any] = {"exporter": args.exporter, "probe": not args.no_probe, "rate": args.rate,
                           "exporters_wrapped": len(exporters), "requests": len(rs),
           "response_p50_ms": statistics.median(rs) * 1000, "response_p95_ms": sorted(rs)[int(0.95 * len(rs))] * 1000,
           "batches": len(batches), "batch_ms_median": statistics.median([(b - a) * 1000 for a, b, _ in batches]),
           "batch_ms_max": max((b - a) * 1000 for a, b, _ in batches),
           "stalls_over": len(stalls), "stall_ms_max": max((s[1] * 1000 for s in stalls), default=0),
           "gcs": len(gcs), "gc_ms_max": max(((b - a) * 1000 for a, b, _ in gcs), default=0),
           "exports": len(exports), "export_ms_max": max(((b - a) * 1000 for a, b, _ in exports), default=0),
           "slow": slow, "all_batches": batches, "all_stalls": stalls, "all_exports": exports, "all_gcs": gcs}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("all_") and k != "slow"}, indent=1))
    for s in slow[:15]:
        print(f"slow {s['response_ms']:.0f} ms (queue {s['queue_ms']:.0f}): stalls {[(round(a, 3), round(b * 1000, 1)) for a, b in s['stalls']]}"
              f" gcs {len(s['gcs'])} exports {[(round((b - a) * 1000, 1), n) for a, b, n in s['exports']]}"
              f" batches {[(round((b - a) * 1000, 1), n) for a, b, n in s['batches']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
