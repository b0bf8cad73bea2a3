"""The equivalence test (TOST) of the report: exact p-values against brute-force enumeration, the
Monte Carlo path, calibration at the margin (true mean shift exactly ±delta: rejection rate <= alpha)
and power inside it (seeded, vectorised numpy), and ``equivalent`` claims through aggregate_report and
claims files (accepted, rejected, too few pairs, Holm over the report's equivalence claims).
Run with ``-s`` to print the measured rates (the table in docs/report.md comes from this run)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from vauban_trace._exceptions import ReportError
from vauban_trace.contract import StageProfile, Trace, TraceArtifact, TraceRequest, TraceSpan
from vauban_trace.report import Claim, ClaimTest, aggregate_report, holm, load_claims, tost, tost_pvalues

ALPHA = 0.05
Array = npt.NDArray[np.float64]


def _brute(d: list[float], margin: float) -> tuple[float, float]:
    up = [x - margin for x in d]
    lo = [x + margin for x in d]
    t_up, t_lo = sum(up), sum(lo)
    hits_up = hits_lo = 0
    signs = list(itertools.product((-1.0, 1.0), repeat=len(d)))
    for s in signs:
        hits_up += sum(a * b for a, b in zip(s, up, strict=True)) <= t_up + 1e-9
        hits_lo += sum(a * b for a, b in zip(s, lo, strict=True)) >= t_lo - 1e-9
    return hits_up / len(signs), hits_lo / len(signs)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10])
def test_exact_p_matches_brute_force_enumeration(n: int) -> None:
    rng = np.random.default_rng(n)
    for margin in (0.3, 1.0, 2.5):
        d = [float(x) for x in np.round(rng.normal(0.2, 1.0, size=n), 3)]
        t = tost(d, margin)
        p_up, p_lo = _brute(d, margin)
        assert t.exact and t.n == n and t.margin == margin
        assert (t.p_upper, t.p_lower) == pytest.approx((p_up, p_lo), abs=1e-12)
        assert t.p == max(t.p_upper, t.p_lower) and t.min_p == 2.0 ** -n
    # every delta well inside the margin: both one-sided tests reach their floor 2^-n
    assert tost([0.01, -0.02, 0.0, 0.03, -0.01], 0.5).p == 2.0 ** -5
    # the mean outside the margin: the upper test cannot reject
    assert tost([0.9, 1.1, 1.0, 0.95, 1.05], 0.5).p_upper == 1.0


def test_monte_carlo_path_tracks_the_exact_p_and_is_seeded() -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(0.15, 1.0, size=18)
    exact_up, exact_lo, exact = tost_pvalues(d, 0.6, exact_max_n=18)
    assert exact
    mc_up, mc_lo, mc = tost_pvalues(d, 0.6, permutations=20000, seed=3, exact_max_n=16)
    assert not mc
    for e, m in ((exact_up[0], mc_up[0]), (exact_lo[0], mc_lo[0])):
        assert abs(e - m) <= 4 * np.sqrt(max(e * (1 - e), 1e-4) / 20000) + 1e-4
    again = tost(list(d), 0.6, permutations=2000, seed=5)
    assert again == tost(list(d), 0.6, permutations=2000, seed=5) and not again.exact
    assert again.permutations == 2000 and again.seed == 5 and again.min_p == 1 / 2001


def test_bad_input_is_named() -> None:
    with pytest.raises(ReportError, match="margin must be a finite number > 0"):
        tost([0.1, 0.2], 0.0)
    with pytest.raises(ReportError, match="margin must be a finite number > 0"):
        tost_pvalues([0.1, 0.2], float("inf"))
    with pytest.raises(ReportError, match="deltas must be one or more finite numbers"):
        tost([0.1, float("nan")], 1.0)


def _symmetric(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> Array:
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "t3":  # heavy tails, symmetric
        return rng.standard_t(3, size=shape)
    return rng.uniform(-1.7, 1.7, size=shape)  # bounded, symmetric


def _rate(p_up: Array, p_lo: Array) -> float:
    return float((np.maximum(p_up, p_lo) <= ALPHA).mean())


def _exact_rate(d: Array, margin: float) -> float:
    """The TOST rejection rate over the rows of ``d``, in batches (bounded memory)."""
    hits = sum(float(np.sum(np.maximum(*tost_pvalues(d[i:i + 2000], margin)[:2]) <= ALPHA))
               for i in range(0, d.shape[0], 2000))
    return hits / d.shape[0]


@pytest.mark.parametrize("kind", ["normal", "t3", "uniform"])
def test_calibration_at_the_margin_and_power_inside(kind: str) -> None:
    rng = np.random.default_rng({"normal": 11, "t3": 12, "uniform": 13}[kind])
    sets, n, margin = 20000, 12, 0.5
    noise = _symmetric(rng, kind, (sets, n)) * 0.5
    at_upper = _exact_rate(noise + margin, margin)
    at_lower = _exact_rate(noise - margin, margin)
    inside = _exact_rate(noise * 0.5, margin)
    se = np.sqrt(ALPHA * (1 - ALPHA) / sets)
    print(f"\nTOST {kind} n={n} margin={margin}: rate at +margin {at_upper:.4f}, at -margin {at_lower:.4f}, "
          f"power at mean 0 (noise scale 0.25) {inside:.4f}")
    # exact test: the size at the boundary is at most 204/4096 = 0.0498 (n = 12); the slack is the
    # simulation's own binomial error over the seeded sets
    assert at_upper <= ALPHA + 2.5 * se and at_lower <= ALPHA + 2.5 * se
    assert inside >= 0.9


def test_calibration_monte_carlo_path() -> None:
    rng = np.random.default_rng(21)
    sets, n, margin = 600, 24, 0.4
    noise = rng.normal(size=(sets, n))
    p_up, p_lo, exact = tost_pvalues(noise + margin, margin, permutations=999, seed=1)
    assert not exact
    rate = _rate(p_up, p_lo)
    power = _rate(*tost_pvalues(noise * 0.3, margin, permutations=999, seed=1)[:2])
    print(f"\nTOST Monte Carlo n={n} (999 draws): rate at +margin {rate:.4f}, power at mean 0 sd 0.3 {power:.4f}")
    assert rate <= ALPHA + 2.5 * np.sqrt(ALPHA * (1 - ALPHA) / sets)
    assert power >= 0.9


# -- claims -----------------------------------------------------------------------------------------
def _trace(tid: str, text: str, norm1: float, duration: float) -> Trace:
    profile = StageProfile(name="prefill", duration_s=duration, provenance={"duration_s": "measured"})
    spans = (TraceSpan(id="root", name="text_completion m"),
             TraceSpan(id="s1", name="prefill", stage="prefill", parent_id="root", profile=profile),
             TraceSpan(id="s2", name="observe", stage="observe", parent_id="root"))
    arts = (TraceArtifact(id=f"{tid[:6]}-act1", kind="activation", producer_span_id="s2", layer=1,
                          digest="sha256:" + hashlib.sha256(tid.encode()).hexdigest(), summary={"l2_norm": norm1}),)
    req = TraceRequest(input_text=text, requested_artifacts=("activation",), collect_layers=(1,))
    return Trace(id=tid, request=req, spans=spans, artifacts=arts)


NORM_DELTA = [0.9, 1.3, 1.1, 0.7, 1.6, 1.2, 0.8, 1.4]
DURATION_DELTA = [0.02, -0.01, 0.005, -0.03, 0.015, -0.005, 0.01, -0.02]


def _set(n: int = 8) -> list[tuple[Trace, Trace]]:
    return [(_trace(f"{i:032x}", f"prompt {i}", 5.0 + i, 1.0 + i / 10),
             _trace(f"{i + 100:032x}", f"prompt {i}", 5.0 + i + NORM_DELTA[i], 1.0 + i / 10 + DURATION_DELTA[i]))
            for i in range(n)]


def _eq(measure: str, margin: float | None) -> Claim:
    return Claim(f"{measure} within {margin}", "activation_diagnostic", ("activation[1]",),
                 ClaimTest(measure, "equivalent", margin))


def test_equivalent_claims_accepted_rejected_and_holm() -> None:
    claims = [_eq("stage:prefill:duration_s", 0.1), _eq("stage:prefill:duration_s", 0.01),
              _eq("activation[1]:l2_norm", 0.5), _eq("activation[1]:l2_norm", 5.0), _eq("logits:kl_max", 1.0),
              _eq("activation[1]:l2_norm", None)]
    agg = aggregate_report(_set(), claims, seed=4)
    verdicts = [(c.accepted, c.problems) for c in agg.claims]
    eq = agg.tests.equivalence
    assert [e.claim_index for e in eq] == [0, 1, 2, 3, 4]  # the margin-less claim fails its form check
    ran = [e for e in eq if e.tost is not None]
    assert len(ran) == 4 and all(e.m == 4 for e in ran)
    raw = [tost(DURATION_DELTA, 0.1).p, tost(DURATION_DELTA, 0.01).p, tost(NORM_DELTA, 0.5).p, tost(NORM_DELTA, 5.0).p]
    assert [e.tost.p for e in ran if e.tost is not None] == pytest.approx(raw)
    assert [e.p_holm for e in ran] == pytest.approx(list(holm(raw)))
    assert raw[0] == raw[3] == 2.0 ** -8  # every delta inside the margin
    assert verdicts[0] == (True, ()) and verdicts[3] == (True, ())
    assert not verdicts[1][0] and "not shown equivalent within ±0.01 at alpha 0.05: Holm-adjusted TOST p" in verdicts[1][1][0]
    assert not verdicts[2][0] and "stage" not in verdicts[2][1][0] and "m_eq=4" in verdicts[2][1][0]
    assert "'logits:kl_max' names no measure of this report" in verdicts[4][1][0]
    assert verdicts[5][1] == ("test outcome equivalent needs a margin > 0 (equivalent within ±margin)",)
    doc = agg.to_dict()["tests"]["equivalence"]
    assert doc["correction"] == "holm" and doc["m"] == 4 and doc["claims"][0]["equivalent"] is True
    md = agg.render_markdown()
    assert "Equivalence claims: TOST" in md and "| 2 | `activation[1]@observe#0:l2_norm` | ±0.5 | 8 |" in md


def test_too_few_pairs_never_accepts() -> None:
    # 4 pairs: the smallest TOST p is 1/16 > 0.05 even with every delta at 0
    agg = aggregate_report(_set(4), [_eq("stage:prefill:duration_s", 10.0)])
    (chk,) = agg.claims
    assert not chk.accepted
    assert "too few pairs to ever show equivalence" in chk.problems[0] and "2^-n = 0.0625" in chk.problems[0]
    (five,) = aggregate_report(_set(5), [_eq("stage:prefill:duration_s", 10.0)]).claims
    assert five.accepted  # 1/32 <= 0.05


def test_claims_file_round_trip_with_equivalent(tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps([{"statement": "timing unchanged", "strength": "activation_diagnostic",
                                 "cites": ["activation[1]"],
                                 "test": {"measure": "stage:prefill:duration_s", "outcome": "equivalent",
                                          "margin": 0.1}}]))
    (claim,) = load_claims(path)
    assert claim.test == ClaimTest("stage:prefill:duration_s", "equivalent", 0.1)
    (chk,) = aggregate_report(_set(), [claim]).claims
    assert chk.accepted
