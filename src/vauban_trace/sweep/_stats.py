"""Robust per-point statistics for controlled sweeps, and the small helpers the fits share.

What it does
------------
``summarize(values)`` reduces the repeated samples taken at one sweep point (for example the
seconds per request at batch size 8, measured 20 times) to a :class:`Summary`: count, median,
quartiles, extremes, mean and a bootstrap confidence interval of the median.

Rules
-----
- ``None`` entries are skipped (a sample that could not be measured is absent, not zero); ``n``
  counts what is left.
- Any other non-finite value (``nan``, ``inf``) or a value that is not a real number raises
  ``ValueError`` naming its index: bad input is an error, never silently dropped.
- ``n == 0``: every statistic is ``None``.
- Quantiles use ``numpy.percentile(..., method="linear")`` (Hyndman-Fan type 7, numpy's default):
  ``p25``, ``median`` and ``p75`` equal ``numpy.percentile(v, [25, 50, 75])``.
- The interval ``[ci_low, ci_high]`` is a *percentile bootstrap* of the median: ``resamples``
  resamples of size ``n`` drawn with replacement from a ``numpy.random.Generator`` seeded with
  ``seed`` (so equal inputs and seed give equal output), the median of each, then the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those medians (same
  quantile method). With ``n < 3`` the bootstrap says nothing, so both bounds are ``None``.
- ``confidence`` must lie strictly between 0 and 1 and ``resamples`` must be at least 10
  (``ValueError`` otherwise).

``Summary.to_dict()`` gives JSON-ready values (ints, floats, ``None``; never NaN).

Shared helpers (private, used by ``_usl``): ``_as_finite_array`` (validation with index-naming
errors), ``_check_confidence``, ``_validate_pairs`` (the fits' shared argument checks), ``_r2``,
``_percentile_interval`` and ``_runs_lower_tail_p`` (the exact Wald-Wolfowitz runs test used to
detect structure in fit residuals).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Summary", "summarize"]

FloatArray = npt.NDArray[np.float64]


def _as_finite_array(values: Sequence[Any], name: str, *, skip_none: bool = False) -> FloatArray:
    """Convert ``values`` to a float array; ``ValueError`` naming the first bad index."""
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of numbers, not {type(values).__name__}")
    out: list[float] = []
    for i, v in enumerate(values):
        if v is None and skip_none:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise ValueError(f"{name}[{i}] is not a real number: {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] is not finite: {f!r}")
        out.append(f)
    return np.asarray(out, dtype=np.float64)


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _percentile_interval(samples: FloatArray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of ``samples`` (linear quantiles)."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(samples, [100.0 * tail, 100.0 * (1.0 - tail)], method="linear")
    return float(lo), float(hi)


def _runs_lower_tail_p(signs: Sequence[bool]) -> float:
    """Exact P(R <= observed runs) under random ordering of the given signs (Wald-Wolfowitz).

    Small values mean too few runs: neighbours share a sign more than chance allows, i.e. the
    sequence has structure. Returns 1.0 when one sign is absent (the test says nothing).
    """
    n1 = sum(1 for s in signs if s)
    n2 = len(signs) - n1
    if n1 == 0 or n2 == 0:
        return 1.0
    runs = 1 + sum(1 for a, b in zip(signs, signs[1:], strict=False) if a != b)
    total = math.comb(n1 + n2, n1)
    p = 0
    for r in range(2, runs + 1):
        if r % 2 == 0:
            k = r // 2
            ways = 2 * math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k - 1)
        else:
            k = (r - 1) // 2
            ways = math.comb(n1 - 1, k) * math.comb(n2 - 1, k - 1) + math.comb(n1 - 1, k - 1) * math.comb(
                n2 - 1, k
            )
        p += ways
    return p / total


def _validate_pairs(
    n: Sequence[float], v: Sequence[float], vname: str, confidence: float, bootstrap: int
) -> tuple[FloatArray, FloatArray]:
    """Check the shared fit options and two equal-length finite sequences."""
    _check_confidence(confidence)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    na = _as_finite_array(n, "n")
    va = _as_finite_array(v, vname)
    if na.size != va.size:
        raise ValueError(f"n and {vname} differ in length: {na.size} != {va.size}")
    return na, va


def _r2(v: FloatArray, resid: FloatArray) -> float | None:
    """Coefficient of determination; ``None`` when ``v`` is constant."""
    sst = float(((v - v.mean()) ** 2).sum())
    return None if sst == 0.0 else 1.0 - float(resid @ resid) / sst


@dataclass(frozen=True)
class Summary:
    """Statistics of the samples at one sweep point; see the module docstring for the rules."""

    n: int
    median: float | None
    p25: float | None
    p75: float | None
    minimum: float | None
    maximum: float | None
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``json.dumps(..., allow_nan=False)`` accepts it)."""
        return {
            "n": self.n,
            "median": self.median,
            "p25": self.p25,
            "p75": self.p75,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "mean": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
        }


def summarize(
    values: Sequence[float | None], *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> Summary:
    """Summarise repeated samples: quartiles, extremes, mean and a bootstrap CI of the median."""
    _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise ValueError(f"resamples must be an integer >= 10, got {resamples!r}")
    v = _as_finite_array(values, "values", skip_none=True)
    n = int(v.size)
    if n == 0:
        return Summary(0, None, None, None, None, None, None, None, None, float(confidence))
    p25, med, p75 = (float(q) for q in np.percentile(v, [25.0, 50.0, 75.0], method="linear"))
    ci_low: float | None = None
    ci_high: float | None = None
    if n >= 3:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(resamples, n))
        medians = np.median(v[idx], axis=1)
        ci_low, ci_high = _percentile_interval(medians, float(confidence))
    return Summary(
        n=n,
        median=med,
        p25=p25,
        p75=p75,
        minimum=float(v.min()),
        maximum=float(v.max()),
        mean=float(v.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=float(confidence),
    )
