"""Open-loop generator, thread vs process: what each can certify as sustained on this machine.

The question (docs/sweep.md, "Out-of-process generator"): the open-loop driver's generator thread
shares the interpreter lock with the service, so its own lateness, not the service, limits the rate
that can be certified as sustained. Does the child-process generator
(``OpenLoopSpec(generator="process")``) move that limit, and what does the hand-off cost?

1. **Channel**: a child process (``python -I -S``) writes 24-byte records (sequence, scheduled,
   sent) at ``--channel-rate`` per second for ``--channel-s`` seconds; one receiver thread here
   stamps each on arrival. Channels: an ``AF_UNIX`` socket pair and a pipe (blocking reads: the
   receiver holds no interpreter lock while it waits) and a shared-memory ring polled every
   100 us (the receiver must poll, taking the lock each time). Each with this process idle and
   with a thread spinning in pure Python (it holds the lock but for the switch interval, 0.5 ms).
   Latency = receive - send on ``time.monotonic`` (one clock for both processes on Linux), and the
   receiver's CPU time.
2. **Sweeps**: for each service, ``run_open_loop`` with the thread generator and with the process
   generator, one after the other in the same process, against a ``ServingLoop`` (one worker, no
   batching) whose served callable takes about ``--service-ms``:

   - ``python``: a pure-Python loop (holds the interpreter lock: the worst case for a generator
     thread);
   - ``torch``: ``torch.mm`` of 128 x 128 float32 matrices, one torch thread (releases the lock
     inside each op);
   - ``sleep``: ``time.sleep`` (releases the lock, no CPU).

   Poisson arrivals (seed 0), ``--window`` s after ``--warmup`` s, ``--repeats`` runs per rate
   (interleaved), cap 64, switch interval 0.5 ms (the CLI's default), ``gc.freeze()`` after the
   set-up. Reported per service and generator: the highest rate sustained, the lowest saturated,
   and per rate the achieved throughput, the generator's lateness (thread: its hand-off to a
   sender minus scheduled; process: its send minus scheduled, on its own clock) p50/p95/p99,
   the lateness the verdict used (thread: root start - scheduled), the hand-off (process:
   receive - send) p95, and the verdicts.

::

    OMP_NUM_THREADS=1 python bench/bench_open_loop_generators.py                 # ~6 min on 2 cores
    python bench/bench_open_loop_generators.py --out bench/results/open_loop_generators.json \\
        --markdown bench/results/open_loop_generators.md                       # + the docs section text
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdoc import cpu_model  # noqa: E402

REC = struct.Struct("<qqq")
RATES = (50, 100, 150, 200, 250, 300, 400, 500, 600)

# ---------------------------------------------------------------------------------------------
# 1. channels

_WRITER = r"""
import os, socket, struct, sys, time
from multiprocessing import shared_memory
REC = struct.Struct("<qqq")
mode, fd, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
n = int(rate * seconds)
if mode == "shm":
    from multiprocessing import resource_tracker
    shm = shared_memory.SharedMemory(name=sys.argv[5])
    resource_tracker.unregister(shm._name, "shared_memory")  # the parent owns (and unlinks) it
    buf = shm.buf
    cap = (len(buf) - 16) // 24
else:
    out = socket.socket(fileno=fd) if mode == "socketpair" else None
base = time.monotonic_ns() + 20_000_000
for i in range(n):
    due = base + int(i * 1e9 / rate)
    while (w := due - time.monotonic_ns()) > 0:
        time.sleep(w / 1e9)
    rec = REC.pack(i, due, time.monotonic_ns())
    if mode == "socketpair":
        out.sendall(rec)
    elif mode == "pipe":
        os.write(fd, rec)
    else:
        slot = 16 + (i % cap) * 24
        buf[slot:slot + 24] = rec
        buf[0:8] = struct.pack("<q", i + 1)   # publish after the record
rec = REC.pack(-1, 0, 0)
if mode == "socketpair":
    out.sendall(rec)
elif mode == "pipe":
    os.write(fd, rec)
else:
    buf[8:16] = struct.pack("<q", 1)   # the end, after the last count was published
    del buf
    shm.close()
