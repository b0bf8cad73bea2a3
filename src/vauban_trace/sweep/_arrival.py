"""Open-loop (arrival-rate) sweeps read from traces: achieved throughput, tails, lateness, saturation.

On the ``arrival_rate`` axis the value is the *offered* load in requests per second: a generator
issues requests at scheduled times whatever the service does (``_open``). Each measured request is
its own trace whose root carries, under ``Trace.metadata["open_loop"]`` (or the driver's
``open_loop=`` mapping), the driver's labels: ``run``, ``seq``, ``scheduled_unix_nano`` (when the
schedule said to send it), ``window_start_unix_nano`` / ``window_end_unix_nano`` (the run's
measured window) and ``dropped`` (arrivals of the window the in-flight cap refused so far in the
run). Per run (one rate measured once), from the root spans:

- **achieved throughput** (direct count): of the measured requests that completed without error
  inside the window, at sorted end times ``t_1 <= ... <= t_k``, ``X = (k - 1) / (t_k - t_1)``.
  Below saturation that is the arrival rate; at saturation the service's capacity (the server is
  busy throughout, whatever the warm-up left in the queue; counting from the window's start would
  be biased low by that backlog). ``None`` with the reason when fewer than two completed in it.
- **offered (realised)**: the arrivals scheduled in the window (the traces plus the ``dropped``
  ones) over its length. A Poisson schedule holds ``lambda * W`` arrivals only on average; the
  saturation test compares the achieved throughput with this realised rate, not with the nominal
  one, so the schedule's own noise is not read as saturation. **offered (sent)**: the arrivals
  actually sent in the window (roots started in it, plus the refused ones) over its length: less
  than the realised rate when the generator fell behind; the saturation test uses the smaller of
  the two (the service is not blamed for load it was not sent).
- **response time** (root duration) and **queue wait** (the ``queue`` stage, when a
  :class:`~vauban_trace.sweep.ServingLoop` queued the request): p50 (``summarize``: the median and
  its bootstrap interval) and p95 / p99 with percentile-bootstrap intervals of the same kind (an
  interval only when at least 5 samples lie beyond the quantile: the bootstrap of a tail quantile
  says nothing with fewer). Over every measured request that succeeded, whenever it completed.
- **lateness of the generator**: root start minus scheduled time (the generator's sleep overshoot,
  the hand-off to a sender thread, the root's opening). The load offered is the load scheduled
  only when lateness is small next to the gaps between arrivals: the run is **late** (its load was
  not offered) when the p95 lateness exceeds both ``LATENESS_FLOOR_S`` and the mean inter-arrival
  time, or when more than ``tolerance`` of the window's arrivals were sent after the window ended.
- **process generator** (labels ``sent_unix_nano`` and ``received_unix_nano``, written by
  ``OpenLoopSpec(generator="process")``): the lateness above is then the **generator's own**, send
  minus scheduled time, both read in the generator process (``lateness_from == "generator"``; the
  thread generator's is ``"root"``: root start minus scheduled time, read in the serving process);
  the **hand-off**, receive minus send time (the channel and the serving process's receiver: a
  service that starves the receiver of the interpreter lock shows here), is its own tail
  (``handoff``) and part of the service's response, so the backlog test below measures response
  times from the send time, and "sent in the window" / "sent after it" use the send times.
- **Little's law**: ``L = X * mean(R)`` is the mean number of requests in the system (provenance
  ``derived``: the achieved throughput times the mean response time, both from the traces). It is
  the closed-loop N at which a closed-loop sweep would see the same throughput and response time.

**Saturation** (per run): the achieved throughput below ``(1 - tolerance)`` times the offered rate
(the smaller of realised and sent); arrivals refused by the in-flight cap; or a growing backlog: the
median response times of the four quarters of the window's arrivals rise from each quarter to the
next, by more than ``tolerance * 0.75 * W`` from the first to the last (an arrival rate ``lambda``
above the capacity ``mu`` makes the response time grow by ``lambda / mu - 1`` seconds per second,
and the quarters' centres are ``0.75 W`` apart: the growth of an overload the throughput test's
tolerance would let through; a stable queue's excursions at high utilisation stay below it). A run can be both late and saturated (the service could not keep up even
with the load that was sent, which is less than the nominal rate). A rate is **sustained** when
every run at it is neither late, nor saturated, nor had a failed request; ``highest_sustained`` is
the largest such rate (a non-sustained rate below it is named in ``problems``),
``lowest_saturated`` the smallest rate where a run saturated.

**No USL fit on this axis.** The USL models X(N) with N the number of clients held fixed; in an open
loop N is an outcome (Little's law gives its mean), so every stage's fit is a refusal
(:data:`OPEN_LOOP_REFUSAL`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vauban_trace.contract import Trace
from vauban_trace.sweep._labels import OPEN_LOOP_KEY, RECEIVED_LABEL, SENT_LABEL
from vauban_trace.sweep._serve import queue_wait_s
from vauban_trace.sweep._stats import Summary, _as_finite_array, _percentile_interval, summarize

ARRIVAL_RATE = "arrival_rate"
#: lateness below this never marks a run late (thread wake-ups on a loaded machine)
LATENESS_FLOOR_S = 0.002
#: default relative tolerance of the saturation and lateness tests. The achieved and the offered rate
#: come from the same arrivals, so below saturation they agree within a few percent on windows of a
#: few hundred arrivals (measured: at most 3.1 %); windows of a few dozen arrivals need a larger one.
TOLERANCE = 0.05
#: samples needed beyond a tail quantile before its bootstrap interval is given
_TAIL_SAMPLES = 5
OPEN_LOOP_REFUSAL = ("open loop: the value is an offered arrival rate, not a number of clients N; the USL models "
                     "X(N) with N held fixed, while here N (the requests in the system) is an outcome (Little's law "
                     "L = X R, reported per rate): no USL fit on this axis")
_LABEL_NAMES = ("run", "seq", "scheduled_unix_nano", "window_start_unix_nano", "window_end_unix_nano", "dropped")
_PROCESS_LABELS = (SENT_LABEL, RECEIVED_LABEL)  # the process generator's (all or none)


@dataclass(frozen=True)
class Tail:
    """p50 (from :func:`summarize`), p95 and p99 with bootstrap intervals, over n samples (seconds)."""

    n: int
    mean: float | None
    p50: Summary
    p95: float | None
    p95_interval: tuple[float, float] | None
    p99: float | None
    p99_interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "p50": self.p50.to_dict(), "p95": self.p95,
                "p95_interval": None if self.p95_interval is None else list(self.p95_interval), "p99": self.p99,
                "p99_interval": None if self.p99_interval is None else list(self.p99_interval)}


def tail(values: Sequence[float], *, seed: int = 0, confidence: float = 0.95, resamples: int = 1000) -> Tail:
    """Percentiles with percentile-bootstrap intervals (see the module docstring)."""
    v = _as_finite_array(values, "values")
    p50 = summarize(list(v), seed=seed, confidence=confidence, resamples=resamples)
    if v.size == 0:
        return Tail(0, None, p50, None, None, None, None)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    out: dict[float, tuple[float, tuple[float, float] | None]] = {}
    for q in (95.0, 99.0):
        point = float(np.percentile(v, q, method="linear"))
        interval = None
        if v.size * (1 - q / 100) >= _TAIL_SAMPLES:
            interval = _percentile_interval(np.percentile(v[idx], q, axis=1, method="linear"), confidence)
        out[q] = (point, interval)
    return Tail(int(v.size), float(v.mean()), p50, out[95.0][0], out[95.0][1], out[99.0][0], out[99.0][1])


@dataclass(frozen=True)
class RatePoint:
    """One run at one offered rate, from its traces (see the module docstring)."""

    value: float
    run: int
    traces: int
    failed: int
    dropped: int  # arrivals refused by the in-flight cap, as the traces' labels tell (a lower bound)
    window_s: float
    offered_realised: float  # (traces + dropped) / window_s
    offered_sent: float  # (roots started in the window + dropped) / window_s
    achieved: float | None
    achieved_reason: str | None
    completed_in_window: int
    response: Tail
    queue_wait: Tail | None
    lateness: Tail
    sent_after_window: int
    littles_law_n: float | None
    late: bool
    saturated: bool
    reasons: tuple[str, ...]  # why late or saturated
    lateness_from: str = "root"  # "root": root start - scheduled; "generator": send - scheduled (generator process)
    handoff: Tail | None = None  # process generator: receive - send

    @property
    def sustained(self) -> bool:
        return not self.late and not self.saturated and self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value, "run": self.run, "traces": self.traces, "failed": self.failed,
            "dropped": self.dropped, "window_s": self.window_s, "offered_realised": self.offered_realised,
            "offered_sent": self.offered_sent,
            "achieved": self.achieved, "achieved_reason": self.achieved_reason,
            "completed_in_window": self.completed_in_window, "response_s": self.response.to_dict(),
            "queue_wait_s": None if self.queue_wait is None else self.queue_wait.to_dict(),
            "lateness_s": self.lateness.to_dict(), "lateness_from": self.lateness_from,
            "handoff_s": None if self.handoff is None else self.handoff.to_dict(),
            "sent_after_window": self.sent_after_window,
            "littles_law_n": None if self.littles_law_n is None else {
                "value": self.littles_law_n, "provenance": "derived",
                "from": "achieved throughput x mean response time (root spans), Little's law L = X R"},
            "late": self.late, "saturated": self.saturated, "sustained": self.sustained, "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class OpenLoopSummary:
    """Per-run points of an arrival-rate sweep, the highest sustained rate and the USL refusal."""

    points: tuple[RatePoint, ...]
    highest_sustained: float | None
    lowest_saturated: float | None
    usl_refusal: str = OPEN_LOOP_REFUSAL
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [p.to_dict() for p in self.points], "highest_sustained": self.highest_sustained,
                "lowest_saturated": self.lowest_saturated, "usl": {"status": "not_applicable",
                                                                    "reason": self.usl_refusal},
                "problems": list(self.problems)}

    def render_markdown(self) -> list[str]:
        proc = any(p.handoff is not None for p in self.points)
        lines = ["Open loop per run (achieved = completions / window; L = X R, derived"
                 + ("; lateness: the generator process's send - scheduled (g) or root start - scheduled (r), "
                    "hand-off: receive - send" if proc else "") + "):", "",
                 "| offered | run | realised | sent | achieved | p50 | p95 | p99 | queue p50 | lateness p95 | "
                 + ("hand-off p95 | " if proc else "") + "L | dropped | failed | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if proc else "") + "---|---|---|---|"]
        for p in self.points:
            verdict = "sustained" if p.sustained else ", ".join(
                w for w, on in (("late", p.late), ("saturated", p.saturated), ("failures", p.failed > 0)) if on)
            q = "" if p.queue_wait is None else _ms(p.queue_wait.p50.median)
            lines.append(
                f"| {p.value:g}/s | {p.run} | {p.offered_realised:.4g}/s | {p.offered_sent:.4g}/s | "
                f"{'' if p.achieved is None else f'{p.achieved:.4g}/s'} | {_ms(p.response.p50.median)} | "
                f"{_ms(p.response.p95)} | {_ms(p.response.p99)} | {q} | {_ms(p.lateness.p95)}"
                + (f" ({p.lateness_from[0]}) | {'' if p.handoff is None else _ms(p.handoff.p95)} | " if proc else " | ") +
                f"{'' if p.littles_law_n is None else f'{p.littles_law_n:.3g}'} | {p.dropped} | {p.failed} | {verdict} |")
        hs = "none" if self.highest_sustained is None else f"{self.highest_sustained:g}/s"
        ls = "none" if self.lowest_saturated is None else f"{self.lowest_saturated:g}/s"
        return [*lines, "", f"Highest offered rate sustained: {hs}; lowest rate saturated: {ls}.",
                f"USL: not applicable ({self.usl_refusal}).", ""]


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.2f} ms"


def labels_for(trace: Trace, given: Mapping[str, Mapping[str, int]] | None) -> dict[str, int] | None:
    """The open-loop labels of a trace (the driver's mapping first), or None when absent or malformed."""
    raw = given.get(trace.id) if given is not None else None
    if raw is None:
        raw = trace.metadata.get(OPEN_LOOP_KEY)
    if not isinstance(raw, Mapping):
        return None
    out = {k: raw.get(k) for k in _LABEL_NAMES}
    if not all(type(v) is int and v >= 0 for v in out.values()):
        return None
    extra = {k: raw.get(k) for k in _PROCESS_LABELS}
    if all(type(v) is int and v >= 0 for v in extra.values()):
        out.update(extra)
    return {k: int(v) for k, v in out.items() if v is not None}


def arrival_points(
    by_value: Mapping[Any, Sequence[Trace]], given: Mapping[str, Mapping[str, int]] | None, *,
    tolerance: float = TOLERANCE, seed: int = 0,
) -> OpenLoopSummary:
    """Per (rate, run): the numbers of the module docstring; then the sustained / saturated rates."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ValueError(f"tolerance must lie strictly between 0 and 1, got {tolerance!r}")
    problems: list[str] = []
    points: list[RatePoint] = []
    for value, traces in by_value.items():
        runs: dict[int, list[tuple[Trace, dict[str, int]]]] = {}
        unlabelled = 0
        for trace in traces:
            labels = labels_for(trace, given)
            if labels is None:
                unlabelled += 1
                continue
            runs.setdefault(labels["run"], []).append((trace, labels))
        if unlabelled:
            problems.append(f"arrival rate {value}: {unlabelled} traces without the open-loop driver's labels "
                            "(run, schedule, window); left out of the open-loop numbers")
        for run in sorted(runs):
            point = _point(float(value), run, runs[run], tolerance, seed)
            if point is None:
                problems.append(f"arrival rate {value:g}/s run {run}: its labels give an empty measured window "
                                "(window_end_unix_nano <= window_start_unix_nano); left out of the open-loop numbers")
                continue
            points.append(point)
            problems.extend(f"arrival rate {value:g}/s run {run}: {r}" for r in point.reasons)
    by_rate: dict[float, list[RatePoint]] = {}
    for p in points:
        by_rate.setdefault(p.value, []).append(p)
    sustained = sorted(v for v, ps in by_rate.items() if all(p.sustained for p in ps))
    saturated = sorted(v for v, ps in by_rate.items() if any(p.saturated for p in ps))
    highest = sustained[-1] if sustained else None
    if highest is not None:
        below = [v for v, ps in by_rate.items() if v < highest and not all(p.sustained for p in ps)]
        if below:
            problems.append(f"rates below the highest sustained ({highest:g}/s) were not sustained: "
                            f"{', '.join(f'{v:g}/s' for v in sorted(below))} (noise, failures or a late generator)")
    return OpenLoopSummary(points=tuple(points), highest_sustained=highest,
                           lowest_saturated=saturated[0] if saturated else None, problems=tuple(problems))


def _point(value: float, run: int, rows: Sequence[tuple[Trace, dict[str, int]]], tolerance: float,
           seed: int) -> RatePoint | None:
    first = rows[0][1]
    w0, w1 = first["window_start_unix_nano"], first["window_end_unix_nano"]
    if w1 <= w0:
        return None
    window_s = (w1 - w0) / 1e9
    dropped = max(labels.get("dropped", 0) for _, labels in rows)
    ok: list[tuple[Trace, dict[str, int]]] = []
    failed = 0
    for trace, labels in rows:
        root = trace.root
        if root is None or root.stage_duration_s is None:
            continue
        if root.status == "error":
            failed += 1
        else:
            ok.append((trace, labels))
    ends = sorted(t.root.end_unix_nano for t, _ in ok if t.root is not None and w0 < t.root.end_unix_nano <= w1)
    achieved, reason = None, None
    if len(ends) >= 2 and ends[-1] > ends[0]:
        achieved = (len(ends) - 1) / ((ends[-1] - ends[0]) / 1e9)
    else:
        reason = f"{len(ends)} requests completed in the measured window (need 2: a longer window or a higher rate)"
    responses = [t.root.stage_duration_s for t, _ in ok if t.root is not None and t.root.stage_duration_s is not None]
    waits = [w for t, _ in ok if (w := queue_wait_s(t)) is not None]
    # process generator (every row labelled): the generator's own send times; else the roots' starts.
    # A trace without a single root has no start to compare with its schedule: left out (not 0)
    process = all(SENT_LABEL in labels for _, labels in rows)
    timed = [(labels[SENT_LABEL], labels) for _, labels in rows] if process else [
        (t.root.start_unix_nano, labels) for t, labels in rows if t.root is not None]
    sent_at = [at for at, _ in timed]
    late_s = [(at - labels["scheduled_unix_nano"]) / 1e9 for at, labels in timed]
    handoff = tail([(labels[RECEIVED_LABEL] - labels[SENT_LABEL]) / 1e9 for _, labels in rows], seed=seed) if (
        process) else None
    after = sum(1 for at in sent_at if at > w1)
    offered = (len(rows) + dropped) / window_s
    in_window = sum(1 for at in sent_at if w0 <= at <= w1)
    sent = (in_window + dropped) / window_s
    resp = tail(responses, seed=seed)
    lateness = tail(late_s, seed=seed)
    littles = achieved * resp.mean if achieved is not None and resp.mean is not None else None
    reasons: list[str] = []
    late = False
    if lateness.p95 is not None and lateness.p95 > max(LATENESS_FLOOR_S, 1.0 / value):
        late = True
        which = ("the generator process fell behind its schedule: p95 lateness (send - scheduled, its own clock)"
                 if process else "the generator fell behind its schedule: p95 lateness")
        reasons.append(f"{which} {lateness.p95 * 1e3:.1f} ms, more than "
                       f"the mean gap between arrivals ({1e3 / value:.1f} ms); the load offered was not {value:g}/s")
    if rows and after > tolerance * len(rows):
        late = True
        reasons.append(f"the generator sent {after} of the window's {len(rows)} arrivals after the window ended; the "
                       f"load offered was not {value:g}/s")
    saturated = False
    if achieved is not None and achieved < (1 - tolerance) * min(offered, sent):
        saturated = True
        reasons.append(f"saturated: achieved {achieved:.4g}/s of {min(offered, sent):.4g}/s offered"
                       + (" (sent)" if sent < offered else ""))
    if dropped:
        saturated = True
        reasons.append(f"saturated: the in-flight cap refused {dropped} arrivals")
    growth = _backlog_growth(ok, tolerance * 0.75 * window_s, from_sent=process)
    if growth is not None:
        saturated = True
        reasons.append(growth)
    if failed:
        reasons.append(f"{failed} of {len(rows)} requests failed")
    return RatePoint(
        value=value, run=run, traces=len(rows), failed=failed, dropped=dropped, window_s=window_s,
        offered_realised=offered, offered_sent=sent, achieved=achieved, achieved_reason=reason, completed_in_window=len(ends),
        response=resp, queue_wait=tail(waits, seed=seed) if waits else None, lateness=lateness,
        sent_after_window=after, littles_law_n=littles, late=late, saturated=saturated, reasons=tuple(reasons),
        lateness_from="generator" if process else "root", handoff=handoff)


def _backlog_growth(ok: Sequence[tuple[Trace, dict[str, int]]], threshold_s: float, *,
                    from_sent: bool = False) -> str | None:
    """A problem line when the response time grows across the window's quarters (module docstring), else None.
    ``from_sent``: response times from the generator's send time (the hand-off included) to the root's end."""
    rows = sorted((labels["scheduled_unix_nano"],
                   (t.root.end_unix_nano - labels[SENT_LABEL]) / 1e9 if from_sent else t.root.stage_duration_s)
                  for t, labels in ok if t.root is not None and t.root.stage_duration_s is not None)
    q = len(rows) // 4
    if q < 3:
        return None
    n = len(rows)
    medians = [float(np.median([r for _, r in rows[k * n // 4:(k + 1) * n // 4]])) for k in range(4)]
    rising = all(a < b for a, b in zip(medians, medians[1:], strict=False))
    if rising and medians[-1] - medians[0] > threshold_s:
        return ("saturated: a growing backlog (median response" + (" from the send time" if from_sent else "")
                + " per quarter of the window's arrivals: "
                f"{', '.join(f'{m * 1e3:.1f}' for m in medians)} ms)")
    return None


__all__ = ["ARRIVAL_RATE", "LATENESS_FLOOR_S", "OPEN_LOOP_REFUSAL", "TOLERANCE", "OpenLoopSummary", "RatePoint",
           "Tail", "arrival_points", "labels_for", "tail"]
