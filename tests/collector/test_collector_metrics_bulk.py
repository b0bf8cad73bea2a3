"""Stage histograms observed in bulk equal one ``observe`` per value (buckets and count exactly,
sum up to float rounding), on both roads of ``_observe_many`` (a Python loop for a few values,
numpy from ``_VECTOR_MIN`` on)."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from vauban_trace.collector._metrics import _BYTES_BUCKETS, _DURATION_BUCKETS, _VECTOR_MIN, _observe_many


def _state(h: Histogram) -> tuple[list[float], float]:
    samples = {(s.name, s.labels.get("le")): s.value for m in h.collect() for s in m.samples}
    buckets = [v for (name, _le), v in samples.items() if name.endswith("_bucket")]
    return buckets, next(v for (name, _), v in samples.items() if name.endswith("_sum"))


@pytest.mark.parametrize("n", [1, _VECTOR_MIN - 1, _VECTOR_MIN, 500])
@pytest.mark.parametrize("buckets", [_DURATION_BUCKETS, _BYTES_BUCKETS])
def test_bulk_equals_one_observe_per_value(n: int, buckets: tuple[float, ...]) -> None:
    rng = random.Random(n)
    edge = [*buckets[:4], 0.0, math.inf, 2**53 + 1, 2**70, 7]  # on a bound, zero, past every bound, ints
    amounts: list[float] = [rng.choice(edge) if rng.random() < 0.3 else rng.lognormvariate(-3, 4) for _ in range(n)]
    one, bulk = (Histogram("h", "h", buckets=buckets, registry=CollectorRegistry()) for _ in range(2))
    for a in amounts:
        one.observe(a)
    _observe_many(bulk, amounts)
    (b1, s1), (b2, s2) = _state(one), _state(bulk)
    assert b1 == b2
    assert s1 == s2 or math.isclose(s1, s2, rel_tol=1e-12)


def test_nan_counts_in_no_bucket_on_both_roads() -> None:
    for n in (3, _VECTOR_MIN + 3):
        amounts = [0.5] * (n - 1) + [math.nan]
        h = Histogram("h", "h", buckets=_DURATION_BUCKETS, registry=CollectorRegistry())
        _observe_many(h, amounts)
        buckets, total = _state(h)
        assert buckets[-1] == n - 1 and math.isnan(total)  # +Inf bucket: cumulative count