"""


def _spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def _channel(mode: str, rate: float, seconds: float, busy: bool) -> dict[str, Any]:
    lat: list[float] = []
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,), daemon=True) if busy else None
    shm = None
    keep: list[Any] = []
    if mode == "socketpair":
        mine, theirs = socket.socketpair()
        fd = theirs.fileno()
        extra: list[str] = []
        keep = [theirs]
    elif mode == "pipe":
        r, fd = os.pipe()
        extra = []
    else:
        shm = shared_memory.SharedMemory(create=True, size=16 + 24 * 65536)
        assert shm.buf is not None
        shm.buf[0:16] = bytes(16)
        fd = -1
        extra = [shm.name]
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRITER, mode, str(fd), str(rate), str(seconds), *extra],
                            pass_fds=(fd,) if fd >= 0 else ())
    for k in keep:
        k.close()
    if mode == "pipe":
        os.close(fd)
    if spinner is not None:
        spinner.start()
    cpu0 = time.thread_time()
    if mode == "socketpair":
        buf = bytearray()
        done = False
        while not done:
            chunk = mine.recv(65536)
            now = time.monotonic_ns()
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 24:
                seq, _, sent = REC.unpack_from(buf)
                del buf[:24]
                if seq < 0:
                    done = True
                    break
                lat.append((now - sent) / 1e9)
        mine.close()
    elif mode == "pipe":
        pbuf = b""
        done = False
        while not done:
            chunk = os.read(r, 65536)
            now = time.monotonic_ns()
            if not chunk:
                break
            pbuf += chunk
            while len(pbuf) >= 24:
                seq, _, sent = REC.unpack_from(pbuf)
                pbuf = pbuf[24:]
                if seq < 0:
                    done = True
                    break
                lat.append((now - sent) / 1e9)
        os.close(r)
    else:
        assert shm is not None and shm.buf is not None
        ring = shm.buf
        seen = 0
        cap = (len(ring) - 16) // 24
        while True:
            (ended,) = struct.unpack_from("<q", ring, 8)
            (published,) = struct.unpack_from("<q", ring, 0)
            now = time.monotonic_ns()
            while seen < published:
                _, _, sent = REC.unpack_from(ring, 16 + (seen % cap) * 24)
                lat.append((now - sent) / 1e9)
                seen += 1
            if ended:
                break
            time.sleep(0.0001)
    cpu = time.thread_time() - cpu0
    stop.set()
    if spinner is not None:
        spinner.join()
    proc.wait()
    if shm is not None:
        del ring
        shm.close()
        shm.unlink()
    v = np.array(lat)
    return {"channel": mode, "busy": busy, "n": int(v.size), "p50_us": float(np.percentile(v, 50) * 1e6),
            "p95_us": float(np.percentile(v, 95) * 1e6), "p99_us": float(np.percentile(v, 99) * 1e6),
            "max_us": float(v.max() * 1e6), "receiver_cpu_ms_per_s": cpu / seconds * 1e3}


# ---------------------------------------------------------------------------------------------
# 2. sweeps


def _services(service_s: float) -> dict[str, Callable[[object], object]]:
    import torch

    torch.set_num_threads(1)

    def py_loop(n: int) -> int:
        x = 0
        for i in range(n):
            x += i * i % 7
        return x

    t = time.perf_counter()
    py_loop(100_000)
    per = (time.perf_counter() - t) / 100_000
    n_py = max(1, round(service_s / per))
    a = torch.randn(128, 128)
    b = torch.randn(128, 128)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(200):
        torch.mm(a, b)
    per_mm = (time.perf_counter() - t) / 200
    n_mm = max(1, round(service_s / per_mm))

    def python(_: object) -> object:
        return py_loop(n_py)

    def torch_mm(_: object) -> object:
        for _ in range(n_mm):
            torch.mm(a, b)
        return None

    def sleep(_: object) -> object:
        time.sleep(service_s)
        return None

    return {"python": python, "torch": torch_mm, "sleep": sleep}


def _timed(fn: Callable[[object], object], n: int = 50) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn(None)
        samples.append(time.perf_counter() - t)
    return float(np.median(samples))


def _sweep(session: Any, service: str, fn: Callable[[object], object], generator: str, args: argparse.Namespace,
           rates: tuple[float, ...]) -> dict[str, Any]:
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    spec = OpenLoopSpec(rates=rates, duration_s=args.window, warmup_s=args.warmup, repeats=args.repeats, seed=0,
                        max_in_flight=64, switch_interval_s=0.0005, generator=generator,
                        sweep_id=f"gen-{service}-{generator}-{os.getpid()}")
    with ServingLoop(serve=fn, model=f"bench-{service}", workers=1) as loop:
        t0 = time.perf_counter()
        result = run_open_loop(lambda seq: loop.call(None), spec, session=session, on_error="record")
        wall = time.perf_counter() - t0
    ol = result.profile.open_loop
    assert ol is not None
    per_rate: list[dict[str, Any]] = []
    for rate in rates:
        recs = [r for r in result.requests if r.value == rate]
        pts = [p for p in ol.points if p.value == rate]
        gl = np.array([r.generator_lateness_s for r in recs if r.generator_lateness_s is not None])
        ho = np.array([r.handoff_s for r in recs if r.handoff_s is not None])
        runs = [lr for lr in result.runs if lr.value == rate]
        per_rate.append({
            "rate": rate,
            "achieved": [p.achieved for p in pts],
            "generator_lateness_ms": {q: float(np.percentile(gl, q) * 1e3) for q in (50, 95, 99)} if gl.size else None,
            "verdict_lateness_p95_ms": [None if p.lateness.p95 is None else p.lateness.p95 * 1e3 for p in pts],
            "lateness_from": sorted({p.lateness_from for p in pts}),
            "handoff_p95_ms": [None if p.handoff is None or p.handoff.p95 is None else p.handoff.p95 * 1e3
                               for p in pts],
            "sender_pickup_p95_ms": float(np.percentile(ho, 95) * 1e3) if generator == "thread" and ho.size else None,
            "response_p50_ms": [None if p.response.p50.median is None else p.response.p50.median * 1e3 for p in pts],
            "dropped": [p.dropped for p in pts],
            "max_write_ms": [None if lr.generator_max_block_s is None else lr.generator_max_block_s * 1e3
                             for lr in runs],
            "verdicts": ["sustained" if p.sustained else "+".join(
                w for w, on in (("late", p.late), ("saturated", p.saturated), ("failed", p.failed > 0)) if on)
                for p in pts],
        })
    return {"service": service, "generator": generator, "highest_sustained": ol.highest_sustained,
            "lowest_saturated": ol.lowest_saturated, "wall_s": wall, "traces": len(result.traces),
            "per_rate": per_rate}


# ---------------------------------------------------------------------------------------------
# report


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    a = res["args"]
    lines = [
        "## Open-loop generator: thread vs process", "",
        f"Command: `{res['command']}` (saved: `bench/results/open_loop_generators.json`).", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs: load average {m['load_before']} before, "
        f"{m['load_after']} after), Python {m['python']}, {m['date']}; whole run {res['wall_s']:.0f} s.", "",
        "### The channel", "",
        f"A child process writes 24-byte records at {a['channel_rate']:g}/s for {a['channel_s']:g} s; a receiver "
        "thread here stamps them (receive - send, `time.monotonic` in both processes). `busy`: a thread of the "
        "receiving process spins in pure Python meanwhile (switch interval 0.5 ms).", "",
        "| channel | receiver process | p50 | p95 | p99 | max | receiver CPU |", "|---|---|---|---|---|---|---|",
    ]
    for c in res["channels"]:
        lines.append(f"| {c['channel']} | {'busy' if c['busy'] else 'idle'} | {c['p50_us']:.0f} us | "
                     f"{c['p95_us']:.0f} us | {c['p99_us']:.0f} us | {c['max_us']:.0f} us | "
                     f"{c['receiver_cpu_ms_per_s']:.1f} ms/s |")
    lines += [
        "", "### Sweeps", "",
        f"One `ServingLoop` worker, no batching; served callable about {a['service_ms']:g} ms (measured alone: "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in res["service_alone_s"].items())
        + f"); Poisson arrivals (seed 0), {a['window']:g} s windows after {a['warmup']:g} s of warm-up, "
        f"{a['repeats']} runs per rate (interleaved), cap 64, switch interval 0.5 ms, `gc.freeze()` after the set-up; "
        "thread and process sweeps of one service back to back in one process.", "",
        "| service | generator | highest sustained | lowest saturated |", "|---|---|---|---|",
    ]
    for s in res["sweeps"]:
        hs = "none" if s["highest_sustained"] is None else f"{s['highest_sustained']:g}/s"
        ls = "none" if s["lowest_saturated"] is None else f"{s['lowest_saturated']:g}/s"
        lines.append(f"| {s['service']} | {s['generator']} | {hs} | {ls} |")
    lines += [
        "", "Per rate (runs joined with `/`). Generator lateness: thread, its hand-off to a sender minus the "
        "scheduled time; process, its send minus the scheduled time on its own clock (ms, over every measured "
        "request of the rate). Verdict lateness p95: what the late test used (thread: root start - scheduled, "
        "process: send - scheduled). Hand-off p95: process only, receive - send.", "",
        "| service | generator | rate | achieved | generator lateness p50 / p95 / p99 | verdict lateness p95 | "
        "hand-off p95 | response p50 | refused | verdict |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in res["sweeps"]:
        for r in s["per_rate"]:
            gl = r["generator_lateness_ms"]
            g = "" if gl is None else f"{gl[50]:.2f} / {gl[95]:.2f} / {gl[99]:.2f}"
            lines.append(
                f"| {s['service']} | {s['generator']} | {r['rate']:g}/s | "
                + " / ".join("" if x is None else f"{x:.0f}" for x in r["achieved"]) + f" | {g} | "
                + " / ".join(_ms(x) for x in r["verdict_lateness_p95_ms"]) + " | "
                + " / ".join(_ms(x) for x in r["handoff_p95_ms"]) + " | "
                + " / ".join(_ms(x) for x in r["response_p50_ms"]) + " | "
                + " / ".join(str(x) for x in r["dropped"]) + " | " + " / ".join(r["verdicts"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--service-ms", type=float, default=2.0)
    p.add_argument("--rates", default=",".join(str(r) for r in RATES))
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--services", default="python,torch,sleep")
    p.add_argument("--channel-rate", type=float, default=1000.0)
    p.add_argument("--channel-s", type=float, default=2.0)
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    rates = tuple(float(x) if "." in x else int(x) for x in args.rates.split(","))
    started = time.perf_counter()
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        channels = [_channel(mode, args.channel_rate, args.channel_s, busy)
                    for busy in (False, True) for mode in ("socketpair", "pipe", "shm")]
    finally:
        sys.setswitchinterval(old)
    for c in channels:
        print(json.dumps(c), flush=True)

    # the SDK's export queue holds 2048 spans by default: a sweep of a few hundred requests/s would
    # drop spans (and traces: named in the notes, missing from the profile) without a larger one
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", "200000")
    import vauban_trace as vt

    services = _services(args.service_ms / 1e3)
    alone = {k: _timed(fn) for k, fn in services.items()}
    print("service alone:", {k: round(v * 1e3, 3) for k, v in alone.items()}, flush=True)
    sweeps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as store:
        session = vt.configure(store_dir=store, service_name="bench-open-loop-generators")
        gc.collect()
        gc.freeze()
        try:
            for name in args.services.split(","):
                for generator in ("thread", "process"):
                    s = _sweep(session, name, services[name], generator, args, rates)
                    print(json.dumps({k: v for k, v in s.items() if k != "per_rate"}), flush=True)
                    sweeps.append(s)
        finally:
            session.shutdown()
    res = {
        "command": "OMP_NUM_THREADS=1 python bench/bench_open_loop_generators.py" + (
            f" {' '.join(argv)}" if argv else (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_before": load_before, "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
                    "date": time.strftime("%Y-%m-%d", time.gmtime())},
        "args": vars(args), "channels": channels, "service_alone_s": alone, "sweeps": sweeps,
        "wall_s": time.perf_counter() - started,
    }
    md = _markdown(res)
    print(md)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
