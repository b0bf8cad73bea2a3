"""Controlled sweeps, their statistics and Universal Scalability Law fits.

A sweep varies one axis (batch size, prompt tokens, concurrency...) over several values, runs
repeated traced requests at each, and reads the rebuilt traces back to say how each stage scales::

    import vauban_trace as vt
    from vauban_trace.sweep import SweepSpec, run_sweep

    session = vt.configure(store_dir=".vauban")
    spec = SweepSpec(axis="batch_size", values=(1, 2, 4, 8, 16, 32), repeats=5, warmup=1)
    result = run_sweep(lambda b: executor.run(request, prompts=[text] * b), spec, session=session)
    print(result.profile.render_markdown())          # medians per stage and value, fits or refusals

Pieces:

- :func:`vauban_trace.sweep_point` (in ``instrument``) stamps the sweep id, axis and value on the
  root span of every request in a block; the rebuild keeps them in ``Trace.metadata["sweep"]``
  and the collector labels its stage histograms with them.
- :func:`run_sweep` / :class:`SweepSpec` (``_run``): warm-up outside the sweep, then the values
  interleaved and rotated across repeats; traces read back through the session (one road).
- :func:`profile_traces` / :class:`SweepProfile` (``_profile``): traces of any source grouped by
  axis value, per-stage :class:`Summary` records with the counters' provenance, artifact-coverage
  stability (unstable coverage refuses the fits), USL fits of stage throughput.
- :func:`summarize` / :class:`Summary` (``_stats``): robust summaries with bootstrap intervals.
- :func:`fit_usl` / :class:`UslFit`, :func:`fit_linear` / :class:`LinearFit` (``_usl``): bounded
  fits that refuse ("not_applicable", with the reason) when the data cannot support them; with
  repeats, inverse-variance weighting when the noise changes with N (:class:`VarianceTrend`), a
  lack-of-fit F test that refuses at p < 0.01 (:class:`LackOfFit`) and a bootstrap interval of
  the peak N* (``_usl_checks``).

- :func:`run_concurrency` / :class:`ConcurrencySpec` (``_closed``): closed-loop concurrency
  sweeps, N client threads with zero think time, every request its own trace on the
  ``"concurrency"`` axis; :class:`ServingLoop` (``_serve``): a bounded queue, K workers and
  optional dynamic batching around any serving callable, with ``queue`` and ``batch`` stage spans
  in each request's trace; :func:`traced_call` for a direct target. Throughput per run from the
  traces (Little's law or completions in the clients' common window) and the request-level USL fit (``_throughput``).
- :func:`run_open_loop` / :class:`OpenLoopSpec` (``_open``): open-loop load, requests sent at
  Poisson (seeded, :func:`arrival_schedule`) or constant arrival times whatever the service does,
  an in-flight cap that refuses (and counts) the excess, every measured request its own trace on
  the ``"arrival_rate"`` axis; from the traces (``_arrival``): achieved throughput, p50/p95/p99
  response time and queue wait, the generator's lateness, saturation, the highest rate sustained,
  Little's-law L (derived), and a refusal instead of a USL fit (the USL needs N).

Nothing here guesses: a number comes from the traces, a fit comes with its intervals and
residuals or with the reason it was refused.
"""

from vauban_trace.sweep._arrival import (
    ARRIVAL_RATE,
    OPEN_LOOP_REFUSAL,
    OpenLoopSummary,
    RatePoint,
    Tail,
    tail,
)
from vauban_trace.sweep._closed import (
    ConcurrencyResult,
    ConcurrencySpec,
    RequestRecord,
    RunRecord,
    run_concurrency,
)
from vauban_trace.sweep._labels import LOAD_KEY, OPEN_LOOP_KEY
from vauban_trace.sweep._open import (
    ArrivalRecord,
    LoadRun,
    OpenLoopResult,
    OpenLoopSpec,
    arrival_schedule,
    run_open_loop,
)
from vauban_trace.sweep._profile import REQUEST, StagePoint, SweepProfile, profile_traces
from vauban_trace.sweep._run import SweepResult, SweepSpec, run_sweep, schedule
from vauban_trace.sweep._serve import BATCH_STAGE, QUEUE_STAGE, ServingLoop, traced_call
from vauban_trace.sweep._stats import Summary, summarize
from vauban_trace.sweep._throughput import CONCURRENCY, THROUGHPUT_METHODS, ThroughputPoint
from vauban_trace.sweep._usl import LackOfFit, LinearFit, UslFit, VarianceTrend, fit_linear, fit_usl

__all__ = [
    "ARRIVAL_RATE",
    "BATCH_STAGE",
    "CONCURRENCY",
    "LOAD_KEY",
    "OPEN_LOOP_KEY",
    "OPEN_LOOP_REFUSAL",
    "QUEUE_STAGE",
    "REQUEST",
    "THROUGHPUT_METHODS",
    "ArrivalRecord",
    "ConcurrencyResult",
    "ConcurrencySpec",
    "LackOfFit",
    "LinearFit",
    "LoadRun",
    "OpenLoopResult",
    "OpenLoopSpec",
    "OpenLoopSummary",
    "RatePoint",
    "RequestRecord",
    "RunRecord",
    "ServingLoop",
    "StagePoint",
    "Summary",
    "SweepProfile",
    "SweepResult",
    "SweepSpec",
    "Tail",
    "ThroughputPoint",
    "UslFit",
    "VarianceTrend",
    "arrival_schedule",
    "fit_linear",
    "fit_usl",
    "profile_traces",
    "run_concurrency",
    "run_open_loop",
    "run_sweep",
    "schedule",
    "summarize",
    "tail",
    "traced_call",
]
