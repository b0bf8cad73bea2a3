"""Universal Scalability Law and linear fits for sweep profiles, with refusals instead of over-claims.

The model
---------
``X(N) = lambda * N / (1 + sigma * (N - 1) + kappa * N * (N - 1))`` (Gunther, Schwartz's notation):
``lambda`` is the throughput at N = 1, ``sigma`` contention, ``kappa`` coherency. With
``kappa > 0`` throughput peaks at ``N* = sqrt((1 - sigma) / kappa)`` (``UslFit.peak_n``); with
``kappa = 0`` it is Amdahl's law (ceiling ``lambda / sigma``) and ``peak_n`` is ``None``.

``fit_usl(n, x, axis=...)``
---------------------------
Bounded nonlinear least squares on the points as given (repeats at one N are separate points;
the rules below count *distinct* N), bounds ``lambda > 0`` and ``0 <= sigma, kappa <= 1``.
The solver is a projected Levenberg-Marquardt in numpy (analytic Jacobian, Marquardt diagonal
scaling; a parameter at a bound whose gradient points outward is frozen for that step), started
from several points: the linearisation ``N / C(N) - 1 = sigma (N - 1) + kappa N (N - 1)`` with
``C = X / lambda0`` and ``lambda0`` = mean X at the smallest N divided by that N (solved by
least squares and clipped to the bounds), plus ``(lambda0, 0, 0)`` and ``(lambda0, 0.5, 0)``.
The converged start with the smallest squared error wins (solver in ``_usl_solver``).

Weighting (``weighting="auto"``, the default; ``"none"`` forces an unweighted fit). With at least
2 repeats at every distinct N, the per-N sample variances of X are regressed on N in log-log
(the variance trend, ``UslFit.variance_trend``: slope, t, df, p, fitted variance ratio over the
range). When the slope differs from 0 at ``p < VARIANCE_ALPHA`` (0.05, two-sided t test on the
line's own scatter, ``k - 2`` df) **and** the fitted ratio is at least ``VARIANCE_RATIO`` (4, a
2x change of the standard deviation), every point is weighted by ``1 / v(N)``, ``v`` the fitted
power law clipped to the observed per-N variances (smoothed: one noisy N cannot dominate), and
``weighting == "inverse_variance"``. Otherwise ``weighting == "none"``; ``weighting_reason`` says
which case held (no repeats, repeats missing at some N, identical repeats, no material trend,
requested). Details and formulas: ``_usl_checks``.

Errors (``ValueError``: the input is malformed): ``n`` and ``x`` of different lengths; an entry
that is not a real number or not finite (the message names the index); ``min_distinct < 3``,
``min_span <= 1``, ``bootstrap`` negative, ``confidence`` outside (0, 1), ``weighting`` not
``"auto"`` or ``"none"``.

Refusals (``status == "not_applicable"``, ``reason`` says which rule, parameters ``None``;
the data are well formed but do not support a USL claim), checked in this order:

1. an N or an X that is ``<= 0`` (USL describes positive throughput at positive N);
2. fewer than ``min_distinct`` (default 6) distinct N;
3. ``max(N) / min(N) < min_span`` (default 8: about an order of magnitude);
4. X constant (no variation: nothing to fit, R^2 undefined);
5. no start converged (relative change of the squared error below 1e-10, or no step can lower
   it, within 500 iterations);
6. residual structure. Residuals are averaged per distinct N and ordered by N; the exact
   Wald-Wolfowitz runs test on their signs gives ``P(runs <= observed)``; the fit is refused
   when that probability is below ``STRUCTURE_ALPHA`` (0.01). Neighbouring N sharing a sign
   means the curve's shape is wrong (a step from wave quantisation, a latency curve passed as
   throughput, a super-linear region hidden by the bounds). With few distinct N the test has
   little power (with 6 N its smallest p is 0.1): few points also cannot show a fit is wrong,
   which is why rule 2 exists;
7. lack of fit, when there are repeats: the (weighted) squared error splits into pure error
   (repeats about their per-N mean, ``M - k`` df for ``M`` points at ``k`` distinct N) and lack
   of fit (per-N means about the curve, ``k - q`` df, ``q`` the parameters strictly inside their
   bounds; a weighted fit's test uses leave-one-out variance weights, see ``_usl_checks``); the fit is refused when ``P(F(k - q, M - k) > F) < LACK_OF_FIT_ALPHA`` (0.01): the
   curve misses the means by more than the repeats' own scatter allows (a step, wave
   quantisation), which the runs test cannot see with few N. ``UslFit.lack_of_fit`` holds
   ``result`` (passed | failed | "not testable (no repeats)" | not testable because the repeats
   are identical or no df is left), ``f``, ``df_lack``, ``df_pure`` and ``p``.

Rules 5 to 7 refuse with the weighting record (and rule 7 with its test) kept on the result.

Fitted, with notes in ``reason`` (a fit still honest, but read with care):

- a peak below the smallest measured N (``peak_in_range`` is False): an extrapolated peak;
- no interval for ``peak_n`` because too many bootstrap refits had kappa = 0 (see Intervals);
- kappa extrapolated: ``kappa > 0`` and ``peak_n > max(N)``: no measured point lies past the
  knee, so kappa and ``peak_n`` come from curvature before the peak only. They are reported,
  labelled as extrapolation, with their (usually wide) bootstrap intervals; sweep further to
  measure the knee;
- a parameter at a bound (sigma = 1 is a fully serial system; kappa = 0 is Amdahl); sigma = 0
  says whether the bound is active (the squared error would fall with sigma < 0: super-linear
  scaling that the bounds hide, so sigma is not a contention measurement) or merely reached;
- kappa's bootstrap interval reaching 0 while kappa > 0: a peak is not established;
- bootstrap refits that failed, when more than 10 % did.

``caveat``: set when ``axis`` contains "token": on a token-count axis prefill cost grows as
``a + b n + c n^2`` and kappa then measures the quadratic attention term, not coherency.

Intervals: ``bootstrap`` resamples of the points with replacement (``numpy.random.Generator``
seeded with ``seed``: equal inputs and seed give equal output), each refitted from the point
estimate with the points' weights (the variance model is not re-estimated per resample);
resamples with fewer than 3 distinct N or that fail to converge are skipped; the percentile
interval at ``confidence`` of ``lambda``, ``sigma``, ``kappa``. When the estimate has kappa > 0,
``peak_interval`` is the percentile interval of ``sqrt((1 - sigma_b) / kappa_b)`` over the refits,
a refit with ``kappa_b = 0`` (no peak) counting as ``N* = inf``: ``peak_refits`` refits, of which
``peak_refits_without_peak`` had no peak; no interval (``None``, and a note) when an interval end
would depend on one, i.e. when their share reaches the upper tail ``(1 - confidence) / 2``.
``peak_in_range``: whether ``peak_n`` lies within the measured N (``None`` without a peak).
``bootstrap=0`` gives no intervals. ``residuals`` are ``x_observed - x_fitted`` in input order
(unweighted); ``r2`` is ``1 - SSE / SST`` on them, weighted fit or not.

``fit_linear(n, y, axis=...)``
------------------------------
Ordinary least squares ``y = slope * n + intercept`` for quantities USL does not model (bytes
moved grow linearly, sync counts are constant or step-like). Same input errors; refused when
fewer than ``min_distinct`` (default 3) distinct n. ``r2`` is ``None`` when y is constant.
Bootstrap intervals for ``slope`` and ``intercept`` as above (resamples with one distinct n
skipped).

Both results are frozen dataclasses whose ``to_dict()`` is JSON-ready (no NaN; intervals as
two-element lists).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._stats import FloatArray, _percentile_interval, _r2, _runs_lower_tail_p, _validate_pairs
from ._usl_checks import (
    LACK_OF_FIT_ALPHA,
    VARIANCE_ALPHA,
    VARIANCE_RATIO,
    LackOfFit,
    VarianceTrend,
    Weighting,
    _choose_weights,
    _lack_of_fit,
    _peak_interval,
)
from ._usl_solver import _LOWER, _MAX_ITER, _UPPER, _best_fit, _jacobian, _lm, _starts, _usl

__all__ = [
    "LACK_OF_FIT_ALPHA",
    "STRUCTURE_ALPHA",
    "VARIANCE_ALPHA",
    "VARIANCE_RATIO",
    "LackOfFit",
    "LinearFit",
    "UslFit",
    "VarianceTrend",
    "fit_linear",
    "fit_usl",
]

STRUCTURE_ALPHA = 0.01


@dataclass(frozen=True)
class UslFit:
    """Result of :func:`fit_usl`; see the module docstring for every rule."""

    status: Literal["fitted", "not_applicable"]
    reason: str
    axis: str
    lambda_: float | None = None
    sigma: float | None = None
    kappa: float | None = None
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    peak_n: float | None = None
    r2: float | None = None
    residuals: tuple[float, ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    caveat: str | None = None
    weighting: Weighting = "none"
    weighting_reason: str = ""
    variance_trend: VarianceTrend | None = None
    lack_of_fit: LackOfFit | None = None
    peak_interval: tuple[float, float] | None = None
    peak_refits: int = 0
    peak_refits_without_peak: int = 0
    peak_in_range: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``json.dumps(..., allow_nan=False)`` accepts it)."""
        return {
            "model": "usl",
            "status": self.status,
            "reason": self.reason,
            "axis": self.axis,
            "lambda": self.lambda_,
            "sigma": self.sigma,
            "kappa": self.kappa,
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "peak_n": self.peak_n,
            "r2": self.r2,
            "residuals": list(self.residuals),
            "points": [[n, x] for n, x in self.points],
            "caveat": self.caveat,
            "weighting": self.weighting,
            "weighting_reason": self.weighting_reason,
            "variance_trend": None if self.variance_trend is None else self.variance_trend.to_dict(),
            "lack_of_fit": None if self.lack_of_fit is None else self.lack_of_fit.to_dict(),
            "peak_interval": None if self.peak_interval is None else list(self.peak_interval),
            "peak_refits": self.peak_refits,
            "peak_refits_without_peak": self.peak_refits_without_peak,
            "peak_in_range": self.peak_in_range,
        }

    def predict(self, n: float) -> float:
        """Model throughput at ``n``; ``ValueError`` when not fitted or ``n`` is not finite positive."""
        if self.status != "fitted" or self.lambda_ is None or self.sigma is None or self.kappa is None:
            raise ValueError(f"USL fit is {self.status}, cannot predict: {self.reason}")
        if not (isinstance(n, int | float) and math.isfinite(n) and n > 0):
            raise ValueError(f"n must be a finite positive number, got {n!r}")
        return float(_usl(np.array([float(n)]), np.array([self.lambda_, self.sigma, self.kappa]))[0])


