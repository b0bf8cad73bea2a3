"""``vauban-trace sweep``: a controlled sweep over a local transformers model, profiled per stage.

::

    vauban-trace sweep --axis prompt_tokens|batch_size|new_tokens --values 16,32,64,128,256,512
                       [--model DIR] [--repeats 5] [--warmup 1] [--prompt-tokens 32] [--new-tokens 0]
                       [--sweep-id ID] [--device cpu|cuda|mps] [--store DIR] [--cache DIR] [--json]
    vauban-trace sweep --axis concurrency --values 1,2,4,8,16,32 [--requests-per-client 10 | --window S]
                       [--workers 1] [--max-batch 1] [--max-wait-ms 0] [--throughput auto|window|littles_law]
                       [same model, prompt, repeats, warmup, store flags]
    vauban-trace sweep --axis arrival_rate --values 20,50,100,150 [--window 2] [--warmup-s 0.5]
                       [--arrivals poisson|constant] [--max-in-flight 64] [--seed 0] [--tolerance 0.05]
                       [--on-error raise|record] [--switch-interval-ms 0.5] [--generator thread|process]
                       [--workers 1] [--max-batch 1] [--max-wait-ms 0]
                       [same model, prompt, repeats, store flags]
    vauban-trace sweep --profile SWEEP_ID [--source SRC] [--since 2h] [--limit 1000] [--json]

Without ``--model`` the tiny random-initialised Llama of ``vauban-trace demo`` is built offline
and used. Each request is a :class:`~vauban_trace.executors.torch.TorchExecutor` run:

- ``prompt_tokens``: a prompt of exactly N token ids (``prompt_ids``, no tokenizer round trip);
- ``batch_size``: N copies of one prompt (the text of ``--prompt-tokens`` token ids) in one batched
  request;
- ``new_tokens``: a ``--prompt-tokens`` prompt, N tokens generated greedily with EOS ignored.

- ``concurrency``: a closed loop of N client threads with zero think time
  (:func:`vauban_trace.sweep.run_concurrency`) against a :class:`~vauban_trace.sweep.ServingLoop`
  of ``--workers`` threads serving the executor, with dynamic batching up to ``--max-batch``
  prompts gathered for at most ``--max-wait-ms``; each client request (a ``--prompt-tokens``
  prompt) is its own trace (root, ``queue`` and ``batch`` stages), the executor's own traces are
  the batches'. ``--repeats`` is runs per N, ``--warmup`` warm-up requests per client,
  ``--requests-per-client`` (default 10) or ``--window`` seconds the measured part of a run.
- ``arrival_rate``: open-loop load (:func:`vauban_trace.sweep.run_open_loop`): for each offered rate
  (requests per second, decimals allowed) requests arrive at ``--arrivals`` times (Poisson, seeded
  with ``--seed``, or constant gaps) whatever the service does, against the same serving loop; each
  a ``--prompt-tokens`` prompt, its own trace. ``--window`` seconds measured (default 2) after
  ``--warmup-s`` seconds of warm-up load (default 0.5), ``--repeats`` runs per rate, at most
  ``--max-in-flight`` requests in flight (arrivals beyond it are refused and counted). The output:
  achieved throughput, p50/p95/p99 response time and queue wait, the generator's lateness,
  Little's-law L, saturation per run, the highest rate sustained, and the refused USL fit.
  ``--on-error record`` keeps the load on when requests fail (counted and reported) instead of
  stopping at the first error and re-raising it. ``--switch-interval-ms`` (default 0.5) is the
  interpreter's thread switch interval during the sweep: the generator shares the GIL with the
  senders, the serving loop and the model, and wakes up late with the default 5 ms.
  ``--generator process`` keeps the schedule in a child process instead (no torch in it): the
  lateness is then the generator's own (send minus scheduled, on its clock) and the hand-off
  (receive minus send) is reported apart (docs/sweep.md, "Out-of-process generator").

``--new-tokens`` adds greedy decoding to all but ``new_tokens``. The sweep runs through
:func:`vauban_trace.sweep.run_sweep` (warm-up outside the sweep, values interleaved and rotated
across repeats), the traces are read back from the embedded store, and the profile is printed:
median stage durations per value, then the USL fit of each stage's throughput or the reason it
was refused. ``--json`` prints the whole result instead. Bad flags exit with code 2 and one line.

``--profile SWEEP_ID`` runs nothing: it reads the traces of that sweep from a trace source (the
store a collector fills, OTLP JSON files, Jaeger, Tempo: ``--source`` as for ``vauban-trace
traces``, the most recent ``--limit`` traces, optionally ``--since``) and prints their profile,
for sweeps whose requests ran elsewhere under :func:`vauban_trace.sweep_point`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any

from vauban_trace._exceptions import ConfigurationError

AXES = ("prompt_tokens", "batch_size", "new_tokens", "concurrency", "arrival_rate")
_OPEN_FLAGS = ("warmup_s", "arrivals", "max_in_flight", "seed", "tolerance", "on_error", "switch_interval_ms",
               "generator")


def _rates(text: str) -> tuple[float, ...]:
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            rate = float(part)
        except ValueError:
            rate = -1.0
        if not (rate > 0 and rate != float("inf")):
            raise ConfigurationError(f"--values: {part!r} is not a positive rate in requests/s (e.g. 20,50,100)")
        out.append(int(rate) if rate.is_integer() else rate)
    if not out:
        raise ConfigurationError("--values: give at least one rate, e.g. 20,50,100")
    return tuple(out)


def _values(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigurationError(f"--values: {part!r} is not a positive integer (expected e.g. 16,32,64)")
        out.append(int(part))
    if not out:
        raise ConfigurationError("--values: give at least one value, e.g. 16,32,64")
    return tuple(out)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a controlled sweep (prompt tokens, batch size, new tokens, concurrency, arrival rate) and profile "
             "each stage",
        description="Run repeated traced requests over one axis and print per-stage statistics and USL fits.",
    )
    p.add_argument("--axis", choices=AXES, help="what varies from one point to the next")
    p.add_argument("--values", metavar="N,N,...", help="the axis values, e.g. 16,32,64,128")
    p.add_argument("--profile", default=None, metavar="SWEEP_ID",
                   help="run nothing: profile the traces of this sweep read from --source")
    p.add_argument("--source", default="store:.vauban", metavar="SRC",
                   help="with --profile: store:DIR | otlp-json:FILE | jaeger:URL | tempo:URL (default store:.vauban)")
    p.add_argument("--since", default=None, metavar="DURATION", help="with --profile: traces started within, e.g. 2h")
    p.add_argument("--limit", type=int, default=1000, metavar="N",
                   help="with --profile: read at most the N most recent traces (default 1000)")
    p.add_argument("--model", default=None, metavar="DIR", help="local transformers model (default: tiny Llama)")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="measured requests per value; on concurrency: runs per N (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="unmeasured requests per value first; on concurrency: per client and run (default 1); "
                        "not used on arrival_rate (--warmup-s)")
    p.add_argument("--prompt-tokens", type=int, default=32, metavar="N",
                   help="prompt length on every axis but prompt_tokens (default 32)")
    p.add_argument("--new-tokens", type=int, default=0, metavar="N",
                   help="tokens generated per request on every axis but new_tokens (default 0)")
    p.add_argument("--sweep-id", default=None, metavar="ID", help="sweep id stamped on every root span")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--store", default=".vauban", metavar="DIR", help="embedded trace store (default .vauban)")
    p.add_argument("--cache", default=None, metavar="DIR", help="where the tiny model is built (as for demo)")
    p.add_argument("--json", action="store_true", help="print the sweep result as JSON")
    p.add_argument("--no-gc-freeze", action="store_true",
                   help="keep the loaded model's objects under the garbage collector (by default gc.freeze() runs "
                        "after loading: each full collection would otherwise hold the interpreter lock for 100+ ms "
                        "and stall every request in flight)")
    g = p.add_argument_group("concurrency axis (closed loop against a serving loop)")
    g.add_argument("--requests-per-client", type=int, default=None, metavar="N",
                   help="measured requests per client and run (default 10 unless --window)")
    g.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="measure for this long per run instead of a request count (arrival_rate: default 2)")
    g.add_argument("--workers", type=int, default=1, metavar="K", help="serving threads (default 1)")
    g.add_argument("--max-batch", type=int, default=1, metavar="B", help="dynamic batching: at most B prompts (default 1)")
    g.add_argument("--max-wait-ms", type=float, default=0.0, metavar="MS",
                   help="dynamic batching: wait at most this long for more prompts (default 0)")
    g.add_argument("--throughput", choices=("auto", "window", "littles_law"), default="auto",
                   help="X(N) fitted: completed/window, N/mean response time, or window when every run has it")
    o = p.add_argument_group("arrival_rate axis (open loop against the serving loop; also --window, --workers, "
                             "--max-batch, --max-wait-ms)")
    o.add_argument("--warmup-s", type=float, default=None, metavar="SECONDS",
                   help="warm-up load before each measured window (default 0.5)")
    o.add_argument("--arrivals", choices=("poisson", "constant"), default=None,
                   help="inter-arrival times: seeded Poisson (default) or constant")
    o.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="requests in flight at most; arrivals beyond are refused and counted (default 64)")
    o.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the Poisson schedules (default 0)")
    o.add_argument("--tolerance", type=float, default=None, metavar="F",
                   help="saturation: achieved below (1 - F) x offered (default 0.05)")
    o.add_argument("--on-error", choices=("raise", "record"), default=None,
                   help="stop at the first failed request and re-raise it (default), or record failures and go on")
    o.add_argument("--switch-interval-ms", type=float, default=None, metavar="MS",
                   help="the interpreter's thread switch interval during the sweep (default 0.5; Python's is 5)")
    o.add_argument("--generator", choices=("thread", "process"), default=None,
                   help="who keeps the arrival schedule: a thread of this process (default) or a child process "
                        "(its own clock and lateness; the hand-off to this process measured apart)")
    p.set_defaults(func=run)


def _profile_from_source(args: argparse.Namespace) -> int:
    from vauban_trace.cli._traces import parse_duration
    from vauban_trace.sources import open_source
    from vauban_trace.sweep import profile_traces

    if args.limit < 1:
        raise ConfigurationError(f"--limit: must be at least 1, got {args.limit}")
    since = parse_duration(args.since) if args.since is not None else None
    with open_source(args.source) as src:
        summaries = src.list_traces(since=since, limit=args.limit)
        traces = [src.get_trace(s.trace_id) for s in summaries]
    mine = [t for t in traces if isinstance(t.metadata.get("sweep"), dict) and t.metadata["sweep"].get("id") == args.profile]
    if not mine:
        raise ConfigurationError(f"--profile: no trace of sweep {args.profile!r} among the {len(traces)} most recent "
                                 f"of {args.source} (raise --limit or check the id)")
    profile = profile_traces(mine, sweep_id=args.profile)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2, allow_nan=False))
    else:
        print(f"{args.source}: {len(mine)} traces of sweep {args.profile} among {len(traces)} read")
        print(profile.render_markdown())
    return 0


def _freeze_gc() -> None:
    """Move everything alive now (torch, transformers, the model) out of the collector's reach.

    A full (oldest-generation) collection scans every tracked object while holding the
    interpreter lock: with the tiny Llama loaded that is about 386,000 objects and 135-215 ms
    (docs/benchmarks.md, "Exporter stalls"), a stall of every request in flight that a sweep would
    then measure as service time. This process exists for the sweep, so freezing is safe here;
    a library user decides for their own process (docs/sweep.md, "Full garbage collections").
    """
    gc.collect()
    gc.freeze()
    print(f"sweep: gc.freeze() after loading the model ({gc.get_freeze_count()} objects out of the collector's "
          "reach; --no-gc-freeze keeps them)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.profile is not None:
        return _profile_from_source(args)
    if args.axis is None or args.values is None:
        raise ConfigurationError("sweep: give --axis and --values to run a sweep, or --profile SWEEP_ID to read one")
    values: tuple[Any, ...] = _rates(args.values) if args.axis == "arrival_rate" else _values(args.values)
    if args.repeats < 1 or args.warmup < 0 or args.prompt_tokens < 1 or args.new_tokens < 0:
        raise ConfigurationError("need --repeats >= 1, --warmup >= 0, --prompt-tokens >= 1, --new-tokens >= 0")

    import vauban_trace as vt
    from vauban_trace.cli._demo import _quiet_transformers
    from vauban_trace.contract import TraceRequest
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.sweep import SweepSpec, run_sweep

    if args.axis not in ("concurrency", "arrival_rate") and (
            args.requests_per_client is not None or args.window is not None or args.workers != 1
            or args.max_batch != 1 or args.max_wait_ms != 0):
        raise ConfigurationError("--requests-per-client, --window, --workers, --max-batch and --max-wait-ms "
                                 "apply to --axis concurrency or arrival_rate only")
    if args.axis != "arrival_rate" and any(getattr(args, f) is not None for f in _OPEN_FLAGS):
        raise ConfigurationError("--warmup-s, --arrivals, --max-in-flight, --seed, --tolerance, --on-error, "
                                 "--switch-interval-ms and --generator apply to --axis arrival_rate only")
    if args.axis == "arrival_rate" and args.requests_per_client is not None:
        raise ConfigurationError("--requests-per-client applies to --axis concurrency only (arrival_rate: --window)")
    if args.axis == "concurrency":
        spec_c = _concurrency_spec(args, values)
    elif args.axis == "arrival_rate":
        spec_c = _open_spec(args, values)
    else:
        spec = SweepSpec(axis=args.axis, values=values, repeats=args.repeats, warmup=args.warmup,
                         sweep_id=args.sweep_id)
    _quiet_transformers()
    if args.model is None:
        from vauban_trace.executors.torch.tiny import cached_tiny_model

        model_dir = str(cached_tiny_model("llama", cache_dir=args.cache))
    else:
        model_dir = args.model
    ex = TorchExecutor.from_pretrained(model_dir, device=args.device)
    ex.load()
    if not args.no_gc_freeze:
        _freeze_gc()
    vocab = len(ex._require().tokenizer)

    def ids(n: int, salt: int = 0) -> tuple[int, ...]:
        return tuple(5 + (7 * i + 3 + salt) % max(1, vocab - 10) for i in range(n))

    def run_one(value: Any) -> None:
        n = int(value)
        if args.axis == "prompt_tokens":
            ex.run(TraceRequest(prompt_ids=ids(n), requested_artifacts=("tokens",)), max_new_tokens=args.new_tokens,
                   ignore_eos=True)
        elif args.axis == "batch_size":
            text = ex._require().tokenizer.decode(list(ids(args.prompt_tokens)))
            ex.run(ex.make_request([text] * n), prompts=[text] * n, max_new_tokens=args.new_tokens, ignore_eos=True)
        else:
            ex.run(TraceRequest(prompt_ids=ids(args.prompt_tokens), requested_artifacts=("tokens",)),
                   max_new_tokens=n, ignore_eos=True)

    session = vt.configure(store_dir=args.store, service_name="vauban-trace-sweep")
    if args.axis in ("concurrency", "arrival_rate"):
        try:
            runner = _run_concurrency if args.axis == "concurrency" else _run_open
            return runner(args, ex, ids, spec_c, session, model_dir)
        finally:
            session.shutdown()
    try:
        result = run_sweep(run_one, spec, session=session)
    finally:
        session.shutdown()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(f"model: {model_dir}; sweep {result.sweep_id}: {len(result.traces)} traces in {result.wall_s:.1f} s")
        print(result.profile.render_markdown())
        for note in result.notes:
            print(f"note: {note}")
    sys.stdout.flush()
    return 0


def _concurrency_spec(args: argparse.Namespace, values: tuple[int, ...]) -> Any:
    from vauban_trace.sweep import ConcurrencySpec

    if args.window is not None and args.requests_per_client is not None:
        raise ConfigurationError("give --requests-per-client or --window, not both")
    per_client = args.requests_per_client if args.window is None and args.requests_per_client is not None else (
        10 if args.window is None else None)
    spec = ConcurrencySpec(values=values, requests_per_client=per_client, window_s=args.window,
                           warmup_requests=args.warmup, repeats=args.repeats, sweep_id=args.sweep_id)
    _check_loop(args)
    return spec


def _check_loop(args: argparse.Namespace) -> None:
    """The serving loop's own checks of --workers/--max-batch/--max-wait-ms, before a model is built."""
    from vauban_trace.sweep import ServingLoop

    ServingLoop(model="check", serve_batch=list, workers=args.workers, max_batch=args.max_batch,
                max_wait_s=args.max_wait_ms / 1000.0)


