"""Throughput of a closed-loop concurrency sweep, from traces, and its USL fit.

On the ``concurrency`` axis the value N is the number of clients that each issue requests back to
back (zero think time). A stage's duration is then a residence time, not the cost of N items, so
the per-stage ``X = N / duration`` of the other axes does not apply. Instead, per run (one value
N measured once; a sweep with repeats has several runs per N), from the root spans:

- **the common window.** With client labels (which client issued each trace: the driver's
  ``closed_loop=`` or ``Trace.metadata["closed_loop"]``) and all N clients seen, the run's common
  window is ``(T_a, T_b]``: ``T_a`` the latest first start of a measured request over the
  clients (from then on every client issues measured requests), ``T_b`` the earliest last end
  (until then none has stopped). Inside it exactly N clients are in the loop.
- ``window`` (direct): the requests completed in the common window, ``k`` of them at sorted times
  ``t_1 <= ... <= t_k``, give ``X = (k - 1) / (t_k - t_1)``: completions per second between the
  first and the last (counting from the window's edges instead would be off by up to one request
  per client on a short run). Every completion in the window is a measured request (a client's
  warm-up requests end before its first measured one starts), so this is the system's
  throughput with N clients, counted. Unavailable (``None`` with the reason) without client
  labels, with fewer than N clients, or when fewer than two requests complete in the window (too
  few requests per client: a client finished before another began).
- ``littles_law``: ``X = N / mean(R)``, R a request's response time =
  its root span's duration, over the requests completed in the common window when there is one
  (``littles_law_scope = "window"``), else over all the run's requests (``"all"``: requests of the
  ramp-down, when fewer than N clients remain, then bias R low and X high). Little's law for a
  closed system is ``N = X (R + Z)``; the think time Z is taken as 0, exact when clients issue the
  next request at once, an overstatement by ``Z / R`` when the client loop spends time between
  requests.

When both exist and differ by more than 10 %, the profile says so (think time between requests,
too short a window, unfair service). The driver additionally measures ``completed requests /
window`` on its own clock; that is not a trace quantity and lives in its result.

Which one is fitted: ``throughput="auto"`` (the default) fits ``window`` when every run has it,
else ``littles_law`` for every run (with a problem line naming the run that lacked the window);
``"window"`` or ``"littles_law"`` force one (a forced ``window`` missing at some run refuses the
fit). ``SweepProfile.throughput_method`` names the one fitted. The direct count is preferred: it
needs no steady-state assumption, and on a short run with unfair service (a plain
``threading.Lock`` lets the releasing thread take it again) the requests completed in the window
are the lucky ones, so their mean R, and Little's law with it, is off while the count is not.

Traces without run labels form one run per N. The USL is fitted to one point per run with the
chosen method (:func:`~vauban_trace.sweep.fit_usl`: the usual refusals, weighting and
lack-of-fit test with repeated runs) as the ``request`` stage's fit; every other stage gets a
refusal that says why (a residence time, not a throughput), and no linear fits are made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace.contract import Trace
from vauban_trace.sweep._labels import labels_of
from vauban_trace.sweep._usl import UslFit, fit_usl

CONCURRENCY = "concurrency"
THROUGHPUT_METHODS = ("auto", "window", "littles_law")
#: a relative gap between the two estimates above which the profile says so
DISAGREEMENT = 0.10


@dataclass(frozen=True)
class ThroughputPoint:
    """One run at one concurrency N: response times and the two throughput estimates (per s)."""

    value: int | float
    run: int | None  # None: the traces carried no run labels (all traces of N form one run)
    traces: int
    clients: int | None  # distinct clients seen, None without client labels
    mean_response_s: float  # over the requests Little's law used (littles_law_scope)
    littles_law: float
    littles_law_scope: str  # "window" (completed in the common window) or "all"
    window: float | None
    window_s: float | None  # t_k - t_1
    window_requests: int  # k - 1 (completions after the first)
    window_reason: str | None  # why window is None

    def throughput(self, method: str) -> float | None:
        return self.littles_law if method == "littles_law" else self.window

    def unavailable(self, method: str) -> str | None:
        return self.window_reason if method == "window" else None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "run": self.run, "traces": self.traces, "clients": self.clients,
                "mean_response_s": self.mean_response_s, "littles_law": self.littles_law,
                "littles_law_scope": self.littles_law_scope, "window": self.window, "window_s": self.window_s,
                "window_requests": self.window_requests, "window_reason": self.window_reason}


_Row = tuple[int | None, float, int, int]  # client, response time, root start ns, root end ns


def _root_row(trace: Trace, client: int | None) -> _Row | None:
    root = trace.root
    if root is None:
        return None
    duration = root.stage_duration_s
    if duration is None or duration <= 0:
        return None
    return client, duration, root.start_unix_nano, root.end_unix_nano


def concurrency_points(
    by_value: Mapping[Any, Sequence[Trace]], closed_loop: Mapping[str, tuple[int, int]] | None,
) -> tuple[tuple[ThroughputPoint, ...], list[str]]:
    """Per (N, run): Little's-law X and, with client labels, the common-window X."""
    problems: list[str] = []
    points: list[ThroughputPoint] = []
    for value, traces in by_value.items():
        groups: dict[int | None, list[tuple[Trace, int | None]]] = {}
        for trace in traces:
            label = closed_loop.get(trace.id) if closed_loop is not None else None
            label = label or labels_of(trace.metadata)
            run, client = (label if label is not None else (None, None))
            groups.setdefault(run, []).append((trace, client))
        if None in groups and len(groups) > 1:
            problems.append(f"concurrency {value}: {len(groups[None])} traces without run labels next to labelled "
                            "runs; they form a run of their own")
        for run in sorted(groups, key=lambda r: (r is None, r or 0)):
            rows = [row for t, c in groups[run] if (row := _root_row(t, c)) is not None]
            if len(rows) < len(groups[run]):
                problems.append(f"concurrency {value} run {run}: {len(groups[run]) - len(rows)} traces without a "
                                "positive root duration; left out of the throughput")
            if rows:
                points.append(_point(value, run, rows))
    for p in points:
        if p.window is not None and abs(p.littles_law / p.window - 1) > DISAGREEMENT:
            problems.append(f"concurrency {p.value} run {p.run}: Little's law (think time 0) gives "
                            f"{p.littles_law:.4g}/s, the common window {p.window:.4g}/s: time between requests, "
                            "too short a window or unfair service")
    return tuple(points), problems