@dataclass(frozen=True)
class LinearFit:
    """Result of :func:`fit_linear`."""

    status: Literal["fitted", "not_applicable"]
    reason: str
    axis: str
    slope: float | None = None
    intercept: float | None = None
    r2: float | None = None
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    residuals: tuple[float, ...] = ()
    points: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``json.dumps(..., allow_nan=False)`` accepts it)."""
        return {
            "model": "linear",
            "status": self.status,
            "reason": self.reason,
            "axis": self.axis,
            "slope": self.slope,
            "intercept": self.intercept,
            "r2": self.r2,
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()},
            "residuals": list(self.residuals),
            "points": [[n, y] for n, y in self.points],
        }


def fit_usl(
    n: Sequence[float],
    x: Sequence[float],
    *,
    axis: str = "concurrency",
    min_distinct: int = 6,
    min_span: float = 8.0,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    weighting: Literal["auto", "none"] = "auto",
) -> UslFit:
    """Fit the USL to (N, X) points, or refuse with the reason; see the module docstring."""
    na, xa = _validate_pairs(n, x, "x", confidence, bootstrap)
    if weighting not in ("auto", "none"):
        raise ValueError(f"weighting must be 'auto' or 'none', got {weighting!r}")
    if isinstance(min_distinct, bool) or not isinstance(min_distinct, int) or min_distinct < 3:
        raise ValueError(f"min_distinct must be an integer >= 3 (three parameters), got {min_distinct!r}")
    if not (isinstance(min_span, int | float) and math.isfinite(min_span) and min_span > 1):
        raise ValueError(f"min_span must be a finite number > 1, got {min_span!r}")
    points = tuple(zip(na.tolist(), xa.tolist(), strict=True))
    caveat = (
        "token-count axis: prefill grows as a + b*n + c*n^2, so kappa measures the quadratic "
        "attention term, not coherency; sigma and peak_n are not contention/saturation claims"
        if "token" in axis.lower()
        else None
    )

    def refuse(reason: str) -> UslFit:
        return UslFit("not_applicable", reason, axis, points=points, caveat=caveat)

    for name, arr in (("n", na), ("x", xa)):
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            i = int(bad[0])
            return refuse(
                f"{name}[{i}] = {arr[i]!r} is not positive; USL models positive throughput at N > 0"
            )
    distinct = np.unique(na)
    if distinct.size < min_distinct:
        return refuse(
            f"only {distinct.size} distinct N (need {min_distinct}): three parameters need more points "
            "than they can fit exactly"
        )
    span = float(distinct[-1] / distinct[0])
    if span < min_span:
        return refuse(
            f"N spans a factor of {span:.3g} (need {min_span:g}): too narrow to separate sigma and kappa"
        )
    if float(xa.max()) == float(xa.min()):
        return refuse("X is constant across N: throughput does not vary with N, nothing to fit")
    mode: Weighting
    if weighting == "none":
        mode, why = "none", "unweighted as requested (weighting='none')"
        trend, weights, test_weights = None, None, None
    else:
        mode, why, trend, weights, test_weights = _choose_weights(na, xa)
    sw = None if weights is None else np.sqrt(weights)

    def refuse_fitted(reason: str, lof: LackOfFit | None = None) -> UslFit:
        return UslFit("not_applicable", reason, axis, points=points, caveat=caveat, weighting=mode,
                      weighting_reason=why, variance_trend=trend, lack_of_fit=lof)

    best = _best_fit(na, xa, _starts(na, xa), sw)
    if best is None:
        return refuse_fitted(f"the least-squares fit did not converge within {_MAX_ITER} iterations")
    p, _ = best
    resid = xa - _usl(na, p)
    mean_resid = np.array([resid[na == d].mean() for d in distinct])
    nonzero = mean_resid[mean_resid != 0.0]
    p_runs = _runs_lower_tail_p([bool(v > 0) for v in nonzero])
    if p_runs < STRUCTURE_ALPHA:
        return refuse_fitted(
            f"residuals show structure: mean residual signs ordered by N form too few runs "
            f"(exact runs test p = {p_runs:.3g} < {STRUCTURE_ALPHA}); the USL shape does not describe these data"
        )
    free = int(((p > _LOWER) & (p < _UPPER)).sum())
    lof = _lack_of_fit(na, xa, xa - resid, test_weights, free)
    if lof.result == "failed":
        return refuse_fitted(
            f"lack of fit: the per-N means of X miss the USL curve by more than the scatter of the "
            f"repeats allows (F = {lof.f:.3g}, df = ({lof.df_lack}, {lof.df_pure}), p = {lof.p:.3g} < "
            f"{LACK_OF_FIT_ALPHA}); the USL shape does not describe these data",
            lof,
        )
    lam, sig, kap = (float(v) for v in p)
    peak = math.sqrt((1.0 - sig) / kap) if kap > 0 else None
    peak_in_range = None if peak is None else bool(distinct[0] <= peak <= distinct[-1])
    notes: list[str] = []
    if peak is not None and peak > float(distinct[-1]):
        notes.append(
            f"kappa is extrapolated: the fitted peak N* = {peak:.4g} lies beyond the largest measured "
            f"N = {distinct[-1]:g}; no point past the knee constrains kappa or peak_n"
        )
    if peak is not None and peak < float(distinct[0]):
        notes.append(
            f"the fitted peak N* = {peak:.4g} lies below the smallest measured N = {distinct[0]:g}: "
            "an extrapolated peak"
        )
    if kap == 0.0:
        notes.append("kappa at its lower bound 0 (Amdahl regime, ceiling lambda/sigma)")
    if sig == 0.0 and float(_jacobian(na, p)[:, 1] @ resid) < 0:
        notes.append(
            "sigma pinned at its lower bound 0: the unbounded fit wants sigma < 0, i.e. super-linear "
            "scaling somewhere in the range, which the USL bounds cannot express"
        )
    elif sig == 0.0:
        notes.append("sigma at its lower bound 0 (a super-linear region would be hidden by the bound)")
    elif sig == 1.0:
        notes.append("sigma at its upper bound 1 (fully serial)")
    intervals: dict[str, tuple[float, float]] = {}
    peak_interval: tuple[float, float] | None = None
    peak_refits = no_peak = 0
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples: list[FloatArray] = []
        for _ in range(bootstrap):
            idx = rng.integers(0, na.size, size=na.size)
            nb, xb = na[idx], xa[idx]
            if np.unique(nb).size < 3:
                continue
            res = _lm(nb, xb, p, None if sw is None else sw[idx])
            if res is not None:
                samples.append(res[0])
        failed = bootstrap - len(samples)
        if failed > bootstrap // 10:
            notes.append(f"{failed} of {bootstrap} bootstrap resamples could not be refitted")
        if len(samples) >= 2:
            arr = np.vstack(samples)
            for j, name in enumerate(("lambda", "sigma", "kappa")):
                intervals[name] = _percentile_interval(arr[:, j], float(confidence))
            if peak is not None and intervals["kappa"][0] == 0.0:
                notes.append("kappa's interval reaches 0: the data are also consistent with no peak (Amdahl)")
            if peak is not None:
                peak_refits = len(samples)
                peak_interval, no_peak = _peak_interval(arr, float(confidence))
                if peak_interval is None:
                    notes.append(
                        f"no interval for peak_n: {no_peak} of {peak_refits} bootstrap refits had kappa = 0 "
                        "(no peak)"
                    )
    return UslFit(
        status="fitted",
        reason="; ".join(notes),
        axis=axis,
        lambda_=lam,
        sigma=sig,
        kappa=kap,
        intervals=intervals,
        peak_n=peak,
        r2=_r2(xa, resid),
        residuals=tuple(float(v) for v in resid),
        points=points,
        caveat=caveat,
        lack_of_fit=lof,
        peak_interval=peak_interval,
        peak_refits=peak_refits,
        peak_refits_without_peak=no_peak,
        peak_in_range=peak_in_range,
        weighting=mode,
        weighting_reason=why,
        variance_trend=trend,
    )


def _ols(n: FloatArray, y: FloatArray) -> tuple[float, float]:
    nm = float(n.mean())
    dn = n - nm
    slope = float(dn @ (y - y.mean())) / float(dn @ dn)
    return slope, float(y.mean()) - slope * nm


def fit_linear(
    n: Sequence[float],
    y: Sequence[float],
    *,
    axis: str = "n",
    min_distinct: int = 3,
    bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> LinearFit:
    """Ordinary least squares ``y = slope * n + intercept`` with bootstrap intervals."""
    na, ya = _validate_pairs(n, y, "y", confidence, bootstrap)
    if isinstance(min_distinct, bool) or not isinstance(min_distinct, int) or min_distinct < 2:
        raise ValueError(f"min_distinct must be an integer >= 2, got {min_distinct!r}")
    points = tuple(zip(na.tolist(), ya.tolist(), strict=True))
    distinct = int(np.unique(na).size)
    if distinct < min_distinct:
        return LinearFit(
            "not_applicable", f"only {distinct} distinct n (need {min_distinct})", axis, points=points
        )
    slope, intercept = _ols(na, ya)
    resid = ya - (slope * na + intercept)
    intervals: dict[str, tuple[float, float]] = {}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        fits: list[tuple[float, float]] = []
        for _ in range(bootstrap):
            idx = rng.integers(0, na.size, size=na.size)
            if np.unique(na[idx]).size >= 2:
                fits.append(_ols(na[idx], ya[idx]))
        if len(fits) >= 2:
            arr = np.asarray(fits)
            intervals = {
                "slope": _percentile_interval(arr[:, 0], float(confidence)),
                "intercept": _percentile_interval(arr[:, 1], float(confidence)),
            }
    return LinearFit(
        status="fitted",
        reason="",
        axis=axis,
        slope=slope,
        intercept=intercept,
        r2=_r2(ya, resid),
        intervals=intervals,
        residuals=tuple(float(v) for v in resid),
        points=points,
    )
