"""Calibration of the report's paired tests, measured on simulated pairs (seeded, vectorized numpy).

Under the null (baseline and candidate drawn from one distribution, with a per-prompt effect shared by
the two sides), the per-measure rejection rate at alpha 0.05 must be near or below 5%, and Holm must
keep the family-wise error rate (any false rejection among m correlated measures) at or below alpha;
BH must keep the false discovery rate at or below alpha. Under a clear shift the power must be high.
Run with ``-s`` to print the measured rates (the table in docs/report.md comes from this run)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vauban_trace.report import benjamini_hochberg, holm, signflip_pvalues

ALPHA = 0.05
Array = npt.NDArray[np.float64]


def _pairs(rng: np.random.Generator, kind: str, shape: tuple[int, ...], shift: float = 0.0) -> Array:
    """Per-pair differences candidate - baseline: (..., n). A prompt effect is added to both sides
    (it cancels in the difference, as pairing intends); the sides are i.i.d. given the prompt."""
    prompt = rng.normal(0.0, 3.0, size=shape)
    if kind == "normal":
        b, c = rng.normal(size=shape), rng.normal(size=shape)
    elif kind == "lognormal":  # heavy right tail, like latencies
        b, c = rng.lognormal(0.0, 1.0, size=shape), rng.lognormal(0.0, 1.0, size=shape)
    else:  # small counts: many ties and zero differences
        b, c = rng.poisson(2.0, size=shape).astype(float), rng.poisson(2.0, size=shape).astype(float)
    return (c + prompt + shift) - (b + prompt)


def _correlated(rng: np.random.Generator, sets: int, m: int, n: int, rho: float, shift: Array | float = 0.0) -> Array:
    """(sets, m, n) differences whose m measures share a latent factor (correlation rho)."""
    common = rng.normal(size=(sets, 1, n))
    own = rng.normal(size=(sets, m, n))
    out: Array = np.sqrt(rho) * common + np.sqrt(1 - rho) * own + np.asarray(shift)[..., None]
    return out


def calibration(seed: int = 20261126) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    # per-measure size, exact (n = 8, 256 sign vectors) and Monte Carlo (n = 24, 999 draws)
    for kind in ("normal", "lognormal", "counts"):
        d = _pairs(rng, kind, (20000, 8))
        for test in ("sign_flip", "signed_rank"):
            p, exact = signflip_pvalues(d, test)
            assert exact
            out[f"size {kind} n=8 {test}"] = float(np.mean(p <= ALPHA))
    d = _pairs(rng, "lognormal", (4000, 24))
    p, exact = signflip_pvalues(d, "sign_flip", permutations=999, seed=1)
    assert not exact
    out["size lognormal n=24 sign_flip monte-carlo"] = float(np.mean(p <= ALPHA))
    # family of m = 10 correlated measures, n = 12 pairs (4096 sign vectors)
    sets, m, n = 3000, 10, 12
    d = _correlated(rng, sets, m, n, rho=0.5)
    p = signflip_pvalues(d.reshape(sets * m, n))[0].reshape(sets, m)
    out["family m=10 n=12 unadjusted any rejection"] = float(np.mean((p <= ALPHA).any(axis=1)))
    out["family m=10 n=12 Holm FWER"] = float(np.mean((holm(p) <= ALPHA).any(axis=1)))
    out["family m=10 n=12 BH FWER (all nulls true: FDR = FWER)"] = float(
        np.mean((benjamini_hochberg(p) <= ALPHA).any(axis=1)))
    # half the family shifted by 1.5 SD of a difference: FDR of BH among the rejections
    shift = np.zeros((1, m))
    shift[0, :5] = 1.5  # each difference has SD 1
    d = _correlated(rng, sets, m, n, rho=0.5, shift=shift)
    p = signflip_pvalues(d.reshape(sets * m, n))[0].reshape(sets, m)
    rej = benjamini_hochberg(p) <= ALPHA
    false = rej[:, 5:].sum(axis=1)
    out["family m=10 n=12 half shifted BH FDR"] = float(np.mean(false / np.maximum(rej.sum(axis=1), 1)))
    out["family m=10 n=12 half shifted Holm FWER"] = float(np.mean((holm(p)[:, 5:] <= ALPHA).any(axis=1)))
    out["family m=10 n=12 half shifted Holm power per shifted measure"] = float(np.mean(holm(p)[:, :5] <= ALPHA))
    # power under a clear shift (1.5 SD of the difference), n = 12, one measure
    for kind in ("normal", "lognormal"):
        d = _pairs(rng, kind, (4000, 12))
        d = d + 1.5 * d.std()
        for test in ("sign_flip", "signed_rank"):
            out[f"power {kind} n=12 shift 1.5 sd {test}"] = float(np.mean(signflip_pvalues(d, test)[0] <= ALPHA))
    return out


def test_calibration_null_size_fwer_and_power() -> None:
    rates = calibration()
    for name, rate in rates.items():
        print(f"{name:<66} {rate:.4f}")
    for name, rate in rates.items():
        if name.startswith("size"):
            sets = 4000 if "monte-carlo" in name else 20000
            assert rate <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / sets), name
            if "counts" not in name:  # continuous data: near alpha, not needlessly conservative
                assert rate >= 0.035, name
    assert rates["family m=10 n=12 unadjusted any rejection"] > 0.2  # the problem Holm solves
    se = 3 * np.sqrt(ALPHA * (1 - ALPHA) / 3000)
    assert rates["family m=10 n=12 Holm FWER"] <= ALPHA + se
    assert rates["family m=10 n=12 BH FWER (all nulls true: FDR = FWER)"] <= ALPHA + se
    assert rates["family m=10 n=12 half shifted BH FDR"] <= ALPHA + se
    assert rates["family m=10 n=12 half shifted Holm FWER"] <= ALPHA + se
    assert rates["family m=10 n=12 half shifted Holm power per shifted measure"] > 0.6
    for name, rate in rates.items():
        if name.startswith("power"):
            assert rate > 0.9, name
