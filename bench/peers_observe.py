"""Observation helpers of ``bench_peers.py``: what each tool produced, and where CPU time went.

- :func:`observe`: one untimed request per mode; spans each exporter received, stage spans, token
  counts on spans, saved tensors, artifacts and digests, read-back from the embedded store; each
  as a cell of the capability table in docs/benchmarks.md ("## Peers").
- :func:`capture_threads`: CPU per thread (``/proc/self/task``) over a few ``vt_capture`` requests.
- :func:`dot_check`: CPU per thread of one ``np.dot`` on an activation-sized vector;
  :func:`blas_name`: numpy's BLAS.
- ``_where_openllmetry_spends``: cProfile of one OpenLLMetry-instrumented pipeline request.

``b`` is a ``bench_peers.Bench`` (model, inputs, ``installed(mode)``, ``request(mode)``,
``timed(mode)``, ``last`` outputs, ``session``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from vauban_trace import semconv as sc

CAPTURE_LAYERS = (0, 1)


def observe(b: Any, memory: Any) -> dict[str, dict[str, str]]:
    """One untimed request per mode; what each tool produced, as table cells."""
    obs: dict[str, dict[str, str]] = {}
    for mode in b.args.modes:
        if mode in ("plain", "pipe_plain"):
            continue
        memory.clear()
        if b.ol is not None:
            b.ol[1].clear()
        with b.installed(mode):
            b.request(mode)
        if mode.startswith("vt_") or mode == "pipe_vt_traced":
            obs[mode] = _observe_vt(b, memory)
        elif mode == "pipe_openllmetry":
            obs[mode] = _observe_openllmetry(b)
        elif mode == "profiler":
            events = b.last["profiler"].events()
            obs[mode] = {
                "spans": "0 (no OpenTelemetry output)", "stages": "no (op events, no stage grouping)",
                "tokens": "no", "tensors": f"no; {len(events)} CPU op events in memory",
                "pointers": "no", "readback": "n/a: no spans (a `profile` object in the process)",
            }
        elif mode == "nnsight":
            saved, logits, result = b.last["nnsight"]
            shapes = ", ".join(str(tuple(_tensor(s).shape)) for s in saved)
            obs[mode] = {
                "spans": "0 (no OpenTelemetry output)", "stages": "no",
                "tokens": f"no (output ids tensor {tuple(result.shape)} returned)",
                "tensors": f"layers {list(CAPTURE_LAYERS)}: {shapes}; logits {tuple(_tensor(logits).shape)} (in memory)",
                "pointers": "no", "readback": "n/a: no spans (saved tensors in the process)",
            }
    return obs


def _tensor(x: Any) -> torch.Tensor:
    got = x[0] if isinstance(x, tuple) else x
    assert isinstance(got, torch.Tensor), type(got)
    return got


def _observe_vt(b: Any, memory: Any) -> dict[str, str]:
    b.session.force_flush()
    spans = memory.get_finished_spans()
    traces = {s.context.trace_id for s in spans}
    if len(traces) != 1:
        return {"spans": f"{len(spans)} spans in {len(traces)} traces (expected one trace)"}
    root = next(s for s in spans if s.parent is None)
    stages = [str(s.attributes.get(sc.STAGE)) for s in sorted(spans, key=lambda s: s.start_time) if s.attributes.get(sc.STAGE)]
    tin = root.attributes.get(sc.GEN_AI_USAGE_INPUT_TOKENS)
    tout = root.attributes.get(sc.GEN_AI_USAGE_OUTPUT_TOKENS)
    trace = b.session.read_trace(format(next(iter(traces)), "032x"))
    arts = trace.artifacts
    kinds = sorted({a.kind for a in arts})
    digests = [a.digest for a in arts if a.digest]
    example = (digests[0][:20] + "…") if digests else "none"
    return {
        "spans": f"{len(spans)} (root `{root.name}`)",
        "stages": "yes: " + ", ".join(f"`{s}`" for s in stages),
        "tokens": f"yes: input {tin}, output {tout}",
        "tensors": (f"{len(arts)} artifacts ({', '.join(kinds)}): " + ", ".join(
            f"{a.kind}{'' if a.layer is None else f' L{a.layer}'} {tuple(a.shape)}" for a in arts)) if arts else "no (not asked)",
        "pointers": f"yes: {len(digests)} digests, e.g. `{example}`" if digests else "no (no artifacts asked)",
        "readback": f"yes: embedded store returned {len(trace.spans)} spans, {len(arts)} artifacts",
    }


def _observe_openllmetry(b: Any) -> dict[str, str]:
    spans = b.ol[1].get_finished_spans()
    b.ol_profile = _where_openllmetry_spends(b)
    names = sorted({f"`{s.name}`" for s in spans})
    keys = sorted({k for s in spans for k in (s.attributes or {})})
    token_keys = [k for k in keys if "token" in k or "usage" in k]
    content = [k for k in keys if k.endswith(".content")]
    return {
        "spans": f"{len(spans)} ({', '.join(names)})",
        "stages": "no (one span around the pipeline call)",
        "tokens": ("yes: " + ", ".join(token_keys)) if token_keys else "no token-count attribute",
        "tensors": "no; prompt/completion text on the span" + (f" ({', '.join(content)})" if content else ""),
        "pointers": "no",
        "readback": "not exercised (in-memory exporter)",
    }


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process (/proc/self/task), by Python thread name or native name."""
    import threading

    hz = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid)) or f"native thread `{comm}` {tid} (no Python thread)"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return out


