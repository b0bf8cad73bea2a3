"""Continuation scores in the MLX executor (stage ``score``, ``metric`` artifacts) against torch's.

Both executors load the same tiny offline model directory (random-init weights written by
transformers, read by mlx-lm; float32 on the CPU), score the same continuations after the same
prompts, and both traces are read back through the one rebuild path. Parity: identical trace
shape (stages, the ``score`` span's counters and metadata keys, the ``metric`` artifact's
metadata and summary), identical continuation token ids, per-token logprobs within
``ATOL_LOGPROB`` (measured max |diff| about 1e-6, see docs/mlx-executor.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_helpers import blob, child_stages, executors, rebuilt

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Trace, TraceRequest, validate_trace
from vauban_trace.executors.mlx import MlxExecutor
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import SENTENCES
from vauban_trace.instrument._probes import flush_deferred

ATOL_LOGPROB = 1e-4  # per-token logprobs, fp32 CPU (measured max |diff| ~1e-6)
PROMPTS = ["Paris is the capital", "The quick brown fox jumps over", "Hello"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-score-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    return executors("llama")


def score_shape(trace: Trace) -> tuple[Any, ...]:
    """What must agree: the score span (name, batch size, token count, metadata keys) and its metric."""
    (span,) = trace.spans_for_stage("score")
    prof = span.profile
    assert prof is not None
    (metric,) = trace.artifacts_of_kind("metric")
    assert metric.producer_span_id == span.id
    return (span.name, prof.batch_size, prof.token_count, prof.provenance_of("token_count"),
            sorted(k for k in prof.metadata if not k.startswith("usl.")), sorted(span.metadata), metric.shape, metric.dtype,
            metric.media_type, dict(metric.metadata), sorted(metric.summary))


def compare(session: Any, m: Trace, t: Trace) -> float:
    """Assert the two traces' scores agree; return the largest per-token logprob difference."""
    for trace in (m, t):
        validate_trace(trace)
        assert trace.complete, trace.problems
    assert child_stages(m) == child_stages(t)
    assert score_shape(m) == score_shape(t)
    mv = blob(session, m.artifacts_of_kind("metric")[0].digest)
    tv = blob(session, t.artifacts_of_kind("metric")[0].digest)
    assert sorted(mv) == sorted(tv) and mv["metric"] == tv["metric"] == "continuation_logprob"
    assert mv["token_ids"] == tv["token_ids"]
    worst = 0.0
    for a, b in zip(mv["token_logprobs"], tv["token_logprobs"], strict=True):
        assert len(a) == len(b)
        worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))))
    assert worst < ATOL_LOGPROB
    np.testing.assert_allclose(mv["sum_logprob"], tv["sum_logprob"], atol=ATOL_LOGPROB * 10)
    return worst


def test_single_prompt_scores_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    for prompt in SENTENCES[:5]:
        req = tex.make_request(prompt, layers=(1,), logprobs=True, artifacts=["metric"])
        mr = mex.run(req, max_new_tokens=3, ignore_eos=True, score_continuation=" the lazy dog")
        tr = tex.run(req, max_new_tokens=3, ignore_eos=True, score_continuation=" the lazy dog")
        m, t = rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id)
        compare(session, m, t)
        assert child_stages(m) == ["tokenize", "batch", "prefill", "observe", "decode", "score", "emit"]
        assert m.missing == ()
        assert [s.token_ids for s in mr.scores] == [s.token_ids for s in tr.scores]
        assert mr.scores[0].sum_logprob == pytest.approx(tr.scores[0].sum_logprob, abs=1e-3)
        assert mr.token_ids == tr.token_ids


def test_score_is_the_models_log_likelihood(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Against a direct, unpadded mlx-lm forward pass of prompt + continuation, row by row."""
    mex, _ = pair
    result = mex.run(TraceRequest(input_text="x", requested_artifacts=("metric",)), prompts=PROMPTS,
                     score_continuation=" jumps high")
    tok = mex.tokenizer
    cont = tok(" jumps high", add_special_tokens=False)["input_ids"]
    for prompt, score in zip(PROMPTS, result.scores, strict=True):
        ids = tok(prompt)["input_ids"]
        logits = mex.model(mx.array([ids + cont])).astype(mx.float32)
        lp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
        expected = [float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(cont)]
        assert list(score.token_ids) == cont
        np.testing.assert_allclose(score.token_logprobs, expected, atol=1e-5)
        assert score.sum_logprob == pytest.approx(sum(expected), abs=1e-4)
    trace = rebuilt(session, result.trace_id)
    (span,) = trace.spans_for_stage("score")
    assert span.profile is not None and span.profile.sync_points == 1  # one mx.eval of the gathered values


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_batched_scores_match_torch(family: str, session: Any) -> None:
    """Several prompts, one continuation each (different lengths): left-padded, one forward pass."""
    mex, tex = executors(family)
    req = tex.make_request(PROMPTS, logprobs=True, artifacts=["metric"])
    conts = [" of France", " the lazy dog", " world"]
    m = rebuilt(session, mex.run(req, score_continuation=conts).trace_id)
    t = rebuilt(session, tex.run(req, score_continuation=conts).trace_id)
    compare(session, m, t)
    assert child_stages(m) == ["tokenize", "batch", "prefill", "score"]
    assert m.artifacts_of_kind("metric")[0].metadata["continuations"] == 3
    # one continuation for every prompt
    m1 = rebuilt(session, mex.run(req, score_continuation=" is").trace_id)
    t1 = rebuilt(session, tex.run(req, score_continuation=" is").trace_id)
    compare(session, m1, t1)


def test_interventions_apply_to_the_score_pass(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Steering on all positions changes the scores the same way on both; positions=prompt does not."""
    mex, tex = pair
    plain_req = tex.make_request(PROMPTS[1], artifacts=["metric"])
    steer = tex.make_request(PROMPTS[1], artifacts=["metric"], interventions=["steer:layer=1,vector=random:5,alpha=4"])
    prompt_only = tex.make_request(PROMPTS[1], artifacts=["metric"],
                                   interventions=["steer:layer=1,vector=random:5,alpha=4,positions=prompt"])
    values = {}
    for name, req in (("plain", plain_req), ("steer", steer), ("prompt", prompt_only)):
        m = rebuilt(session, mex.run(req, score_continuation=" the lazy dog").trace_id)
        t = rebuilt(session, tex.run(req, score_continuation=" the lazy dog").trace_id)
        compare(session, m, t)
        values[name] = blob(session, m.artifacts_of_kind("metric")[0].digest)["sum_logprob"][0]
    assert abs(values["steer"] - values["plain"]) > 1e-3
    assert values["prompt"] == pytest.approx(values["plain"], abs=1e-6)


def test_bad_score_input_raises_before_the_root_span(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = tex.make_request(PROMPTS, artifacts=["metric"])
    flush_deferred()
    session.force_flush()
    before = session.store.trace_count()
    with pytest.raises(ExecutorError, match=r"one continuation or one per prompt \(3\), got 2"):
        mex.run(req, score_continuation=["a", "b"])
    for bad in ("", [], ["a", 3]):
        with pytest.raises(ExecutorError, match="score_continuation must be a non-empty string"):
            mex.run(req, score_continuation=bad)  # type: ignore[arg-type]
    lazy = MlxExecutor.from_pretrained(mex.path)
    with pytest.raises(ExecutorError, match="one continuation or one per prompt"):
        lazy.run(req, score_continuation=["a", "b"])
    assert not lazy.loaded
    flush_deferred()
    session.force_flush()
    assert session.store.trace_count() == before  # no root span was opened
