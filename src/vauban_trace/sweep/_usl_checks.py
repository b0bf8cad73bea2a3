"""The repeat-based checks of :func:`~vauban_trace.sweep.fit_usl`: weighting, lack of fit, peak interval.

Private helpers of ``_usl`` (split out to keep modules small); the rules are stated here and in
``_usl``'s docstring and docs/sweep.md.

Weighting (``_choose_weights``)
-------------------------------
Needs at least 2 repeats at *every* distinct N (otherwise the per-N variance of X is not
estimable somewhere, and the fit stays unweighted, saying why). Then:

- ``s_j^2``: the sample variance (ddof 1) of X at each distinct ``N_j`` with ``m_j`` repeats;
  repeats that are all identical at some N give no variance to model (unweighted, said so).
- Variance trend: weighted least squares of ``log s_j^2`` (corrected for its bias under normal
  noise, ``E log s^2 = log var + digamma(nu/2) - log(nu/2)``, ``nu = m_j - 1``) on ``log N_j``,
  weights ``1 / trigamma(nu/2)`` (the normal-theory variance of ``log s^2``). The slope ``b``
  is tested against 0 with the t statistic from the line's *empirical* scatter (``k - 2``
  degrees of freedom, ``k`` distinct N), which stays honest for the heavy-tailed timing noise
  where normal theory would be over-confident.
- Rule: weighted when ``p < VARIANCE_ALPHA`` (0.05, two-sided) **and** the fitted variance ratio
  over the measured range, ``(N_max / N_min)^|b|``, is at least ``VARIANCE_RATIO`` (4, i.e. the
  standard deviation changes by 2x or more): a trend that is both detectable and material.
- Weights: ``1 / v(N_j)`` with ``v`` the fitted power law ``var ~ N^b`` (the smoothed variance,
  so one noisy N cannot take or lose the fit alone), clipped to the range of the observed
  per-N variances (no weight more extreme than some N's own data), normalised to mean 1. Every
  point at ``N_j`` gets its N's weight. A variance that changes with N but not monotonically
  (no trend in log-log) is not modelled: the fit stays unweighted and the reason gives the test.

Lack of fit (``_lack_of_fit``)
------------------------------
With repeats the squared error splits into *pure error* (scatter of the repeats about their
per-N mean, ``M - k`` degrees of freedom, ``M`` points) and *lack of fit* (per-N means about the
curve, ``k - q`` degrees of freedom, ``q`` the parameters strictly inside their bounds, at most
3). Unweighted fit: plain sums of squares. Weighted fit: both sums weighted per N, each N's
weight from the variance power law fitted *without* that N (leave-one-out), so the pure error at
``N_j`` is not scaled by a variance estimated from its own scatter. With the fit's own weights
the test refused a correct model in 3.2 % of simulations at the 1 % level (3 repeats);
leave-one-out brings that to 1.8 % (see docs/sweep.md). ``F = (SS_lof / df_lof) / (SS_pe / df_pe)``
and ``p = P(F(df_lof, df_pe) > F)``; ``p < LACK_OF_FIT_ALPHA`` (0.01) refuses the fit. Not
testable: no repeats (``df_pe = 0``), identical repeats (no pure error), ``df_lof = 0``.

Peak interval (``_peak_interval``)
----------------------------------
From the bootstrap refits: ``N*_b = sqrt((1 - sigma_b) / kappa_b)`` where ``kappa_b > 0``; a refit
with ``kappa_b = 0`` has no peak and counts as ``N* = +inf``. The percentile interval is given
only when neither end depends on such a refit (their share stays below the upper tail
``(1 - confidence) / 2``); otherwise no interval, and the count says why.

Distributions: the t and F tail probabilities come from the regularised incomplete beta
function (continued fraction, modified Lentz), written here so numpy is the only dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._stats import FloatArray

VARIANCE_ALPHA = 0.05
VARIANCE_RATIO = 4.0
LACK_OF_FIT_ALPHA = 0.01

Weighting = Literal["none", "inverse_variance"]


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _f_sf(f: float, d1: int, d2: int) -> float:
    """``P(F > f)`` for an F distribution with ``(d1, d2)`` degrees of freedom."""
    if f <= 0.0:
        return 1.0
    if math.isinf(f):
        return 0.0
    return _betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


def _t_two_sided_p(t: float, df: int) -> float:
    """``P(|T| > |t|)`` for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def _digamma_half(h: float) -> float:
    """digamma at a positive integer or half-integer ``h`` (exact recurrences)."""
    if float(h).is_integer():
        out, start = -0.5772156649015329, 1.0
    else:
        out, start = -0.5772156649015329 - 2.0 * math.log(2.0), 0.5
    z = start
    while z < h - 1e-9:
        out += 1.0 / z
        z += 1.0
    return out


