"""Paired tests of "no difference" and multiple-comparison adjustments (numpy only).

::

    from vauban_trace.report._signif import paired_test, holm, benjamini_hochberg
    t = paired_test([0.12, 0.31, -0.02, 0.25, 0.4, 0.18], test="sign_flip")
    t.p, t.exact, t.min_p, t.mc_se
    holm([0.01, 0.04, 0.03]), benjamini_hochberg([0.01, 0.04, 0.03])

The data of one test are the per-pair differences ``d_i = candidate_i - baseline_i`` of one
measure. The null hypothesis is that, within each pair, the baseline and the candidate value are
exchangeable (the same distribution, whatever it is): then each ``d_i`` is symmetric about 0 and
flipping its sign leaves the joint distribution unchanged. Both tests condition on the observed
``|d_i|`` and compare the observed statistic with its distribution over the ``2^n`` sign flips,
so they assume no normality, handle ties and zeros exactly, and are exact for any n:

``sign_flip`` (default)
    statistic: the sum (equivalently the mean) of the differences. It tests the mean paired
    difference, the same quantity as the effect size the report prints (mean delta with its
    bootstrap CI), so the p-value and the interval describe one thing.
``signed_rank``
    statistic: the Wilcoxon signed-rank sum ``sum sign(d_i) * rank(|d_i|)`` with zero differences
    dropped and tied ``|d_i|`` given their mid-rank; its null distribution is the sign-flip
    distribution of those ranks (the exact conditional null, valid with ties). Robust to a few
    huge differences (timings with outliers), at the price of testing a rank location, not the mean.

Two-sided p-value: the fraction of sign vectors whose ``|T*| >= |T|`` (a relative tolerance of
1e-10 absorbs float rounding in the sums). Up to :data:`EXACT_MAX_N` differences every sign vector
is enumerated (``exact = True``). Above it, ``permutations`` sign vectors are drawn by
``numpy.random.default_rng(seed)`` and ``p = (1 + #{|T*| >= |T|}) / (1 + permutations)``: this
Monte Carlo p-value is itself a valid test (its rejection rate under the null is at most alpha for
any number of draws), and ``mc_se = sqrt(p (1 - p) / permutations)`` states its Monte Carlo error
against the exact p-value.

The smallest p-value a test can give is ``min_p = 2 / 2^n`` (every difference the same sign), so
with n pairs no test can reject at alpha when ``2^(1-n) > alpha`` (n < 6 at alpha = 0.05):
:func:`too_few_pairs` says so, and the report then runs no test rather than print a p-value that
cannot mean anything.

Adjustments over a family of m p-values (both return adjusted p-values in the input order, each
in [p, 1]; a hypothesis is rejected when its adjusted p <= alpha):

- :func:`holm`: Holm's step-down, controls the family-wise error rate (the chance of any false
  rejection) under any dependence between the tests;
- :func:`benjamini_hochberg`: Benjamini-Hochberg step-up, controls the false discovery rate (the
  expected share of false rejections among the rejections) for independent or positively
  dependent tests.

Equivalence (:func:`tost`, :func:`tost_pvalues`): two one-sided sign-flip tests of the mean paired
difference against a margin ``delta > 0``. H0: ``mean(d) >= delta`` is tested on ``d - delta``
(small sums are evidence against it: ``p_upper = #{T* <= T} / 2^n``), H0: ``mean(d) <= -delta`` on
``d + delta`` (``p_lower = #{T* >= T} / 2^n``), and ``p = max(p_upper, p_lower)``: equivalence
within ±delta is shown at level alpha when ``p <= alpha``. Exact up to :data:`EXACT_MAX_N`
differences, Monte Carlo above (the same seeded draws for both sides, ``(1 + hits) / (1 +
permutations)``). Assumption: under each boundary null the shifted differences ``d -+ delta`` are
symmetric about 0 (the deltas symmetric about their mean, which sits on the boundary). The smallest
attainable p is ``2^-n`` (every ``|d_i| < delta``), so fewer than ``log2(1/alpha)`` pairs can never
show equivalence (n < 5 at 0.05): :func:`tost_too_few_pairs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vauban_trace._exceptions import ReportError

#: Test names and what each tests.
TESTS: dict[str, str] = {
    "sign_flip": "two-sided sign-flip permutation test of the mean paired difference",
    "signed_rank": "two-sided Wilcoxon signed-rank test (exact sign-flip null of the mid-ranks; zeros dropped)",
}
#: Multiple-comparison adjustments and what each controls.
CORRECTIONS: dict[str, str] = {
    "holm": "Holm step-down (family-wise error rate)",
    "bh": "Benjamini-Hochberg step-up (false discovery rate)",
}
DEFAULT_TEST = "sign_flip"
DEFAULT_CORRECTION = "holm"
DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 10000
#: Up to this many differences, every sign vector is enumerated (2^16 = 65536).
EXACT_MAX_N = 16
_RTOL = 1e-10
_CHUNK = 1 << 21  # sign-vector entries drawn per Monte Carlo step

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PairedTest:
    """One paired test: its method, sample, p-value and how exact it is."""

    test: str
    n: int
    n_nonzero: int
    statistic: float
    p: float
    exact: bool
    min_p: float
    permutations: int | None = None
    seed: int | None = None
    mc_se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "method": TESTS[self.test], "n": self.n, "n_nonzero": self.n_nonzero,
                "statistic": self.statistic, "p": self.p, "exact": self.exact, "min_p": self.min_p,
                "permutations": self.permutations, "seed": self.seed, "mc_se": self.mc_se}


def check_test_params(test: str, correction: str, alpha: float, permutations: int) -> None:
    """ReportError naming the first bad test parameter."""
    if test not in TESTS:
        raise ReportError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    if correction not in CORRECTIONS:
        raise ReportError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ReportError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ReportError(f"permutations must be an integer >= 1, got {permutations!r}")


def min_p_value(n: int) -> float:
    """The smallest two-sided p-value of a sign-flip test on n differences."""
    return 1.0 if n < 1 else min(1.0, 2.0 ** (1 - n))


def too_few_pairs(n: int, alpha: float) -> str | None:
    """Why n pairs cannot give a test able to reject at ``alpha``, or None when they can."""
    if n < 2:
        return f"{n} pair(s) measured: too few for a test"
    if min_p_value(n) > alpha:
        return (f"{n} pairs measured: the smallest attainable p is 2^(1-n) = {min_p_value(n):.4g} > "
                f"alpha {alpha:g}: too few pairs for a test")
    return None


def scores(d: Array, test: str) -> Array:
    """Per-difference scores whose sum is the statistic: the differences themselves, or the signed
    mid-ranks of the nonzero ``|d|`` (zeros score 0). ``d`` has shape (k, n): k data sets."""
    if test == "sign_flip":
        return d
    a = np.abs(d)
    nz = a > 0
    if a.shape[1] <= 64:  # many small rows at once (calibration): pairwise comparisons
        less = ((a[:, None, :] < a[:, :, None]) & nz[:, None, :]).sum(axis=-1)
        equal = ((a[:, None, :] == a[:, :, None]) & nz[:, None, :]).sum(axis=-1)
        ranks = less + (equal + 1) / 2.0
    else:  # long rows: sort each one
        ranks = np.empty_like(a)
        for i, row in enumerate(a):
            _, inverse, counts = np.unique(row[row > 0], return_inverse=True, return_counts=True)
            below = np.concatenate([[0], np.cumsum(counts)[:-1]])
            mid = np.zeros(row.shape)
            mid[row > 0] = (below + (counts + 1) / 2.0)[inverse]
            ranks[i] = mid
    return np.where(nz, np.sign(d) * ranks, 0.0)


def _signs(n: int) -> Array:
    bits = (np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)) & 1
    return (bits * 2 - 1).astype(np.float64)


def signflip_pvalues(d: npt.ArrayLike, test: str = DEFAULT_TEST, *, permutations: int = DEFAULT_PERMUTATIONS,
                     seed: int = 0, exact_max_n: int = EXACT_MAX_N) -> tuple[Array, bool]:
    """Two-sided p-values of k data sets at once: ``d`` has shape (k, n) (or (n,)); returns the
    p-values (shape (k,)) and whether they are exact (n <= ``exact_max_n``) or Monte Carlo."""
    arr = np.atleast_2d(np.asarray(d, dtype=np.float64))
    x = scores(arr, test)
    observed = np.abs(x.sum(axis=1))
    tol = _RTOL * np.abs(x).sum(axis=1)
    n = arr.shape[1]
    if n <= exact_max_n:
        flipped = np.abs(x @ _signs(n).T)
        return (flipped >= (observed - tol)[:, None]).mean(axis=1), True
    rng = np.random.default_rng(seed)
    hits = np.zeros(arr.shape[0], dtype=np.int64)
    chunk = max(1, min(permutations, _CHUNK // max(n, arr.shape[0])))  # bounded memory per step
    done = 0
    while done < permutations:
        size = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(size, n)).astype(np.float64) * 2 - 1
        hits += (np.abs(x @ signs.T) >= (observed - tol)[:, None]).sum(axis=1)
        done += size
    p: Array = (1.0 + hits.astype(np.float64)) / (1.0 + permutations)
    return p, False


def paired_test(deltas: Sequence[float], test: str = DEFAULT_TEST, *, permutations: int = DEFAULT_PERMUTATIONS,
                seed: int = 0) -> PairedTest:
    """The paired test of ``deltas`` (candidate minus baseline, finite; at least one)."""
    check_test_params(test, DEFAULT_CORRECTION, DEFAULT_ALPHA, permutations)
    arr = np.asarray([float(v) for v in deltas], dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ReportError("paired_test: deltas must be one or more finite numbers")
    p_arr, exact = signflip_pvalues(arr[None, :], test, permutations=permutations, seed=seed)
    p = float(min(1.0, p_arr[0]))
    statistic = float(scores(arr[None, :], test).sum())
    mc = None if exact else math.sqrt(p * (1.0 - p) / permutations)
    return PairedTest(test=test, n=int(arr.size), n_nonzero=int(np.count_nonzero(arr)), statistic=statistic,
                      p=p, exact=exact, min_p=min_p_value(int(arr.size)) if exact else
                      max(min_p_value(int(arr.size)), 1.0 / (1 + permutations)),
                      permutations=None if exact else permutations, seed=None if exact else seed, mc_se=mc)


@dataclass(frozen=True)
class TostTest:
    """Two one-sided sign-flip tests of ``|mean(d)| < margin``: both p-values and their max."""

    n: int
    margin: float
    mean: float
    p_upper: float
    p_lower: float
    p: float
    exact: bool
    min_p: float
    permutations: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": TOST_METHOD, "n": self.n, "margin": self.margin, "mean": self.mean,
                "p_upper": self.p_upper, "p_lower": self.p_lower, "p": self.p, "exact": self.exact,
                "min_p": self.min_p, "permutations": self.permutations, "seed": self.seed}


#: What :func:`tost` tests.
TOST_METHOD = ("two one-sided sign-flip tests of the mean paired difference against ±margin "
               "(H0 mean >= margin on d - margin, H0 mean <= -margin on d + margin; p = max)")


def tost_min_p(n: int) -> float:
    """The smallest p of a TOST on n differences (exact): ``2^-n``."""
    return 1.0 if n < 1 else 2.0 ** -n


def tost_too_few_pairs(n: int, alpha: float) -> str | None:
    """Why n pairs can never show equivalence at ``alpha``, or None when they can."""
    if n < 1 or tost_min_p(n) > alpha:
        return (f"{n} pair(s) measured: the smallest attainable TOST p is 2^-n = {tost_min_p(n):.4g} > "
                f"alpha {alpha:g}: too few pairs to ever show equivalence")
    return None


def tost_pvalues(d: npt.ArrayLike, margin: float, *, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                 exact_max_n: int = EXACT_MAX_N) -> tuple[Array, Array, bool]:
    """One-sided p-values of k data sets at once (``d``: (k, n) or (n,)): ``(p_upper, p_lower,
    exact)``; the TOST p-value is their elementwise max."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin < float("inf"):
        raise ReportError(f"margin must be a finite number > 0, got {margin!r}")
    arr = np.atleast_2d(np.asarray(d, dtype=np.float64))
    up, lo = arr - margin, arr + margin
    t_up, t_lo = up.sum(axis=1), lo.sum(axis=1)
    tol_up, tol_lo = _RTOL * np.abs(up).sum(axis=1), _RTOL * np.abs(lo).sum(axis=1)
    n = arr.shape[1]
    if n <= exact_max_n:
        signs = _signs(n).T
        p_up: Array = ((up @ signs) <= (t_up + tol_up)[:, None]).mean(axis=1)
        p_lo: Array = ((lo @ signs) >= (t_lo - tol_lo)[:, None]).mean(axis=1)
        return p_up, p_lo, True
    rng = np.random.default_rng(seed)
    h_up = np.zeros(arr.shape[0], dtype=np.int64)
    h_lo = np.zeros(arr.shape[0], dtype=np.int64)
    chunk = max(1, min(permutations, _CHUNK // max(n, arr.shape[0])))
    done = 0
    while done < permutations:
        size = min(chunk, permutations - done)
        draw = (rng.integers(0, 2, size=(size, n)).astype(np.float64) * 2 - 1).T
        h_up += ((up @ draw) <= (t_up + tol_up)[:, None]).sum(axis=1)
        h_lo += ((lo @ draw) >= (t_lo - tol_lo)[:, None]).sum(axis=1)
        done += size
    pu: Array = (1.0 + h_up.astype(np.float64)) / (1.0 + permutations)
    pl: Array = (1.0 + h_lo.astype(np.float64)) / (1.0 + permutations)
    return pu, pl, False


def tost(deltas: Sequence[float], margin: float, *, permutations: int = DEFAULT_PERMUTATIONS,
         seed: int = 0) -> TostTest:
    """The TOST of ``deltas`` (candidate minus baseline, finite; at least one) against ±``margin``."""
    check_test_params(DEFAULT_TEST, DEFAULT_CORRECTION, DEFAULT_ALPHA, permutations)
    arr = np.asarray([float(v) for v in deltas], dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ReportError("tost: deltas must be one or more finite numbers")
    p_up, p_lo, exact = tost_pvalues(arr[None, :], margin, permutations=permutations, seed=seed)
    pu, pl = float(min(1.0, p_up[0])), float(min(1.0, p_lo[0]))
    n = int(arr.size)
    return TostTest(n=n, margin=float(margin), mean=float(arr.mean()), p_upper=pu, p_lower=pl, p=max(pu, pl),
                    exact=exact, min_p=tost_min_p(n) if exact else max(tost_min_p(n), 1.0 / (1 + permutations)),
                    permutations=None if exact else permutations, seed=None if exact else seed)


def _as_p(p: npt.ArrayLike) -> Array:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim > 2 or (arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1)):
        raise ReportError("p-values must be numbers in [0, 1]")
    return arr


def holm(p: npt.ArrayLike) -> Array:
    """Holm-adjusted p-values (input order). ``p`` may be (m,) or (k, m): k families at once."""
    arr = _as_p(p)
    if arr.size == 0:
        return arr.copy()
    two = np.atleast_2d(arr)
    m = two.shape[1]
    order = np.argsort(two, axis=1, kind="stable")
    ranked = np.take_along_axis(two, order, axis=1) * (m - np.arange(m))
    adj_sorted = np.minimum(np.maximum.accumulate(ranked, axis=1), 1.0)
    out = np.empty_like(two)
    np.put_along_axis(out, order, adj_sorted, axis=1)
    return out.reshape(arr.shape)


def benjamini_hochberg(p: npt.ArrayLike) -> Array:
    """Benjamini-Hochberg-adjusted p-values (input order); (m,) or (k, m)."""
    arr = _as_p(p)
    if arr.size == 0:
        return arr.copy()
    two = np.atleast_2d(arr)
    m = two.shape[1]
    order = np.argsort(two, axis=1, kind="stable")
    ranked = np.take_along_axis(two, order, axis=1) * m / np.arange(1, m + 1)
    adj_sorted = np.minimum(np.minimum.accumulate(ranked[:, ::-1], axis=1)[:, ::-1], 1.0)
    out = np.empty_like(two)
    np.put_along_axis(out, order, adj_sorted, axis=1)
    return out.reshape(arr.shape)


def adjust(p: npt.ArrayLike, correction: str) -> Array:
    """``holm`` or ``bh`` adjusted p-values."""
    if correction not in CORRECTIONS:
        raise ReportError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    return holm(p) if correction == "holm" else benjamini_hochberg(p)


__all__ = ["CORRECTIONS", "DEFAULT_ALPHA", "DEFAULT_CORRECTION", "DEFAULT_PERMUTATIONS", "DEFAULT_TEST",
           "EXACT_MAX_N", "TESTS", "TOST_METHOD", "PairedTest", "TostTest", "adjust", "benjamini_hochberg",
           "check_test_params", "holm", "min_p_value", "paired_test", "scores", "signflip_pvalues", "too_few_pairs",
           "tost", "tost_min_p", "tost_pvalues", "tost_too_few_pairs"]
