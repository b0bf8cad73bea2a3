"""fit_usl / fit_linear: parameter recovery with intervals, refusals with reasons, determinism, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest

from vauban_trace.sweep._usl import STRUCTURE_ALPHA, fit_linear, fit_usl

Arr = npt.NDArray[np.float64]
N_GRID = np.repeat(np.array([1, 2, 4, 8, 12, 16, 24, 32, 48, 64], dtype=np.float64), 3)


def usl(n: Arr, lam: float, sigma: float, kappa: float) -> Arr:
    out: Arr = lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
    return out


def noisy(n: Arr, lam: float, sigma: float, kappa: float, rel: float, seed: int) -> Arr:
    rng = np.random.default_rng(seed)
    out: Arr = usl(n, lam, sigma, kappa) * (1 + rel * rng.standard_normal(n.size))
    return out


@pytest.mark.parametrize(("lam", "sigma", "kappa", "seed"), [(100.0, 0.05, 0.001, 1), (40.0, 0.2, 0.0005, 2)])
def test_recovers_known_parameters_with_intervals(lam: float, sigma: float, kappa: float, seed: int) -> None:
    fit = fit_usl(N_GRID.tolist(), noisy(N_GRID, lam, sigma, kappa, 0.015, seed).tolist())
    assert fit.status == "fitted", fit.reason
    assert fit.lambda_ == pytest.approx(lam, rel=0.05)
    assert fit.sigma == pytest.approx(sigma, rel=0.25)
    assert fit.kappa == pytest.approx(kappa, rel=0.25)
    for name, true in (("lambda", lam), ("sigma", sigma), ("kappa", kappa)):
        lo, hi = fit.intervals[name]
        assert lo <= true <= hi, (name, lo, true, hi)
    assert fit.sigma is not None and fit.kappa is not None and fit.peak_n is not None
    assert fit.peak_n == pytest.approx(math.sqrt((1 - fit.sigma) / fit.kappa))
    assert fit.peak_n < 64 and "extrapolated" not in fit.reason
    assert fit.r2 is not None and fit.r2 > 0.95
    assert len(fit.residuals) == N_GRID.size and fit.points[0] == (1.0, fit.points[0][1])
    assert fit.caveat is None and fit.axis == "concurrency"


def test_noise_free_data_fit_exactly_and_predict() -> None:
    n = np.arange(1, 65, dtype=np.float64)
    fit = fit_usl(n.tolist(), usl(n, 100.0, 0.05, 0.001).tolist(), bootstrap=0)
    assert fit.status == "fitted"
    assert fit.lambda_ == pytest.approx(100.0, rel=1e-6)
    assert fit.sigma == pytest.approx(0.05, rel=1e-5)
    assert fit.kappa == pytest.approx(0.001, rel=1e-5)
    assert fit.intervals == {}
    assert fit.predict(10) == pytest.approx(float(usl(np.array([10.0]), 100.0, 0.05, 0.001)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="finite positive"):
        fit.predict(-1.0)


def test_amdahl_case_kappa_near_zero() -> None:
    fit = fit_usl(N_GRID.tolist(), noisy(N_GRID, 50.0, 0.1, 0.0, 0.01, 3).tolist())
    assert fit.status == "fitted", fit.reason
    assert fit.sigma == pytest.approx(0.1, rel=0.1)
    assert fit.kappa is not None and fit.kappa < 2e-4
    assert fit.intervals["kappa"][0] == 0.0  # the true 0 lies inside (on the bound)
    if fit.peak_n is not None:
        assert fit.peak_n > 64 and "extrapolated" in fit.reason


def test_kappa_without_points_past_the_knee_is_labelled_extrapolated() -> None:
    n = np.repeat(np.array([1, 2, 4, 6, 8, 12, 16], dtype=np.float64), 3)
    fit = fit_usl(n.tolist(), noisy(n, 100.0, 0.05, 0.001, 0.01, 4).tolist())
    assert fit.status == "fitted"
    assert fit.peak_n is not None and fit.peak_n > 16
    assert "kappa is extrapolated" in fit.reason and "N = 16" in fit.reason
    lo, hi = fit.intervals["kappa"]
    assert lo <= 0.001 <= hi


def test_too_few_distinct_n_refused_even_with_repeats() -> None:
    n = [1, 1, 2, 2, 4, 4, 8, 8, 16, 16]
    fit = fit_usl(n, [1.0, 1.1, 1.9, 2.0, 3.5, 3.6, 5.0, 5.2, 6.0, 6.1])
    assert fit.status == "not_applicable"
    assert "5 distinct N (need 6)" in fit.reason
    assert fit.lambda_ is None and fit.intervals == {} and fit.peak_n is None
    with pytest.raises(ValueError, match="not_applicable"):
        fit.predict(2)


def test_narrow_span_refused() -> None:
    fit = fit_usl([2, 3, 4, 5, 6, 8, 10], [2.0, 2.9, 3.7, 4.4, 5.0, 6.0, 6.8])
    assert fit.status == "not_applicable" and "factor of 5" in fit.reason


def test_constant_and_non_positive_x_refused() -> None:
    n = [1, 2, 4, 8, 16, 32]
    assert "constant" in fit_usl(n, [5.0] * 6).reason
    zero = fit_usl(n, [1.0, 2.0, 0.0, 4.0, 5.0, 6.0])
    assert zero.status == "not_applicable" and "x[2]" in zero.reason
    assert "n[0]" in fit_usl([0, 2, 4, 8, 16, 32], [1.0] * 6).reason


@pytest.mark.parametrize(
    "curve",
    [
        pytest.param(lambda n: np.where(n < 24, 100.0, 150.0), id="step"),
        pytest.param(lambda n: 1 + 0.1 * n + 0.01 * n**2, id="quadratic-latency-as-throughput"),
        pytest.param(lambda n: ((1 - 0.05) + (0.05 - 0.001) * n + 0.001 * n**2) / 100, id="usl-latency"),
    ],
)
def test_structured_residuals_refused(curve: object) -> None:
    n = np.arange(1, 65, dtype=np.float64)
    rng = np.random.default_rng(5)
    x = curve(n) * (1 + 0.005 * rng.standard_normal(n.size))  # type: ignore[operator]
    fit = fit_usl(n.tolist(), x.tolist())
    assert fit.status == "not_applicable"
    assert "residuals show structure" in fit.reason and f"< {STRUCTURE_ALPHA}" in fit.reason


def test_deterministic_for_a_seed() -> None:
    x = noisy(N_GRID, 100.0, 0.05, 0.001, 0.02, 6).tolist()
    a = fit_usl(N_GRID.tolist(), x, seed=11, bootstrap=50)
    b = fit_usl(N_GRID.tolist(), x, seed=11, bootstrap=50)
    c = fit_usl(N_GRID.tolist(), x, seed=12, bootstrap=50)
    assert a == b
    assert a.lambda_ == c.lambda_ and a.intervals != c.intervals


def test_input_errors_name_the_problem() -> None:
    good = [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match=r"x\[3\] is not finite"):
        fit_usl(good, [1.0, 2.0, 3.0, math.nan, 5.0, 6.0])
    with pytest.raises(ValueError, match=r"n\[1\] is not finite"):
        fit_usl([1, math.inf, 4, 8, 16, 32], [1.0] * 6)
    with pytest.raises(ValueError, match="differ in length: 6 != 5"):
        fit_usl(good, [1.0] * 5)
    with pytest.raises(ValueError, match="min_distinct"):
        fit_usl(good, [1.0] * 6, min_distinct=2)
    with pytest.raises(ValueError, match="min_span"):
        fit_usl(good, [1.0] * 6, min_span=1.0)
    with pytest.raises(ValueError, match="confidence"):
        fit_usl(good, [1.0] * 6, confidence=0.0)
    with pytest.raises(ValueError, match="bootstrap"):
        fit_linear(good, [1.0] * 6, bootstrap=-1)


def test_token_axis_caveat_and_json() -> None:
    n = np.array([16, 32, 64, 128, 256, 512, 1024, 2048], dtype=np.float64)
    fit = fit_usl(
        n.tolist(), noisy(n, 900.0, 0.0, 2e-7, 0.005, 8).tolist(), axis="prompt_tokens", bootstrap=20
    )
    assert fit.caveat is not None and "quadratic attention term" in fit.caveat
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert d["model"] == "usl" and d["axis"] == "prompt_tokens" and d["caveat"] == fit.caveat
    if fit.status == "fitted":
        assert d["intervals"]["kappa"] == list(fit.intervals["kappa"])
    refused = fit_usl([1, 2], [1.0, 2.0], axis="batch_size")
    assert refused.caveat is None
    assert json.loads(json.dumps(refused.to_dict(), allow_nan=False))["lambda"] is None


def test_linear_fit_for_bytes() -> None:
    n = np.repeat(np.array([1, 2, 4, 8, 16], dtype=np.float64), 2)
    rng = np.random.default_rng(9)
    y = 4096.0 * n + 512.0 + rng.normal(0, 20.0, n.size)
    fit = fit_linear(n.tolist(), y.tolist(), axis="batch_size")
    assert fit.status == "fitted"
    assert fit.slope == pytest.approx(4096.0, rel=0.01)
    lo, hi = fit.intervals["slope"]
    assert lo <= 4096.0 <= hi
    assert fit.r2 is not None and fit.r2 > 0.999
    assert sum(fit.residuals) == pytest.approx(0.0, abs=1e-6)
    d = json.loads(json.dumps(fit.to_dict(), allow_nan=False))
    assert d["model"] == "linear" and d["slope"] == fit.slope
    assert fit_linear(n.tolist(), y.tolist(), seed=1) == fit_linear(n.tolist(), y.tolist(), seed=1)


def test_linear_fit_constant_counts_and_refusal() -> None:
    fit = fit_linear([1, 2, 4, 8], [3.0, 3.0, 3.0, 3.0], axis="sync_count")
    assert fit.status == "fitted" and fit.slope == 0.0 and fit.intercept == 3.0 and fit.r2 is None
    short = fit_linear([1, 1, 2, 2], [1.0, 1.0, 2.0, 2.0])
    assert short.status == "not_applicable" and "2 distinct n (need 3)" in short.reason
    assert short.slope is None


def test_super_linear_data_is_flagged_or_refused() -> None:
    short = np.array([4, 8, 16, 32, 64, 128, 256], dtype=np.float64)
    few = fit_usl(short.tolist(), (short**1.2).tolist())
    # Seven points cannot show structure through the runs test; the active bound is said instead.
    assert few.status == "fitted" and few.sigma == 0.0
    assert "sigma pinned at its lower bound 0" in few.reason and "super-linear" in few.reason
    dense = np.arange(1, 65, dtype=np.float64)
    many = fit_usl(dense.tolist(), (dense**1.2).tolist())
    assert many.status == "not_applicable" and "residuals show structure" in many.reason