def _trigamma_half(h: float) -> float:
    """trigamma at a positive integer or half-integer ``h`` (exact recurrences)."""
    out, z = (math.pi**2 / 6.0, 1.0) if float(h).is_integer() else (math.pi**2 / 2.0, 0.5)
    while z < h - 1e-9:
        out -= 1.0 / (z * z)
        z += 1.0
    return out


@dataclass(frozen=True)
class VarianceTrend:
    """The trend test of the per-N variance of X against N (log-log), see the module docstring."""

    slope: float
    t: float
    df: int
    p: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "t": self.t, "df": self.df, "p": self.p, "ratio": self.ratio}


@dataclass(frozen=True)
class LackOfFit:
    """Lack-of-fit F test from the repeats; ``result`` says passed / failed / why not testable."""

    result: str
    f: float | None = None
    df_lack: int | None = None
    df_pure: int | None = None
    p: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "f": self.f, "df_lack": self.df_lack, "df_pure": self.df_pure, "p": self.p}


def _power_law(lx: FloatArray, y: FloatArray, w: FloatArray) -> tuple[float, float, float]:
    """Weighted least-squares line ``y ~ lx``: ``(mean lx, mean y, slope)`` (weighted means)."""
    xm = float(w @ lx / w.sum())
    ym = float(w @ y / w.sum())
    slope = float(w @ ((lx - xm) * (y - ym))) / float(w @ (lx - xm) ** 2)
    return xm, ym, slope


def _choose_weights(
    n: FloatArray, x: FloatArray
) -> tuple[Weighting, str, VarianceTrend | None, FloatArray | None, FloatArray | None]:
    """``(weighting, reason, trend, fit weights, lack-of-fit test weights)``; see the module docstring."""
    distinct, inverse = np.unique(n, return_inverse=True)
    counts = np.bincount(inverse)
    if counts.max() < 2:
        why = "no repeats: the variance of X cannot be estimated per N, so the fit is unweighted"
        return "none", why, None, None, None
    short = distinct[counts < 2]
    if short.size:
        listed = ", ".join(f"{v:g}" for v in short[:5])
        return "none", (f"repeats missing at N = {listed}: weighting needs >= 2 repeats at every N, "
                        "so the fit is unweighted"), None, None, None
    var = np.array([float(np.var(x[inverse == j], ddof=1)) for j in range(distinct.size)])
    if (var <= 0.0).any():
        listed = ", ".join(f"{v:g}" for v in distinct[var <= 0.0][:5])
        why = f"repeats identical at N = {listed}: no variance to model, so the fit is unweighted"
        return "none", why, None, None, None
    nu = (counts - 1).astype(np.float64)
    y = np.log(var) - np.array([_digamma_half(v / 2.0) - math.log(v / 2.0) for v in nu])
    w = 1.0 / np.array([_trigamma_half(v / 2.0) for v in nu])
    lx = np.log(distinct)
    k = distinct.size
    xm, ym, slope = _power_law(lx, y, w)
    sxx = float(w @ (lx - xm) ** 2)
    resid = y - ym - slope * (lx - xm)
    df = k - 2
    s2 = float(w @ resid**2) / df
    se = math.sqrt(s2 / sxx)
    t = math.copysign(math.inf, slope) if se == 0.0 else slope / se
    p = 1.0 if slope == 0.0 else _t_two_sided_p(t, df)
    ratio = float(math.exp(abs(slope) * (lx[-1] - lx[0])))
    trend = VarianceTrend(slope=slope, t=t if math.isfinite(t) else math.copysign(1e300, t), df=df, p=p, ratio=ratio)
    test = (f"trend of log variance on log N: slope {slope:.3g}, t = {t:.3g}, df = {df}, p = {p:.3g}; "
            f"fitted variance ratio over the range {ratio:.3g}")
    if p >= VARIANCE_ALPHA or ratio < VARIANCE_RATIO:
        why = f"p >= {VARIANCE_ALPHA}" if p >= VARIANCE_ALPHA else f"ratio < {VARIANCE_RATIO:g}"
        why = f"the variance of X does not change materially with N ({test}; {why}): unweighted"
        return "none", why, trend, None, None
    smooth = np.clip(np.exp(ym + slope * (lx - xm)), var.min(), var.max())
    weights: FloatArray = (1.0 / smooth)[inverse]
    weights = weights / weights.mean()
    # for the lack-of-fit test: N_j's variance from the power law fitted without N_j (see docstring)
    loo = np.empty(k)
    for j in range(k):
        keep = np.arange(k) != j
        xj, yj, sj = _power_law(lx[keep], y[keep], w[keep])
        loo[j] = math.exp(yj + sj * (lx[j] - xj))
    test_weights: FloatArray = (1.0 / np.clip(loo, var.min(), var.max()))[inverse]
    test_weights = test_weights / test_weights.mean()
    direction = "grows" if slope > 0 else "falls"
    reason = (f"the variance of X {direction} with N ({test}; p < {VARIANCE_ALPHA} and ratio >= "
              f"{VARIANCE_RATIO:g}): weighted by 1 / the fitted power law var ~ N^{slope:.3g}, clipped "
              "to the observed per-N variances")
    return "inverse_variance", reason, trend, weights, test_weights