def capture_threads(b: Any, n: int = 8) -> dict[str, float]:
    """ms of CPU per ``vt_capture`` request (request + flush), per thread, over ``n`` requests."""
    if not Path("/proc/self/task").is_dir():
        return {}
    b.timed("vt_capture")
    before = _thread_cpu()
    for _ in range(n):
        b.timed("vt_capture")
    after = _thread_cpu()
    got = {k: (v - before.get(k, 0.0)) * 1000 / n for k, v in after.items()}
    return {k: v for k, v in sorted(got.items(), key=lambda kv: -kv[1]) if v >= 1.0}


def blas_name() -> str:
    import numpy as np

    try:
        return str(np.__config__.CONFIG["Build Dependencies"]["blas"]["name"])
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def dot_check(size: int, n: int = 10) -> dict[str, float]:
    """CPU per thread of one ``np.dot(v, v)`` on ``size`` float64 values (``summarize_array``'s
    l2_norm of an activation that size), calls 50 ms apart so each starts from a sleeping BLAS pool."""
    import numpy as np

    v = np.random.default_rng(0).random(size)
    np.dot(v, v)
    time.sleep(0.2)
    before = _thread_cpu()
    for _ in range(n):
        np.dot(v, v)
        time.sleep(0.05)
    after = _thread_cpu()
    return {k: (t - before.get(k, 0.0)) * 1000 / n for k, t in after.items() if t - before.get(k, 0.0) > 0}


def _where_openllmetry_spends(b: Any) -> dict[str, Any]:
    """cProfile one more instrumented pipeline request: total, and time inside ``__dir__`` calls."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    with b.installed("pipe_openllmetry"):
        prof.enable()
        t0 = time.perf_counter()
        b.request("pipe_openllmetry")
        total = time.perf_counter() - t0
        prof.disable()
    stats: Any = getattr(pstats.Stats(prof), "stats")  # noqa: B009 (untyped in typeshed)
    in_dir = sum(v[3] for k, v in stats.items() if k[2] == "__dir__")
    callers = sorted({c[2] for k, v in stats.items() if k[2] == "<built-in method builtins.dir>" for c in v[4]})
    import transformers

    t0 = time.perf_counter()
    dir(transformers)
    alone = time.perf_counter() - t0
    return {"total_ms": total * 1000, "dir_ms": in_dir * 1000, "dir_alone_ms": alone * 1000, "dir_callers": callers}