def _serving_loop(args: argparse.Namespace, ex: Any) -> Any:
    """The loop both load axes drive: each formed batch is one executor ``run`` of its prompts."""
    from vauban_trace.sweep import ServingLoop

    def serve_batch(prompts: list[str]) -> list[Any]:
        result = ex.run(ex.make_request(prompts), prompts=prompts, max_new_tokens=args.new_tokens, ignore_eos=True)
        return [result] * len(prompts)

    return ServingLoop(serve_batch=serve_batch, model=ex.name, workers=args.workers, max_batch=args.max_batch,
                       max_wait_s=args.max_wait_ms / 1000.0, executor="torch", device=args.device)


def _run_concurrency(args: argparse.Namespace, ex: Any, ids: Any, spec: Any, session: Any, model_dir: str) -> int:
    from vauban_trace.sweep import run_concurrency

    text = ex._require().tokenizer.decode(list(ids(args.prompt_tokens)))
    with _serving_loop(args, ex) as loop:
        result = run_concurrency(lambda client, seq: loop.call(text), spec, session=session,
                                 throughput=args.throughput)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return 0
    print(f"model: {model_dir}; sweep {result.sweep_id}: {len(result.traces)} client requests in {result.wall_s:.1f} s; "
          f"serving loop: {args.workers} worker(s), batches of at most {args.max_batch} "
          f"(wait {args.max_wait_ms:g} ms)")
    print(result.profile.render_markdown())
    print("| N | run | driver window | completed | X over the driver's clock |\n|---|---|---|---|---|")
    for r in result.runs:
        x = "" if r.window_throughput is None else f"{r.window_throughput:.4g}/s"
        w = "" if r.window_s is None else f"{r.window_s * 1e3:.1f} ms"
        print(f"| {r.value} | {r.run} | {w} | {r.completed_in_window} | {x or r.note} |")
    for note in result.notes:
        print(f"note: {note}")
    sys.stdout.flush()
    return 0


