"""Stage histograms observed in bulk equal one ``observe`` per value (buckets and count exactly,
sum up to float rounding), on both roads of ``_observe_many`` (a Python loop for a few values,
numpy from ``_VECTOR_MIN`` on); values wait per series until a collection or the pending cap
folds them in."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from collector_helpers import vauban_request
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from vauban_trace.collector import CollectorMetrics
from vauban_trace.collector._metrics import _BYTES_BUCKETS, _DURATION_BUCKETS, _VECTOR_MIN, _observe_many
from vauban_trace.rebuild import TraceDocument, rebuild_documents


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


@pytest.mark.parametrize("n", [1, 500])
def test_packed_doubles_equal_one_observe_per_value(n: int) -> None:
    """The fold hands ``_observe_many`` the values as a bytearray of doubles (group_stage_values)."""
    rng = random.Random(n + 7)
    amounts = [rng.choice([*_BYTES_BUCKETS[:3], 0.0, 2**40]) if rng.random() < 0.3 else rng.lognormvariate(8, 4)
               for _ in range(n)]
    one, bulk = (Histogram("h", "h", buckets=_BYTES_BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for a in amounts:
        one.observe(a)
    _observe_many(bulk, bytearray(struct.pack(f"{n}d", *amounts)))
    (b1, s1), (b2, s2) = _state(one), _state(bulk)
    assert b1 == b2
    assert math.isclose(s1, s2, rel_tol=1e-12)


def test_nan_counts_in_no_bucket_on_both_roads() -> None:
    for n in (3, _VECTOR_MIN + 3):
        amounts = [0.5] * (n - 1) + [math.nan]
        h = Histogram("h", "h", buckets=_DURATION_BUCKETS, registry=CollectorRegistry())
        _observe_many(h, amounts)
        buckets, total = _state(h)
        assert buckets[-1] == n - 1 and math.isnan(total)  # +Inf bucket: cumulative count


def _documents(n_traces: int, salt: int) -> list[TraceDocument]:
    req, _ = vauban_request(n_traces, salt=salt, stages=6, model="m1", sweep=("token_count", 64))
    return [doc for rs in req.resource_spans for doc in _one_per_trace(rs)]


def _one_per_trace(rs: Any) -> list[TraceDocument]:
    by_trace: dict[bytes, list[Any]] = {}
    for span in rs.scope_spans[0].spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    docs = []
    for spans in by_trace.values():
        one = TracesData()
        out = one.resource_spans.add()
        out.resource.CopyFrom(rs.resource)
        out.scope_spans.add().spans.extend(spans)
        docs.extend(rebuild_documents(one.SerializeToString()))
    return docs


def _stage_samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect()
            if m.name.startswith("vauban_stage") for s in m.samples if not s.name.endswith("_created")}


def test_pending_values_are_folded_before_every_collection() -> None:
    """Observed values wait, per series, until a collection (or the pending cap) folds them in: a
    collection always shows everything observed before it, the same as one observe per value."""
    docs = _documents(6, salt=31)
    metrics = CollectorMetrics()
    assert metrics.observe_documents(docs[:4]) == 4 * 6
    assert metrics._pending_n and not list(metrics.stage_duration.collect())[0].samples  # not folded yet
    first = _stage_samples(metrics.registry)  # the registry's collection folds them
    assert metrics._pending_n == 0 and first
    metrics.observe_documents(docs[4:])
    after = _stage_samples(metrics.registry)
    reference = CollectorRegistry()  # the same histograms, one observe per value
    stage_labels = ["stage", "model", "sweep_axis", "sweep_value"]
    durations = Histogram("vauban_stage_duration_seconds", "d", stage_labels, buckets=_DURATION_BUCKETS,
                          registry=reference)
    nbytes = Histogram("vauban_stage_bytes", "b", ["stage", "model", "direction", "sweep_axis", "sweep_value"],
                       buckets=_BYTES_BUCKETS, registry=reference)
    for doc in docs:
        for obs in doc.stages:
            durations.labels(obs.stage, "m1", "token_count", "64").observe(obs.duration_s)
            nbytes.labels(obs.stage, "m1", "in", "token_count", "64").observe(obs.input_bytes)
            nbytes.labels(obs.stage, "m1", "out", "token_count", "64").observe(obs.output_bytes)
    expected = _stage_samples(reference)
    got = {k: v for k, v in after.items() if not k[0].startswith("vauban_stage_sync_points")}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), key


def test_the_pending_cap_folds_without_a_collection() -> None:
    docs = _documents(3, salt=32)
    metrics = CollectorMetrics(pending_values=10)
    metrics.observe_documents(docs)
    assert metrics._pending_n == 0
    count = next(s.value for m in metrics.stage_duration.collect() for s in m.samples
                 if s.name.endswith("_count") and s.labels["stage"] == docs[0].stages[0].stage)
    assert count == sum(1 for d in docs for s in d.stages if s.stage == docs[0].stages[0].stage)


def test_the_stage_histograms_keep_their_place_in_the_exposition() -> None:
    metrics = CollectorMetrics()
    metrics.observe_documents(_documents(1, salt=33))
    names = [m.name for m in metrics.registry.collect()]
    i = names.index("vauban_collector_store_write_seconds")
    assert names[i + 1:i + 4] == ["vauban_stage_duration_seconds", "vauban_stage_bytes", "vauban_stage_sync_points"]
    text = generate_latest(metrics.registry).decode()
    assert text.count("# TYPE vauban_stage_duration_seconds histogram") == 1


def test_root_labels_equal_but_of_another_type_keep_their_own_series() -> None:
    """True == 1 == 1.0 in Python, but their label values differ ("True" vs "1"): the cache of the
    root labels' strings must not hand one the other's series (whichever came first)."""
    from vauban_trace.rebuild import StageObservation

    def doc(tid: str, value: object) -> TraceDocument:
        stages = (StageObservation(f"{tid[:15]}1", "forward", 0.01, None, None, None, None),)
        return TraceDocument(tid, "{}", True, None, "root", 0, 1, 1, stages, ("m", "flag", value), False)

    metrics = CollectorMetrics()
    for i, value in enumerate((True, 1, 1.0, False, 0, "1")):
        metrics.observe_documents([doc(f"{i:032x}", value)])

    def count(value: str) -> float | None:
        return metrics.registry.get_sample_value("vauban_stage_duration_seconds_count", {
            "stage": "forward", "model": "m", "sweep_axis": "flag", "sweep_value": value})

    assert (count("True"), count("1"), count("False"), count("0")) == (1.0, 3.0, 1.0, 1.0)
