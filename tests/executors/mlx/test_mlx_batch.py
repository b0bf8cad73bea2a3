"""Batches of several prompts in the MLX executor, against the torch executor on the same weights.

The prompts have different token counts, so rows are left-padded (torch's convention). Parity:
the same stages and artifact shapes (``[batch, ...]``), the same ``batch`` span metadata, identical
prompt and generated token ids per row, logits and activations within ``ATOL`` at the real
(unpadded) positions, the same per-row stop reasons. Values at padded positions are computed but
meaningless in both frameworks and differ between them; they are not compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core  # noqa: F401  (the mlx extra is part of `make test`: a missing mlx fails, never skips)
import numpy as np
import pytest
from mlx_helpers import blob, child_stages, executors, rebuilt

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Trace, TraceRequest, validate_trace
from vauban_trace.executors.mlx import MlxExecutor
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.instrument._probes import flush_deferred

ATOL = 1e-4  # logits, logprobs, activations at real positions (fp32 CPU; measured max |diff| ~1e-6)
PROMPTS = ["Paris is the capital", "The quick brown fox jumps over", "Hello"]
SAME_LENGTH = ["The quick brown fox jumps over", "The lazy dog jumps over the"]  # no padding


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-batch-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    return executors("llama")


def shape_of(trace: Trace) -> list[tuple[Any, ...]]:
    out = []
    for a in trace.artifacts:
        keys = tuple(sorted(k for k in a.metadata if k != "source_device"))
        out.append((a.kind, trace.span(a.producer_span_id).stage, a.shape, a.dtype, a.layer,
                    a.metadata.get("site"), a.metadata.get("role"), a.metadata.get("positions"), keys))
    return sorted(out, key=repr)


def meta_of(trace: Trace, stage: str) -> dict[str, Any]:
    """The span's metadata and its profile's, less timings and executor-specific probe modes."""
    span = trace.spans_for_stage(stage)[0]
    assert span.profile is not None
    merged = {**span.profile.metadata, **span.metadata}
    return {k: v for k, v in merged.items() if not k.startswith(("usl.", "decode.step_"))}


def keyed(trace: Trace, kind: str) -> dict[tuple[Any, ...], Any]:
    return {(a.layer, a.metadata.get("site"), a.metadata.get("positions"), a.metadata.get("role")): a
            for a in trace.artifacts_of_kind(kind)}


def both(pair: tuple[MlxExecutor, TorchExecutor], session: Any, req: TraceRequest,
         **kw: Any) -> tuple[Trace, Trace, Any, Any]:
    mex, tex = pair
    mr, tr = mex.run(req, **kw), tex.run(req, **kw)
    return rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id), mr, tr


def real_positions_diff(session: Any, m: Trace, t: Trace, kind: str, padding: list[int]) -> float:
    """Largest |diff| over the artifacts of ``kind``, real positions only for [batch, width, ...] arrays."""
    worst = 0.0
    mk, tk = keyed(m, kind), keyed(t, kind)
    assert mk.keys() == tk.keys()
    for key, ma in mk.items():
        a, b = blob(session, ma.digest), blob(session, tk[key].digest)
        assert a.shape == b.shape
        full_width = a.ndim == 3
        for row, pad in enumerate(padding):
            ra, rb = (a[row, pad:], b[row, pad:]) if full_width else (a[row], b[row])
            worst = max(worst, float(np.max(np.abs(ra - rb))))
    return worst


def test_batch_trace_shape_and_values_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = tex.make_request(PROMPTS, layers=(0, 1), logprobs=True)
    m, t, mr, tr = both(pair, session, req, max_new_tokens=6, ignore_eos=True, sites=("residual", "attn", "mlp"))
    for trace in (m, t):
        validate_trace(trace)
        assert trace.complete, trace.problems
        assert trace.missing == ()
    assert child_stages(m) == child_stages(t) == ["tokenize", "batch", "prefill", "observe", "decode", "emit"]
    assert shape_of(m) == shape_of(t)
    lengths = [len(p) for p in tr.prompt_token_ids]
    width = max(lengths)
    assert len(set(lengths)) == 3  # really padded
    assert meta_of(m, "decode")["decode.steps"] == 6
    assert meta_of(m, "batch") == meta_of(t, "batch") == {
        "padding_side": "left", "padded_length": width, "padding_tokens": 3 * width - sum(lengths), "pad_token_id": 0}
    for stage in ("tokenize", "decode"):
        assert meta_of(m, stage) == meta_of(t, stage)
    for stage in ("tokenize", "batch", "prefill", "observe", "decode", "emit"):
        mp, tp = m.spans_for_stage(stage)[0].profile, t.spans_for_stage(stage)[0].profile
        assert mp is not None and tp is not None
        assert (mp.batch_size, mp.token_count) == (tp.batch_size, tp.token_count) and mp.batch_size == 3
    assert mr.prompt_token_ids == tr.prompt_token_ids and mr.token_ids == tr.token_ids
    assert mr.texts == tr.texts and mr.stop_reasons == tr.stop_reasons
    for kind in ("tokens", "text"):
        for key, ma in keyed(m, kind).items():
            assert blob(session, ma.digest) == blob(session, keyed(t, kind)[key].digest)
    padding = [width - n for n in lengths]
    for kind in ("logits", "logprobs", "activation"):
        assert real_positions_diff(session, m, t, kind, padding) < ATOL, kind
    acts = m.artifacts_of_kind("activation")
    assert len(acts) == 6 and all(a.shape == (3, width, 64) for a in acts)


def test_batch_rows_equal_single_prompt_runs(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Padding changes nothing at the real positions: each row is its prompt's own run."""
    mex, _ = pair
    batch = rebuilt(session, mex.run(TraceRequest(input_text="x", requested_artifacts=("logits",), return_logits=True),
                                     prompts=PROMPTS, max_new_tokens=5, ignore_eos=True).trace_id)
    last = blob(session, batch.artifacts_of_kind("logits")[0].digest)
    (gen,) = [a for a in batch.artifacts_of_kind("tokens") if a.metadata["role"] == "completion"]
    rows = blob(session, gen.digest)
    for i, prompt in enumerate(PROMPTS):
        one = mex.run(TraceRequest(input_text=prompt, requested_artifacts=("logits",), return_logits=True),
                      max_new_tokens=5, ignore_eos=True)
        single = rebuilt(session, one.trace_id)
        np.testing.assert_allclose(last[i], blob(session, single.artifacts_of_kind("logits")[0].digest)[0], atol=ATOL)
        assert rows[i] == list(one.token_ids[0])