def _point(value: Any, run: int | None, rows: Sequence[_Row]) -> ThroughputPoint:
    window, window_s, reason, clients = None, None, None, None
    in_window: list[_Row] = []
    if any(c is None for c, *_ in rows):
        reason = "the traces carry no client labels"
    else:
        firsts: dict[int, int] = {}
        lasts: dict[int, int] = {}
        for c, _, start, end in rows:
            assert c is not None
            firsts[c] = min(firsts.get(c, start), start)
            lasts[c] = max(lasts.get(c, end), end)
        clients = len(firsts)
        t_a, t_b = max(firsts.values()), min(lasts.values())
        if clients != value:
            reason = f"{clients} clients seen at concurrency {value}"
        else:
            in_window = [r for r in rows if t_a < r[3] <= t_b]
            ends = sorted(r[3] for r in in_window)
            if len(ends) >= 2 and ends[-1] > ends[0]:
                window_s = (ends[-1] - ends[0]) / 1e9
                window = (len(ends) - 1) / window_s
            else:
                reason = (f"{len(ends)} requests completed in the clients' common window (need 2: more requests per "
                          "client)")
    used = in_window or list(rows)
    mean_r = sum(r[1] for r in used) / len(used)
    return ThroughputPoint(
        value=value, run=run, traces=len(rows), clients=clients, mean_response_s=mean_r,
        littles_law=float(value) / mean_r, littles_law_scope="window" if in_window else "all",
        window=window, window_s=window_s, window_requests=max(0, len(in_window) - 1) if window else 0,
        window_reason=reason)


def choose_method(points: Sequence[ThroughputPoint], requested: str) -> tuple[str, str | None]:
    """The method to fit and, when ``auto`` fell back to Little's law, why."""
    if requested != "auto":
        return requested, None
    lacking = next((p for p in points if p.window is None), None)
    if lacking is None:
        return "window", None
    return "littles_law", (f"window throughput unavailable at concurrency {lacking.value} run {lacking.run} "
                           f"({lacking.window_reason}): Little's law fitted for every run")


def fit_concurrency(
    points: Sequence[ThroughputPoint], stages: Sequence[str], request_stage: str, *, method: str,
    stable: bool, differing: Sequence[str], seed: int,
) -> dict[str, UslFit]:
    """The request stage's USL fit on one point per run; a refusal for every other stage."""
    other = UslFit("not_applicable", "on the concurrency axis a stage's duration is a residence time, not the cost "
                   "of N items: only the request throughput (N clients in a closed loop) is fitted", CONCURRENCY)
    fits = {s: other for s in stages if s != request_stage}
    usable = [(float(p.value), p.throughput(method)) for p in points]
    missing = [p for p in points if p.throughput(method) is None]
    pts = tuple((n, x) for n, x in usable if x is not None)
    if not stable:
        fits[request_stage] = UslFit("not_applicable", f"artifact coverage differs across the sweep "
                                     f"({', '.join(differing[:3])}): points not comparable", CONCURRENCY, points=pts)
    elif missing:
        p = missing[0]
        fits[request_stage] = UslFit(
            "not_applicable", f"{method} throughput unavailable at concurrency {p.value} run {p.run}: "
            f"{p.unavailable(method)} (use littles_law)", CONCURRENCY, points=pts)
    elif not pts:
        fits[request_stage] = UslFit("not_applicable", "no request has a positive response time", CONCURRENCY)
    else:
        fits[request_stage] = fit_usl([n for n, _ in pts], [x for _, x in pts], axis=CONCURRENCY, seed=seed)
    return {s: fits[s] for s in stages if s in fits}


__all__ = ["CONCURRENCY", "THROUGHPUT_METHODS", "ThroughputPoint", "choose_method", "concurrency_points",
           "fit_concurrency"]
