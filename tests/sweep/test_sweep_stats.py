"""summarize(): quantiles as numpy's linear method, bootstrap CI of the median, None handling, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vauban_trace.sweep._stats import _runs_lower_tail_p, summarize


def test_known_sample_matches_numpy_linear_percentiles() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    s = summarize(values)
    q25, q50, q75 = np.percentile(values, [25, 50, 75], method="linear")
    assert s.n == 11
    assert s.p25 == pytest.approx(q25) and s.median == pytest.approx(q50) and s.p75 == pytest.approx(q75)
    assert s.median == 4.0
    assert s.minimum == 1.0 and s.maximum == 9.0
    assert s.mean == pytest.approx(sum(values) / len(values))
    assert s.ci_low is not None and s.ci_high is not None
    assert s.ci_low <= s.median <= s.ci_high
    assert s.confidence == 0.95


def test_ci_narrows_with_more_samples_and_covers_the_true_median() -> None:
    rng = np.random.default_rng(7)
    small = summarize(list(rng.normal(10.0, 1.0, 10)))
    large = summarize(list(rng.normal(10.0, 1.0, 400)))
    assert small.ci_low is not None and small.ci_high is not None
    assert large.ci_low is not None and large.ci_high is not None
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low
    # Coverage: over many samples the 95 % interval holds the true median about 95 % of the time.
    hits = 0
    for seed in range(200):
        s = summarize(list(rng.normal(10.0, 1.0, 40)), resamples=400, seed=seed)
        assert s.ci_low is not None and s.ci_high is not None
        hits += s.ci_low <= 10.0 <= s.ci_high
    assert 0.88 <= hits / 200 <= 0.99


def test_none_is_skipped_and_small_n_has_no_ci() -> None:
    s = summarize([None, 2.0, None, 4.0])
    assert s.n == 2 and s.median == 3.0
    assert s.ci_low is None and s.ci_high is None
    assert summarize([5.0]).median == 5.0


def test_empty_gives_all_none() -> None:
    s = summarize([])
    assert s.n == 0
    assert all(v is None for k, v in s.to_dict().items() if k not in ("n", "confidence"))
    assert summarize([None, None]).n == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_refused_naming_the_index(bad: float) -> None:
    with pytest.raises(ValueError, match=r"values\[2\] is not finite"):
        summarize([1.0, 2.0, bad, 3.0])


def test_non_numbers_and_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"values\[1\] is not a real number"):
        summarize([1.0, "2"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0, 3.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        summarize([1.0, 2.0, 3.0], resamples=0)


def test_deterministic_for_a_seed_and_json_ready() -> None:
    values = [1.5, 2.5, 2.0, 8.0, 3.0, 2.2]
    a, b, c = summarize(values, seed=3), summarize(values, seed=3), summarize(values, seed=4)
    assert a == b
    assert a.median == c.median
    text = json.dumps(a.to_dict(), allow_nan=False)
    assert json.loads(text)["median"] == a.median
    json.dumps(summarize([]).to_dict(), allow_nan=False)


def test_runs_test_extremes() -> None:
    # Two blocks of signs: the fewest runs possible, p = 2 / C(10, 5).
    assert _runs_lower_tail_p([True] * 5 + [False] * 5) == pytest.approx(2 / 252)
    # Perfect alternation: the most runs, p = 1.
    assert _runs_lower_tail_p([True, False] * 5) == pytest.approx(1.0)
    assert _runs_lower_tail_p([True] * 4) == 1.0
