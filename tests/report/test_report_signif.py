"""The paired tests and the multiple-comparison adjustments against independent computations: a brute-force
enumeration written here, scipy where it is installed, and the textbook definitions of Holm and BH."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vauban_trace._exceptions import ReportError
from vauban_trace.report import benjamini_hochberg, holm, paired_test, signflip_pvalues
from vauban_trace.report._signif import adjust, scores, too_few_pairs


def _brute(d: list[float], test: str) -> float:
    """Two-sided sign-flip p-value by enumeration, with mid-ranks computed the slow way."""
    if test == "signed_rank":
        nz = [x for x in d if x != 0]
        mags = sorted(abs(x) for x in nz)
        rank = {a: (mags.index(a) + 1 + len(mags) - mags[::-1].index(a)) / 2 for a in mags}
        d = [np.sign(x) * rank[abs(x)] for x in nz]
    if not d:
        return 1.0
    observed = abs(sum(d))
    hits = sum(1 for signs in itertools.product((1, -1), repeat=len(d))
               if abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-9)
    return float(hits / 2 ** len(d))


@pytest.mark.parametrize("d", [
    [0.3, 1.2, -0.4, 0.8, 2.0, 0.1],
    [1.0, 1.0, -1.0, 2.0, 0.0, 3.0, 1.0],          # ties and a zero
    [0.0, 0.0, 0.0, 0.0],                            # no difference at all: p = 1
    [5.0, 4.0, 3.0, 2.0, 1.0, 6.0, 7.0, 8.0],        # all one sign: the smallest p, 2 / 2^n
    [-2.5, 0.5, 0.5, -0.5, 1.5, 3.0, -1.0, 2.0, 0.25],
])
@pytest.mark.parametrize("test", ["sign_flip", "signed_rank"])
def test_exact_p_equals_brute_force_enumeration(d: list[float], test: str) -> None:
    t = paired_test(d, test)
    assert t.exact and t.permutations is None and t.mc_se is None and t.n == len(d)
    assert t.p == pytest.approx(_brute(d, test), abs=1e-12)
    assert t.n_nonzero == sum(1 for x in d if x != 0) and t.min_p == 2.0 ** (1 - len(d))
    if all(x > 0 for x in d):
        assert t.p == t.min_p
    if not any(d):
        assert t.p == 1.0


def test_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in (6, 9, 13):
        d = rng.normal(0.4, 1.0, n)
        wil = stats.wilcoxon(d, method="exact")
        assert paired_test(d.tolist(), "signed_rank").p == pytest.approx(wil.pvalue, rel=1e-9)
        perm = stats.permutation_test((d,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                      n_resamples=np.inf, alternative="two-sided")
        assert paired_test(d.tolist(), "sign_flip").p == pytest.approx(perm.pvalue, rel=1e-9)


def test_signed_ranks_short_and_long_rows_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(8)
    for n in (40, 300):  # pairwise comparisons up to 64, sorting above
        d = np.round(rng.normal(0.1, 1.0, n), 1)  # ties and zeros
        nz = d != 0
        expected = np.zeros(n)
        expected[nz] = np.sign(d[nz]) * stats.rankdata(np.abs(d[nz]))
        assert np.allclose(scores(d[None, :], "signed_rank")[0], expected)


def test_monte_carlo_above_the_exact_limit() -> None:
    rng = np.random.default_rng(11)
    d = rng.normal(0.3, 1.0, (5, 18))
    exact, is_exact = signflip_pvalues(d, exact_max_n=18)
    mc, is_mc = signflip_pvalues(d, permutations=20000, seed=4)
    assert is_exact and not is_mc
    se = np.sqrt(exact * (1 - exact) / 20000)
    assert np.all(np.abs(mc - exact) <= 4 * se + 1 / 20001)
    assert np.all(mc >= 1 / 20001)  # (1 + hits) / (1 + draws): never 0
    t = paired_test(d[0].tolist(), permutations=5000, seed=9)
    assert not t.exact and t.permutations == 5000 and t.seed == 9
    assert t.mc_se == pytest.approx(np.sqrt(t.p * (1 - t.p) / 5000))
    assert paired_test(d[0].tolist(), permutations=5000, seed=9) == t  # seeded
    assert t.to_dict()["method"].startswith("two-sided sign-flip")


def test_holm_and_bh_match_their_definitions() -> None:
    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 30):
        p = rng.uniform(0, 0.2, m)
        p[rng.integers(0, m)] = p[0]  # a tie
        order = np.argsort(p, kind="stable")
        ps = p[order]
        holm_ref = np.minimum(1, np.maximum.accumulate([(m - i) * ps[i] for i in range(m)]))
        bh_ref = np.minimum(1, [min(m * ps[j] / (j + 1) for j in range(i, m)) for i in range(m)])
        h, b = holm(p), benjamini_hochberg(p)
        assert np.allclose(h[order], holm_ref) and np.allclose(b[order], bh_ref)
        assert np.all(h >= p) and np.all(b >= p) and np.all(b <= h + 1e-15)
        assert np.allclose(adjust(p, "holm"), h) and np.allclose(adjust(p, "bh"), b)
    two = rng.uniform(size=(4, 6))
    assert np.allclose(holm(two), np.stack([holm(r) for r in two]))
    assert np.allclose(benjamini_hochberg(two), np.stack([benjamini_hochberg(r) for r in two]))
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert benjamini_hochberg([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.04, 0.04])
    assert holm([]).size == 0


def test_too_few_pairs_and_bad_input() -> None:
    assert too_few_pairs(1, 0.05) == "1 pair(s) measured: too few for a test"
    assert "2^(1-n) = 0.0625 > alpha 0.05" in str(too_few_pairs(5, 0.05))
    assert too_few_pairs(6, 0.05) is None and too_few_pairs(4, 0.2) is None
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ReportError, match="finite"):
            paired_test(bad)
    with pytest.raises(ReportError, match="test must be one of"):
        paired_test([1.0, 2.0], "t_test")
    with pytest.raises(ReportError, match="permutations"):
        paired_test([1.0, 2.0], permutations=0)
    with pytest.raises(ReportError, match="p-values"):
        holm([0.5, 1.5])
    with pytest.raises(ReportError, match="correction"):
        adjust([0.5], "bonferroni")
