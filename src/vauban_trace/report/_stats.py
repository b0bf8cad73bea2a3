"""Distributions of one measure over trace pairs, with a seeded bootstrap interval of the mean.

::

    from vauban_trace.report import distribution_of
    d = distribution_of([0.021, 0.034, 0.018], seed=0, resamples=2000, ci_level=0.95)
    d.n, d.mean, d.median, d.min, d.max, d.ci_low, d.ci_high
    d.to_dict()

Only measured values go in: a pair whose measure could not be computed is counted elsewhere
(:class:`vauban_trace.report.NotComputed`), never imputed. The interval is a percentile bootstrap
of the mean: ``resamples`` resamples of the ``n`` values drawn with replacement by
``numpy.random.default_rng(seed)``; the bounds are the ``(1 - ci_level) / 2`` and
``(1 + ci_level) / 2`` quantiles (numpy's default linear interpolation) of the resampled means.
The same values, seed, resamples and level always give the same bounds. With fewer than two
values there is no interval (``ci_low`` and ``ci_high`` are None and ``note`` says why); with no
values there is no distribution at all (:func:`distribution_of` returns None).
Mean and median are numpy's (float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vauban_trace._exceptions import ReportError

#: Defaults of the bootstrap interval.
DEFAULT_SEED = 0
DEFAULT_RESAMPLES = 2000
DEFAULT_CI_LEVEL = 0.95


@dataclass(frozen=True)
class Distribution:
    """Measured values of one measure over pairs: count, centre, range and a bootstrap interval."""

    n: int
    mean: float
    median: float
    min: float
    max: float
    ci_low: float | None
    ci_high: float | None
    ci_level: float
    resamples: int
    seed: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "median": self.median, "min": self.min, "max": self.max,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_level": self.ci_level,
                "ci_method": "percentile bootstrap of the mean", "resamples": self.resamples,
                "seed": self.seed, "note": self.note}


def check_bootstrap(seed: int, resamples: int, ci_level: float) -> None:
    """ReportError naming the first bad bootstrap parameter."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ReportError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ReportError(f"resamples must be an integer >= 1, got {resamples!r}")
    if isinstance(ci_level, bool) or not isinstance(ci_level, int | float) or not 0 < ci_level < 1:
        raise ReportError(f"ci_level must be a number strictly between 0 and 1, got {ci_level!r}")


def distribution_of(values: Sequence[float], *, seed: int = DEFAULT_SEED, resamples: int = DEFAULT_RESAMPLES,
                    ci_level: float = DEFAULT_CI_LEVEL) -> Distribution | None:
    """The distribution of ``values`` (finite numbers), or None when there are none."""
    check_bootstrap(seed, resamples, ci_level)
    if not values:
        return None
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ReportError("distribution_of: values must be finite numbers")
    n = int(arr.size)
    low: float | None = None
    high: float | None = None
    note = ""
    if n < 2:
        note = "one value: no interval"
    else:
        rng = np.random.default_rng(seed)
        means = arr[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        tail = (1.0 - float(ci_level)) / 2.0
        lo, hi = np.quantile(means, [tail, 1.0 - tail])
        # the quantiles of means of the same values cannot leave [min, max]; clip float rounding
        low, high = float(max(lo, arr.min())), float(min(hi, arr.max()))
    mean = float(np.mean(arr))
    if not math.isfinite(mean):  # pragma: no cover - finite inputs of float64 range
        raise ReportError("distribution_of: the mean overflows")
    return Distribution(n=n, mean=mean, median=float(np.median(arr)), min=float(arr.min()),
                        max=float(arr.max()), ci_low=low, ci_high=high, ci_level=float(ci_level),
                        resamples=resamples, seed=seed, note=note)


__all__ = ["DEFAULT_CI_LEVEL", "DEFAULT_RESAMPLES", "DEFAULT_SEED", "Distribution", "check_bootstrap",
           "distribution_of"]