def _open_spec(args: argparse.Namespace, values: tuple[Any, ...]) -> Any:
    from vauban_trace.sweep import OpenLoopSpec

    spec = OpenLoopSpec(rates=values, duration_s=2.0 if args.window is None else args.window,
                        warmup_s=0.5 if args.warmup_s is None else args.warmup_s,
                        arrivals=args.arrivals or "poisson", repeats=args.repeats,
                        max_in_flight=64 if args.max_in_flight is None else args.max_in_flight,
                        seed=0 if args.seed is None else args.seed,
                        tolerance=0.05 if args.tolerance is None else args.tolerance, sweep_id=args.sweep_id,
                        switch_interval_s=(0.5 if args.switch_interval_ms is None else args.switch_interval_ms) / 1000,
                        generator=args.generator or "thread")
    _check_loop(args)
    return spec


def _run_open(args: argparse.Namespace, ex: Any, ids: Any, spec: Any, session: Any, model_dir: str) -> int:
    from vauban_trace.sweep import run_open_loop

    text = ex._require().tokenizer.decode(list(ids(args.prompt_tokens)))
    with _serving_loop(args, ex) as loop:
        result = run_open_loop(lambda seq: loop.call(text), spec, session=session, on_error=args.on_error or "raise")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return 0
    print(f"model: {model_dir}; sweep {result.sweep_id}: {len(result.traces)} requests in {result.wall_s:.1f} s; "
          f"{spec.arrivals} arrivals, window {spec.duration_s:g} s after {spec.warmup_s:g} s of warm-up, at most "
          f"{spec.max_in_flight} in flight; serving loop: {args.workers} worker(s), batches of at most "
          f"{args.max_batch} (wait {args.max_wait_ms:g} ms); arrivals from a generator "
          + ("process (lateness: its send - scheduled; hand-off: receive - send)" if spec.generator == "process"
             else "thread of this process"))
    print(result.profile.render_markdown())
    proc = spec.generator == "process"
    print("| offered | run | scheduled | sent | refused | dispatch lateness p95 | "
          + ("hand-off p95 | " if proc else "") + "in system at arrival | X over the driver's clock |\n"
          + "|---|---|---|---|---|---|---|---|" + ("---|" if proc else ""))
    for r in result.runs:
        late = "" if r.dispatch_lateness_p95_s is None else f"{r.dispatch_lateness_p95_s * 1e3:.2f} ms"
        hand = "" if r.handoff_p95_s is None else f"{r.handoff_p95_s * 1e3:.2f} ms | "
        mean = "" if r.mean_in_system_at_arrival is None else f"{r.mean_in_system_at_arrival:.3g}"
        print(f"| {r.value:g}/s | {r.run} | {r.scheduled} | {r.sent} | {r.dropped} | {late} | "
              + (hand or " | " if proc else "") + f"{mean} | {r.driver_throughput:.4g}/s |")
    for note in result.notes:
        print(f"note: {note}")
    sys.stdout.flush()
    return 0
