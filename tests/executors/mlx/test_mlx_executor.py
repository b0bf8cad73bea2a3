"""MlxExecutor on the tiny offline Llama, against the torch reference executor.

Both executors load the same directory (``cached_tiny_model``: random-init weights written by
transformers, read by mlx-lm), trace the same request through the real SDK into one embedded
store, and both traces are read back through the one rebuild path (``store.get_trace``). Parity
is on the trace shape (stages, artifact kinds, shapes, layers, metadata keys) and on the metric
direction (cosine, top-1), not on bit-identical tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core  # noqa: E402,F401  (the mlx extra is part of `make test`: a missing mlx fails, never skips)
import mlx_lm  # noqa: E402,F401
import numpy as np
import pytest
from mlx_helpers import blob, child_stages, rebuilt

import vauban_trace as vt  # noqa: E402
from vauban_trace._exceptions import ExecutorError  # noqa: E402
from vauban_trace.contract import Intervention, Trace, TraceRequest, validate_trace  # noqa: E402
from vauban_trace.executors.mlx import MlxExecutor  # noqa: E402
from vauban_trace.executors.torch import TorchExecutor  # noqa: E402
from vauban_trace.executors.torch.tiny import SENTENCES, cached_tiny_model  # noqa: E402

PROMPTS = ["Paris is the capital", "The quick brown fox jumps over", "Hello world", "A trace records"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def model_dir() -> Any:
    return cached_tiny_model("llama", hidden_size=64, num_layers=2)


@pytest.fixture(scope="module")
def pair(model_dir: Any, session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    return MlxExecutor.from_pretrained(model_dir, lazy=False), TorchExecutor.from_pretrained(model_dir, lazy=False)


def request(prompt: str, **kw: Any) -> TraceRequest:
    kinds = ["tokens", "text", "logits", "logprobs"] + (["activation"] if kw.get("collect_layers") else [])
    kinds += list(kw.pop("extra", ()))
    return TraceRequest(input_text=prompt, requested_artifacts=tuple(kinds), return_logits=True,
                        return_logprobs=True, **kw)


def shape_of(trace: Trace) -> list[tuple[Any, ...]]:
    """What must agree between executors: kind, producer stage, shape, dtype, layer, metadata keys."""
    out = []
    for a in trace.artifacts:
        keys = tuple(sorted(k for k in a.metadata if k != "source_device"))
        out.append((a.kind, trace.span(a.producer_span_id).stage, a.shape, a.dtype, a.layer,
                    a.metadata.get("site"), a.metadata.get("role"), a.metadata.get("positions"), keys))
    return sorted(out, key=repr)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_trace_shape_matches_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = request(PROMPTS[0], collect_layers=(0, 1))
    m = rebuilt(session, mex.run(req, max_new_tokens=6).trace_id)
    t = rebuilt(session, tex.run(req, max_new_tokens=6).trace_id)
    for trace in (m, t):
        validate_trace(trace)
        assert trace.complete, trace.problems
        assert trace.missing == ()
    assert child_stages(m) == child_stages(t) == ["tokenize", "batch", "prefill", "observe", "decode", "emit"]
    assert shape_of(m) == shape_of(t)
    acts = sorted(m.artifacts_of_kind("activation"), key=lambda a: a.layer or 0)
    assert [(a.layer, a.metadata["site"], a.metadata["module"]) for a in acts] == [
        (0, "residual", "model.layers.0"), (1, "residual", "model.layers.1")]
    assert m.capabilities is not None and m.capabilities.executor == "mlx"
    assert m.root is not None and m.root.name == t.root.name  # type: ignore[union-attr]
    prefill = m.spans_for_stage("prefill")[0].profile
    assert prefill is not None and prefill.token_count == len(mex.tokenizer(PROMPTS[0])["input_ids"])
    assert prefill.provenance_of("duration_s") == "measured" and prefill.batch_size == 1


def test_logits_direction_and_greedy_tokens_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    for prompt in (*PROMPTS, *SENTENCES):
        req = request(prompt, collect_layers=(1,))
        mr, tr = mex.run(req, max_new_tokens=5), tex.run(req, max_new_tokens=5)
        m, t = rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id)
        assert mr.prompt_token_ids == tr.prompt_token_ids
        ml = blob(session, m.artifacts_of_kind("logits")[0].digest)
        tl = blob(session, t.artifacts_of_kind("logits")[0].digest)
        assert ml.shape == tl.shape == (1, 576)
        assert int(ml.argmax()) == int(tl.argmax())
        assert cosine(ml, tl) > 0.999
        mlp_ = [a for a in m.artifacts_of_kind("logprobs") if a.metadata.get("positions") == "last"][0]
        tlp_ = [a for a in t.artifacts_of_kind("logprobs") if a.metadata.get("positions") == "last"][0]
        assert np.allclose(blob(session, mlp_.digest), blob(session, tlp_.digest), atol=1e-4)
        assert mlp_.summary["topk_ids"] == tlp_.summary["topk_ids"]
        ma = blob(session, m.artifacts_of_kind("activation")[0].digest)
        ta = blob(session, t.artifacts_of_kind("activation")[0].digest)
        assert ma.shape == ta.shape and cosine(ma, ta) > 0.999
        assert mr.token_ids == tr.token_ids  # greedy decoding agrees on this model


def test_all_positions_logits(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = request(PROMPTS[1])
    m = rebuilt(session, mex.run(req, logits_positions="all").trace_id)
    t = rebuilt(session, tex.run(req, logits_positions="all").trace_id)
    ml = blob(session, m.artifacts_of_kind("logits")[0].digest)
    tl = blob(session, t.artifacts_of_kind("logits")[0].digest)
    assert ml.shape == tl.shape and ml.ndim == 3
    assert (ml.argmax(-1) == tl.argmax(-1)).all()
    assert [(mm.kind, mm.reason) for mm in m.missing] == [(tt.kind, tt.reason) for tt in t.missing] == [
        ("text", "not_requested")]


def test_unsupported_requests_are_recorded_missing(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """A ``metric`` without ``score_continuation`` is recorded missing (not_requested); with it, scored."""
    mex, _ = pair
    req = request(PROMPTS[0], collect_layers=(0,), extra=["intervention_result", "weight_snapshot", "metric"],
                  interventions=(Intervention(name="steer", layer_index=1, params={"vector": "random:7", "alpha": 4.0}),))
    result = mex.run(req, max_new_tokens=2, sites=("residual", "mlp"))
    m = rebuilt(session, result.trace_id)
    validate_trace(m)
    assert m.complete, m.problems
    assert {(x.kind, x.reason, x.layer) for x in m.missing} == {("metric", "not_requested", None)}
    assert all(x.detail for x in m.missing)
    assert "intervene" in child_stages(m) and "score" not in child_stages(m)
    scored = rebuilt(session, mex.run(req, max_new_tokens=2, score_continuation=" dog").trace_id)
    assert scored.missing == () and child_stages(scored)[-2:] == ["score", "emit"]
    assert len(m.artifacts_of_kind("intervention_result")) == 1
    assert {a.metadata["site"] for a in m.artifacts_of_kind("activation")} == {"residual", "mlp"}


def test_capabilities_are_honest(pair: tuple[MlxExecutor, TorchExecutor]) -> None:
    caps = pair[0].capabilities
    assert caps.executor == "mlx" and caps.device_kinds == ("cpu",)
    assert caps.levels["can_apply_interventions"] == "full"
    assert caps.levels["can_emit_activations"] == "full"  # residual, attn and mlp found in every layer
    assert caps.levels["can_mutate_weights"] == "unsupported"
    assert caps.levels["can_profile_sync_points"] == "partial"
    assert caps.levels["can_profile_device_memory"] == "full"
    for name in ("can_emit_tokens", "can_emit_logits", "can_emit_logprobs", "can_emit_text", "can_inspect_weights"):
        assert caps.levels[name] == "full"
    for name, level in caps.levels.items():
        if level != "full":
            assert caps.notes.get(name), name


def test_counters_and_lazy_load(model_dir: Any, session: Any) -> None:
    ex = MlxExecutor.from_pretrained(model_dir)
    assert not ex.loaded
    trace = rebuilt(session, ex.run(request(PROMPTS[2], collect_layers=(0,)), max_new_tokens=4, ignore_eos=True).trace_id)
    assert child_stages(trace)[:2] == ["load", "tokenize"]
    assert trace.capabilities == ex.capabilities
    prefill = trace.spans_for_stage("prefill")[0].profile
    decode = trace.spans_for_stage("decode")[0].profile
    assert prefill is not None and decode is not None
    for prof in (prefill, decode):
        assert prof.memory_method == "mlx.peak_memory" and prof.provenance_of("memory_bytes") == "measured"
        assert prof.memory_bytes is not None and prof.memory_bytes > 0
        for c in ("h2d_copies", "d2h_copies", "host_device_copies"):  # the CPU device is the host
            assert getattr(prof, c) == 0 and prof.provenance_of(c) == "derived"
        assert prof.provenance_of("device_duration_s") == "unavailable"
    assert prefill.sync_points == 1 and prefill.provenance_of("sync_points") == "measured"
    # 4 tokens: 4 token reads, 3 forward steps, 1 evaluation of the chosen logprobs
    assert decode.sync_points == 4 + 3 + 1
    # logits + logprobs converted to numpy: copies within host memory, no device-to-host copy
    assert prefill.instrumentation_d2h_copies == 0 and prefill.provenance_of("instrumentation_d2h_copies") == "measured"
    assert decode.metadata["decode.steps"] == 4 and decode.token_count == 4


def test_errors_before_the_root_span(pair: tuple[MlxExecutor, TorchExecutor], tmp_path: Any, session: Any) -> None:
    mex, _ = pair
    with pytest.raises(ExecutorError, match="layer 5 is out of range: the model has 2 layers"):
        mex.run(request(PROMPTS[0], collect_layers=(5,)))
    with pytest.raises(ExecutorError, match="does not exist"):
        MlxExecutor.from_pretrained(tmp_path / "nope")
    with pytest.raises(ExecutorError, match="prompts must be a non-empty list"):
        mex.run(request(PROMPTS[0]), prompts=[])
    with pytest.raises(ExecutorError, match="max_new_tokens"):
        mex.run(request(PROMPTS[0]), max_new_tokens=-1)



@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_match_torch(family: str, session: Any) -> None:
    """Qwen2 iterates a fresh slice of its layer list (``pipeline_layers``): the capture must still run."""
    directory = cached_tiny_model(family, hidden_size=64, num_layers=2)
    mex, tex = MlxExecutor.from_pretrained(directory), TorchExecutor.from_pretrained(directory)
    req = request(PROMPTS[1], collect_layers=(0, 1))
    mr, tr = mex.run(req, max_new_tokens=4, ignore_eos=True), tex.run(req, max_new_tokens=4, ignore_eos=True)
    m, t = rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id)
    assert m.missing == () and m.complete
    assert shape_of(m) == shape_of(t)
    for kind in ("logits", "activation"):
        for ma, ta in zip(sorted(m.artifacts_of_kind(kind), key=lambda a: a.layer or 0),
                          sorted(t.artifacts_of_kind(kind), key=lambda a: a.layer or 0), strict=True):
            assert cosine(blob(session, ma.digest), blob(session, ta.digest)) > 0.999
    assert mr.token_ids == tr.token_ids
    layers = mex.layers
    assert layers is not None and all(type(layers.module(i)).__name__ == "TransformerBlock" for i in range(2))


def test_weight_snapshots_equal_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = request(PROMPTS[0], extra=["weight_snapshot"])
    m = rebuilt(session, mex.run(req).trace_id)
    t = rebuilt(session, tex.run(req).trace_id)
    assert shape_of(m) == shape_of(t)
    (ms,), (ts,) = m.artifacts_of_kind("weight_snapshot"), t.artifacts_of_kind("weight_snapshot")
    assert ms.metadata["parameter"] == ts.metadata["parameter"] == "model.embed_tokens.weight"
    assert m.span(ms.producer_span_id).stage == "observe"
    assert np.array_equal(blob(session, ms.digest), blob(session, ts.digest))  # same file, float32
    name = "model.layers.1.mlp.up_proj.weight"
    named = rebuilt(session, mex.run(request(PROMPTS[0]), weights=[name]).trace_id)
    (snap,) = named.artifacts_of_kind("weight_snapshot")
    assert snap.metadata["parameter"] == name and snap.shape == (128, 64)
    with pytest.raises(ExecutorError, match="unknown parameter 'nope'"):
        mex.run(request(PROMPTS[0]), weights=["nope"])



def test_trace_returns_the_rebuilt_trace_from_the_store(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    trace = pair[0].trace(request("Paris is"))
    assert trace == session.store.get_trace(trace.id)
    assert {a.kind for a in trace.artifacts} >= {"tokens", "logits", "logprobs"}
