"""GPU open loop, thread vs process generator: what each certifies as sustained on one card.

The question left by ``bench/gpu_sweeps.py`` (docs/benchmarks.md, "GPU sweeps"): against a
batching ``ServingLoop`` on an H200 the achieved rate levelled off near 500 requests/s, but the
in-process generator thread was late from about 131/s on, so nothing above that could be
certified. This script serves the same random-initialised Llama (hidden ``--hidden``,
``--layers`` layers, bf16, prefill of ``--prompt-tokens`` tokens) behind the same loop (one
worker, batches of up to ``--max-batch``, ``--max-wait-ms``) and runs ``run_open_loop`` with
``generator="thread"`` and ``generator="process"`` alternately (``--rounds`` rounds, the order
reversed every other round, one run per rate and round), all in one process on one card.

Rates: ``--rates``, or ``--rate-fractions`` of the capacity implied by the service time of a full
batch (``max_batch / median time of one batch of max_batch``, CUDA synced; an upper bound: the
loop's own per-request work caps it lower, about 500/s on an H200), Poisson arrivals (seed 0),
at most ``--max-in-flight`` in flight, switch interval 0.5 ms, ``gc.freeze()`` after loading.
The JSON (``--out``) keeps every point; the Markdown printed at the end is what
docs/benchmarks.md quotes::

    OTEL_BSP_MAX_QUEUE_SIZE=500000 python bench/gpu_open_generators.py --out gpu_open.json
    OMP_NUM_THREADS=1 python bench/gpu_open_generators.py --device cpu --small --out /tmp/g.json  # a CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_sweeps import _floats, _machine, _service_times, _sync


def _open(args: argparse.Namespace, ex: Any, text: str, serve_batch: Any, session: Any, rates: tuple[float, ...],
          generator: str, round_: int) -> dict[str, Any]:
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    spec = OpenLoopSpec(rates=rates, duration_s=args.window, warmup_s=args.warmup, repeats=1,
                        arrivals="poisson", seed=round_, max_in_flight=args.max_in_flight,
                        switch_interval_s=0.0005, generator=generator,
                        sweep_id=f"gpu-open-{generator}-{round_}-{int(time.time())}")
    with ServingLoop(serve_batch=serve_batch, model=ex.name, workers=1, max_batch=args.max_batch,
                     max_wait_s=args.max_wait_ms / 1000.0, executor="torch", device=args.device) as loop:
        result = run_open_loop(lambda seq: loop.call(text), spec, session=session, on_error="record")
    ol = result.profile.open_loop
    assert ol is not None
    return {"generator": generator, "round": round_, "wall_s": result.wall_s, "traces": len(result.traces),
            "open_loop": ol.to_dict(), "runs": [r.to_dict() for r in result.runs],
            "problems": list(result.profile.problems), "notes": list(result.notes)}


def load_model(args: argparse.Namespace) -> tuple[Any, str]:
    """The random Llama of ``--hidden``/``--layers`` loaded on ``--device`` (bf16 on CUDA), and a
    prompt of ``--prompt-tokens`` tokens. Shared with ``bench/gpu_tail_probe.py``."""
    from vauban_trace.cli._demo import _quiet_transformers
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch.tiny import SENTENCES, cached_tiny_model

    _quiet_transformers()
    directory = cached_tiny_model("llama", hidden_size=args.hidden, num_layers=args.layers,
                                  max_position_embeddings=1024)
    ex = TorchExecutor.from_pretrained(directory, device=args.device,
                                       dtype="bfloat16" if args.device == "cuda" else "float32")
    ex.load()
    tok = ex._require().tokenizer
    ids = tok(" ".join(SENTENCES * 8), add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    return ex, tok.decode(ids)


def prefill(ex: Any, prompts: list[str]) -> list[Any]:
    """One traced prefill of ``prompts`` (the served callable): the run's result, once per prompt."""
    out = ex.run(ex.make_request(prompts), prompts=prompts, max_new_tokens=0, ignore_eos=True)
    return [out] * len(prompts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import vauban_trace as vt

    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": _machine(args.device), "command": " ".join(sys.argv),
                              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}}

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        Path(args.out).write_text(json.dumps(result, indent=2, allow_nan=False, default=str))

    ex, text = load_model(args)

    def serve_batch(prompts: list[str]) -> list[Any]:
        return prefill(ex, prompts)

    session = vt.configure(store_dir=tempfile.mkdtemp(prefix="vauban-gpu-open-"), service_name="vauban-gpu-open")
    try:
        for b in range(1, args.max_batch + 1):
            serve_batch([text] * b)
        _sync(args.device)
        result["service"] = _service_times(serve_batch, text, sorted({1, args.max_batch}), args.service_reps,
                                           args.device)
        full = next(r for r in result["service"] if r["batch"] == args.max_batch)
        capacity = full["items_per_s"]
        rates = args.rates or tuple(sorted({float(f"{capacity * f:.3g}") for f in args.rate_fractions}))
        result["capacity_service"] = capacity
        result["rates"] = list(rates)
        save()
        print(f"[{time.perf_counter() - t_start:.0f}s] capacity {capacity:.4g}/s, rates {rates}", flush=True)
        gc.collect()
        gc.freeze()
        result["sweeps"] = []
        for r in range(args.rounds):
            order = ("thread", "process") if r % 2 == 0 else ("process", "thread")
            for gen in order:
                result["sweeps"].append(_open(args, ex, text, serve_batch, session, rates, gen, r))
                save()
                ol = result["sweeps"][-1]["open_loop"]
                print(f"[{time.perf_counter() - t_start:.0f}s] round {r} {gen}: highest sustained "
                      f"{ol['highest_sustained']}", flush=True)
    finally:
        session.shutdown()
        save()
    return result


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1000:.2f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [f"Machine: {m.get('card')}, torch {m.get('torch')}, Python {m.get('python')}, {m.get('cpu_count')} CPUs; "
             f"{m.get('date')}. Command: `{res['command']}`.", "",
             f"Model: random Llama, hidden {s['hidden']}, {s['layers']} layers, prefill of {s['prompt_tokens']} tokens; "
             f"`ServingLoop` with one worker, batches of up to {s['max_batch']} ({s['max_wait_ms']:g} ms wait). "
             f"Capacity from the service time of a full batch (an upper bound): {res['capacity_service']:.4g} "
             f"requests/s; rates "
             f"{', '.join(f'{r:g}' for r in res['rates'])}/s; {s['window']:g} s windows after {s['warmup']:g} s, "
             f"{s['rounds']} rounds alternating the generators.", "",
             "| round | generator | highest sustained | lowest saturated | late rates |", "|---|---|---|---|---|"]
    for sw in res.get("sweeps", []):
        ol = sw["open_loop"]
        late = [f"{p['value']:g}" for p in ol["points"] if p["late"]]
        lines.append(f"| {sw['round']} | {sw['generator']} | {ol['highest_sustained'] or 'none'} | "
                     f"{ol['lowest_saturated'] or 'none'} | {', '.join(late) or 'none'} |")
    lines += ["", "Per rate (median over rounds): achieved requests/s, the generator's own lateness p95 (ms; "
              "thread: hand-off to a sender minus scheduled; process: send minus scheduled in the child), the "
              "process generator's hand-off p95 (receive minus send, ms), response p95 (ms).", "",
              "| rate | thread achieved | process achieved | thread lateness p95 | process lateness p95 | "
              "process hand-off p95 | thread p95 | process p95 |", "|---|---|---|---|---|---|---|---|"]
    for rate in res["rates"]:
        cells: dict[str, dict[str, list[float]]] = {}
        for sw in res.get("sweeps", []):
            c = cells.setdefault(sw["generator"], {"a": [], "l": [], "h": [], "r": []})
            found = [(k, p.get(f)) for p in sw["open_loop"]["points"] if p["value"] == rate
                     for k, f in (("a", "achieved"),)]
            found += [("r", (p.get("response_s") or {}).get("p95")) for p in sw["open_loop"]["points"]
                      if p["value"] == rate]
            found += [(k, run.get(f)) for run in sw["runs"] if run["value"] == rate
                      for k, f in (("l", "dispatch_lateness_p95_s"), ("h", "handoff_p95_s"))]
            for key, val in found:
                if isinstance(val, (int, float)):
                    c[key].append(float(val))

        def med(gen: str, key: str, cells: dict[str, dict[str, list[float]]] = cells) -> float | None:
            vals = cells.get(gen, {}).get(key, [])
            return statistics.median(vals) if vals else None

        def rate_txt(v: float | None) -> str:
            return "" if v is None else f"{v:.4g}"

        lines.append(f"| {rate:g} | {rate_txt(med('thread', 'a'))} | {rate_txt(med('process', 'a'))} | "
                     f"{_ms(med('thread', 'l'))} | {_ms(med('process', 'l'))} | {_ms(med('process', 'h'))} | "
                     f"{_ms(med('thread', 'r'))} | {_ms(med('process', 'r'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_open_generators.json")
    p.add_argument("--markdown-from", metavar="RESULT_JSON", help="print the Markdown of a saved result and exit")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help="tiny model and settings (a CPU check of the script)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--service-reps", type=int, default=7)
    p.add_argument("--rate-fractions", type=_floats, default=(0.25, 0.4, 0.55, 0.7, 0.85, 1.0))
    p.add_argument("--rates", type=_floats, default=(),
                   help="offered rates (requests/s) instead of fractions of the service-time capacity")
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-in-flight", type=int, default=64)
    args = p.parse_args(argv)
    if args.markdown_from:
        print(markdown(json.loads(Path(args.markdown_from).read_text())))
        return 0
    if args.small:
        args.hidden, args.layers, args.prompt_tokens, args.max_batch = 64, 2, 16, 4
        args.service_reps, args.rate_fractions, args.window, args.rounds, args.warmup = 3, (0.1, 0.3), 0.5, 2, 0.2
    res = run(args)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