def _lack_of_fit(n: FloatArray, x: FloatArray, fitted: FloatArray, weights: FloatArray | None,
                 free_params: int) -> LackOfFit:
    """The lack-of-fit F test; see the module docstring."""
    distinct, inverse = np.unique(n, return_inverse=True)
    k, m = distinct.size, n.size
    df_pure, df_lack = m - k, k - free_params
    if df_pure == 0:
        return LackOfFit("not testable (no repeats)")
    if df_lack <= 0:
        return LackOfFit(f"not testable ({k} distinct N leave no degrees of freedom for lack of fit)")
    w = np.ones_like(x) if weights is None else weights
    means = np.bincount(inverse, weights=x) / np.bincount(inverse)
    ss_pure = float(w @ (x - means[inverse]) ** 2)
    if ss_pure <= 1e-24 * max(float(w @ x**2), 1e-300):
        return LackOfFit("not testable (repeats identical: no pure error)")
    ss_lack = float(w @ (means[inverse] - fitted) ** 2)
    f = (ss_lack / df_lack) / (ss_pure / df_pure)
    p = _f_sf(f, df_lack, df_pure)
    verdict = "failed" if p < LACK_OF_FIT_ALPHA else "passed"
    return LackOfFit(verdict, f=f, df_lack=df_lack, df_pure=df_pure, p=p)


def _peak_interval(
    samples: FloatArray, confidence: float
) -> tuple[tuple[float, float] | None, int]:
    """``(interval or None, refits without a peak)`` from bootstrap parameter rows (lambda, sigma, kappa)."""
    sig, kap = samples[:, 1], samples[:, 2]
    no_peak = int((kap <= 0.0).sum())
    peaks = np.full(kap.shape, np.inf)
    has = kap > 0.0
    peaks[has] = np.sqrt((1.0 - sig[has]) / kap[has])
    tail = (1.0 - confidence) / 2.0
    if samples.shape[0] < 2 or no_peak >= tail * samples.shape[0] or not has.any():
        return None, no_peak
    finite_max = float(peaks[has].max())
    sentinel = 2.0 * finite_max + 1.0
    lo, hi = np.percentile(np.where(has, peaks, sentinel), [100.0 * tail, 100.0 * (1.0 - tail)], method="linear")
    if not (float(hi) <= finite_max):
        return None, no_peak
    return (float(lo), float(hi)), no_peak
