"""The least-squares solver behind :func:`~vauban_trace.sweep.fit_usl` (private; rules in ``_usl``).

- ``_usl(n, p)``: the USL curve ``lambda N / (1 + sigma (N - 1) + kappa N (N - 1))``; ``_jacobian``
  its analytic derivatives in ``(lambda, sigma, kappa)``.
- ``_lm(n, x, p0, sw)``: projected Levenberg-Marquardt within the bounds ``_LOWER`` / ``_UPPER``
  (``lambda > 0``, ``0 <= sigma, kappa <= 1``), Marquardt diagonal scaling, a parameter at a
  bound whose gradient points outward frozen for that step; ``sw`` (optional) are the square
  roots of per-point weights, so it minimises ``sum w_i (x_i - X(N_i))^2``. Converged when the
  relative change of the error is below 1e-10 or no step lowers it; ``None`` after ``_MAX_ITER``.
- ``_starts``: the linearised estimate plus ``(lambda0, 0, 0)`` and ``(lambda0, 0.5, 0)``;
  ``_best_fit`` keeps the converged start with the smallest error.
"""

from __future__ import annotations

import math

import numpy as np

from ._stats import FloatArray

_MAX_ITER = 500
_LAMBDA_FLOOR = 1e-300


def _usl(n: FloatArray, p: FloatArray) -> FloatArray:
    lam, sig, kap = p
    out: FloatArray = lam * n / (1.0 + sig * (n - 1.0) + kap * n * (n - 1.0))
    return out


def _jacobian(n: FloatArray, p: FloatArray) -> FloatArray:
    lam, sig, kap = p
    d = 1.0 + sig * (n - 1.0) + kap * n * (n - 1.0)
    f = n / d
    jac: FloatArray = np.column_stack((f, -lam * f * (n - 1.0) / d, -lam * f * n * (n - 1.0) / d))
    return jac


_LOWER = np.array([_LAMBDA_FLOOR, 0.0, 0.0])
_UPPER = np.array([np.inf, 1.0, 1.0])


def _lm(n: FloatArray, x: FloatArray, p0: FloatArray, sw: FloatArray | None = None) -> tuple[FloatArray, float] | None:
    """Projected Levenberg-Marquardt; ``(params, sse)`` or ``None`` when it does not converge.

    ``sw``: square roots of the point weights (residuals and Jacobian rows scaled by them).
    """
    p = np.clip(p0, _LOWER, _UPPER)
    w = np.ones_like(x) if sw is None else sw
    r = w * (x - _usl(n, p))
    sse = float(r @ r)
    mu = 1e-3
    for _ in range(_MAX_ITER):
        jac = _jacobian(n, p) * w[:, None]
        g = jac.T @ r  # descent direction for the parameters (r = x - f)
        at_low = (p <= _LOWER) & (g < 0)
        at_high = (p >= _UPPER) & (g > 0)
        free = ~(at_low | at_high)
        if not free.any():
            return p, sse
        jf = jac[:, free]
        a = jf.T @ jf
        gf = g[free]
        diag = np.maximum(np.diag(a), 1e-300)
        improved = False
        while mu < 1e16:
            try:
                step = np.linalg.solve(a + mu * np.diag(diag), gf)
            except np.linalg.LinAlgError:
                mu *= 10.0
                continue
            trial = p.copy()
            trial[free] += step
            trial = np.clip(trial, _LOWER, _UPPER)
            rt = w * (x - _usl(n, trial))
            sse_t = float(rt @ rt)
            if math.isfinite(sse_t) and sse_t <= sse:
                done = sse - sse_t <= 1e-10 * max(sse, 1e-300)
                p, r, sse = trial, rt, sse_t
                mu = max(mu / 10.0, 1e-12)
                improved = True
                if done:
                    return p, sse
                break
            mu *= 10.0
        if not improved:
            return p, sse  # no step lowers the error: a (bounded) minimum to working precision
    return None


def _starts(n: FloatArray, x: FloatArray) -> list[FloatArray]:
    nmin = float(n.min())
    lam0 = float(x[n == nmin].mean()) / nmin
    starts = [np.array([lam0, 0.0, 0.0]), np.array([lam0, 0.5, 0.0])]
    y = n * lam0 / x - 1.0
    design = np.column_stack((n - 1.0, n * (n - 1.0)))
    if np.linalg.matrix_rank(design) == 2:
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        starts.insert(0, np.array([lam0, float(coef[0]), float(coef[1])]))
    return starts


def _best_fit(
    n: FloatArray, x: FloatArray, starts: list[FloatArray], sw: FloatArray | None = None
) -> tuple[FloatArray, float] | None:
    best: tuple[FloatArray, float] | None = None
    for s in starts:
        res = _lm(n, x, s, sw)
        if res is not None and (best is None or res[1] < best[1]):
            best = res
    return best