def test_rows_stop_at_eos_on_their_own(pair: tuple[MlxExecutor, TorchExecutor], session: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mex, tex = pair
    req = tex.make_request(PROMPTS, logprobs=True)
    free = tex.run(req, max_new_tokens=10, ignore_eos=True)
    eos = free.token_ids[0][3]  # row 0 stops at its 4th token (or earlier, if it appears before)
    config = tex.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = eos
    monkeypatch.setattr(mex, "eos_token_ids", lambda: frozenset({eos}))
    try:
        m, t, mr, tr = both(pair, session, req, max_new_tokens=10)
    finally:
        config.eos_token_id = saved
    first = list(free.token_ids[0]).index(eos)
    assert list(mr.token_ids[0]) == list(free.token_ids[0][: first + 1])  # the eos token is kept
    assert mr.token_ids == tr.token_ids and mr.stop_reasons == tr.stop_reasons
    assert mr.stop_reasons[0] == "eos" and mr.finish_reasons == tr.finish_reasons
    assert meta_of(m, "decode") == meta_of(t, "decode")
    assert len({len(g) for g in mr.token_ids}) > 1  # rows of different lengths
    mlp, tlp = keyed(m, "logprobs")[(None, None, "generated", None)], keyed(t, "logprobs")[(None, None, "generated", None)]
    assert mlp.shape == tlp.shape and mlp.metadata == tlp.metadata
    np.testing.assert_allclose(blob(session, mlp.digest), blob(session, tlp.digest), atol=ATOL)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_batch_like_torch(family: str, session: Any) -> None:
    ex = executors(family)
    req = ex[1].make_request(PROMPTS, layers=(1,), logprobs=True)
    m, t, mr, tr = both(ex, session, req, max_new_tokens=5, ignore_eos=True)
    assert shape_of(m) == shape_of(t) and mr.token_ids == tr.token_ids
    width = max(len(p) for p in tr.prompt_token_ids)
    padding = [width - len(p) for p in tr.prompt_token_ids]
    for kind in ("logits", "activation"):
        assert real_positions_diff(session, m, t, kind, padding) < ATOL, kind


def test_batched_interventions_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Same-length rows: every number of intervention_result agrees; padded rows: the logit effects."""
    mex, tex = pair
    specs = ["steer:layer=1,vector=random:5,alpha=4", "ablate:layer=0,direction=random:11,site=mlp"]
    for prompts in (SAME_LENGTH, PROMPTS):
        req = tex.make_request(prompts, layers=(0, 1), logprobs=True, interventions=specs)
        m, t, mr, tr = both(pair, session, req, max_new_tokens=4, ignore_eos=True, sites=("residual", "mlp"))
        assert child_stages(m) == child_stages(t) and shape_of(m) == shape_of(t)
        assert mr.token_ids == tr.token_ids and meta_of(m, "decode") == meta_of(t, "decode")
        width = max(len(p) for p in tr.prompt_token_ids)
        padding = [width - len(p) for p in tr.prompt_token_ids]
        for kind in ("logits", "activation"):
            assert real_positions_diff(session, m, t, kind, padding) < ATOL, kind
        for ma, ta in zip(m.artifacts_of_kind("intervention_result"), t.artifacts_of_kind("intervention_result"),
                          strict=True):
            mv, tv = blob(session, ma.digest), blob(session, ta.digest)
            assert sorted(mv) == sorted(tv) and mv["effect"]["calls"] == tv["effect"]["calls"]
            le_m, le_t = mv["logits_effect"], tv["logits_effect"]
            assert le_m["clean_top_token_ids"] == le_t["clean_top_token_ids"]
            np.testing.assert_allclose(le_m["logprob_change"], le_t["logprob_change"], atol=ATOL)
            if not any(padding):  # the effect numbers average over every position, padded ones included
                for key in ("norm_before", "norm_after", "max_abs_change", "projection_before", "projection_after"):
                    if key in tv["effect"]:
                        assert mv["effect"][key] == pytest.approx(tv["effect"][key], abs=ATOL), key


def test_bad_batch_input_raises_before_the_root_span(pair: tuple[MlxExecutor, TorchExecutor], session: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    mex, tex = pair
    src = rebuilt(session, tex.run(tex.make_request(PROMPTS[0], layers=(0,))).trace_id)
    digest = src.artifacts_of_kind("activation")[0].digest
    flush_deferred()
    session.force_flush()
    before = session.store.trace_count()
    with pytest.raises(ExecutorError, match="prompts must be a non-empty list of strings"):
        mex.run(TraceRequest(input_text="x"), prompts=["a", 3])  # type: ignore[list-item]
    with pytest.raises(ExecutorError, match="prompts must be a non-empty list of strings"):
        mex.run(TraceRequest(input_text="x"), prompts="abc")
    monkeypatch.setattr(mex.model, "make_cache", lambda: [RotatingKVCache(max_size=8), KVCache()],  # type: ignore[no-untyped-call]
                        raising=False)
    with pytest.raises(ExecutorError, match="plain KVCache in every layer; this model uses RotatingKVCache"):
        mex.run(tex.make_request(PROMPTS))
    monkeypatch.undo()
    flush_deferred()
    session.force_flush()
    assert session.store.trace_count() == before  # no root span was opened
    for ex in (mex, tex):  # a patch source of one prompt does not fit a batch of three
        with pytest.raises(ExecutorError, match="does not match"):
            ex.run(tex.make_request(PROMPTS, interventions=[f"patch:layer=0,source={digest}"]))
