"""MLX interventions and attn/mlp sites against the torch reference executor.

The same tiny Llama directory (``cached_tiny_model``: random-init float32 weights written by
transformers, read by mlx-lm) runs the same request, with the same contract ``Intervention``
records, on both executors into one embedded store; both traces are rebuilt from it. Checked:
the trace shape (stages, artifact kinds, layers, shapes, metadata keys, the keys of the
``intervention_result`` values), the numbers (steered activations, logits and the measured effects
agree within the stated fp32 tolerances), that each intervention really changes what is downstream
of it on both executors, and the errors raised before the root span.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core  # noqa: F401  (the mlx extra is part of `make test`: a missing mlx fails, never skips)
import numpy as np
import pytest
import torch
from mlx_helpers import blob, child_stages, rebuilt

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.artifacts import encode_array
from vauban_trace.contract import Trace, TraceRequest, validate_trace
from vauban_trace.executors.mlx import MlxExecutor, torch_cpu_randn
from vauban_trace.executors.torch import TorchExecutor, parse_intervention
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.instrument._probes import flush_deferred

PROMPT = "The quick brown fox jumps over"
OTHER = "The lazy dog jumps over the"  # same token count as PROMPT
ATOL_ACT = 1e-4  # activations / logits, fp32 (measured max |diff| is about 1e-6, see docs/mlx-executor.md)
ATOL_EFFECT = 1e-4  # norms, projections and logprob changes in intervention_result


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-intervene-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    directory = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    return MlxExecutor.from_pretrained(directory, lazy=False), TorchExecutor.from_pretrained(directory, lazy=False)


def req(prompt: str, specs: list[str], layers: tuple[int, ...] = (0, 1)) -> TraceRequest:
    kinds = ["tokens", "text", "logits", "logprobs", "activation"] + (["intervention_result"] if specs else [])
    return TraceRequest(input_text=prompt, collect_layers=layers, requested_artifacts=tuple(kinds),
                        return_logits=True, return_logprobs=True,
                        interventions=tuple(parse_intervention(s) for s in specs))


def both(pair: tuple[MlxExecutor, TorchExecutor], session: Any, request: TraceRequest,
         **kw: Any) -> tuple[Trace, Trace, Any, Any]:
    mex, tex = pair
    mr, tr = mex.run(request, **kw), tex.run(request, **kw)
    return rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id), mr, tr


def shape_of(trace: Trace) -> list[tuple[Any, ...]]:
    out = []
    for a in trace.artifacts:
        keys = tuple(sorted(k for k in a.metadata if k != "source_device"))
        out.append((a.kind, trace.span(a.producer_span_id).stage, a.shape, a.dtype, a.layer,
                    a.metadata.get("site"), a.metadata.get("module"), a.metadata.get("intervention"),
                    a.metadata.get("positions"), keys))
    return sorted(out, key=repr)


def act(session: Any, trace: Trace, layer: int, site: str = "residual") -> np.ndarray:
    (art,) = [a for a in trace.artifacts_of_kind("activation") if a.layer == layer and a.metadata["site"] == site]
    return np.asarray(blob(session, art.digest))


def logits(session: Any, trace: Trace) -> np.ndarray:
    return np.asarray(blob(session, trace.artifacts_of_kind("logits")[0].digest))


def results(session: Any, trace: Trace) -> list[dict[str, Any]]:
    return [blob(session, a.digest) for a in trace.artifacts_of_kind("intervention_result")]


def key_tree(value: Any) -> Any:
    """The keys of a JSON value, recursively (what the two executors' results must share)."""
    if isinstance(value, dict):
        return {k: key_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return ("list", len(value))
    return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"


def close_numbers(a: Any, b: Any, atol: float) -> None:
    """Same structure, equal strings/ints/bools, floats within ``atol``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close_numbers(a[k], b[k], atol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            close_numbers(x, y, atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=atol)
    else:
        assert a == b


def test_random_vectors_equal_torch() -> None:
    """``random:SEED`` draws torch's vector without torch (both code paths: n < 16 and n >= 16)."""
    worst = 0.0
    for seed in (0, 1, 7, 12345, 2**31 - 1, 2**40 + 3):
        for n in (1, 3, 15, 16, 17, 64, 100, 896):
            want = torch.randn(n, generator=torch.Generator(device="cpu").manual_seed(seed), dtype=torch.float32).numpy()
            worst = max(worst, float(np.abs(torch_cpu_randn(seed, n) - want).max()))
    assert worst < 2e-6, worst


@pytest.mark.parametrize("spec", [
    "steer:layer=1,vector=random:5,alpha=4",
    "ablate:layer=1,direction=random:11",
    "steer:layer=0,vector=random:2,alpha=3,site=mlp,positions=prompt",
    "ablate:layer=0,direction=random:4,site=attn",
])
def test_intervention_parity_with_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any, spec: str) -> None:
    request = req(PROMPT, [spec])
    m, t, mr, tr = both(pair, session, request, max_new_tokens=4, ignore_eos=True, sites=("residual", "attn", "mlp"))
    for trace in (m, t):
        validate_trace(trace)
        assert trace.complete, trace.problems
        assert trace.missing == ()
    assert child_stages(m) == child_stages(t) == [
        "tokenize", "batch", "prefill", "observe", "intervene", "decode", "emit"]
    assert shape_of(m) == shape_of(t)
    (mres,), (tres,) = results(session, m), results(session, t)
    assert key_tree(mres) == key_tree(tres)
    close_numbers(mres, tres, ATOL_EFFECT)  # params, site module, calls, effect, logits effect
    assert m.spans_for_stage("decode")[0].metadata["intervention_calls"] == \
        t.spans_for_stage("decode")[0].metadata["intervention_calls"]
    for layer in (0, 1):
        for site in ("residual", "attn", "mlp"):
            np.testing.assert_allclose(act(session, m, layer, site), act(session, t, layer, site), atol=ATOL_ACT)
    np.testing.assert_allclose(logits(session, m), logits(session, t), atol=ATOL_ACT)
    assert mr.token_ids == tr.token_ids


def test_steering_changes_downstream_on_both(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    unit = torch_cpu_randn(5, 64)
    unit = unit / np.linalg.norm(unit)
    cm, ct, _, _ = both(pair, session, req(PROMPT, []), max_new_tokens=0)
    sm, st, _, _ = both(pair, session, req(PROMPT, ["steer:layer=1,vector=random:5,alpha=4"]), max_new_tokens=0)
    for clean, steered in ((cm, sm), (ct, st)):
        np.testing.assert_allclose(act(session, steered, 0), act(session, clean, 0), atol=1e-6)  # upstream untouched
        delta = act(session, steered, 1) @ unit - act(session, clean, 1) @ unit
        np.testing.assert_allclose(delta, 4.0, atol=1e-4)  # the projection grows by alpha
        assert np.abs(logits(session, steered) - logits(session, clean)).max() > 1e-2
        (res,) = results(session, steered)
        assert res["effect"]["projection_after"] - res["effect"]["projection_before"] == pytest.approx(4.0, abs=1e-4)
        assert res["logits_effect"]["logprob_change"][0] != 0.0
        assert res["effect"]["calls"] == {"prefill": 1}
    np.testing.assert_allclose(logits(session, sm), logits(session, st), atol=ATOL_ACT)


def test_ablation_zeroes_the_projection_and_acts_on_decode(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    d = torch_cpu_randn(11, 64)
    d = d / np.linalg.norm(d)
    m, t, _, _ = both(pair, session, req(PROMPT, ["ablate:layer=1,direction=random:11"], layers=(1,)), max_new_tokens=3,
                      ignore_eos=True)
    clean, _, _, _ = both(pair, session, req(PROMPT, [], layers=(1,)), max_new_tokens=0)
    assert np.abs(act(session, clean, 1) @ d).max() > 1e-2
    for trace in (m, t):
        assert np.abs(act(session, trace, 1) @ d).max() < 1e-5
        assert trace.spans_for_stage("decode")[0].metadata["intervention_calls"] == (2,)  # 2 forward steps
        (res,) = results(session, trace)
        assert abs(res["effect"]["projection_after"]) < 1e-5 and res["effect"]["norm_change"] <= 0


def test_patching_and_vectors_from_the_store(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    assert len(mex.tokenizer(PROMPT)["input_ids"]) == len(mex.tokenizer(OTHER)["input_ids"])
    source = rebuilt(session, tex.run(req(PROMPT, [], layers=(0,)), max_new_tokens=0).trace_id)
    (src,) = source.artifacts_of_kind("activation")
    m, t, _, _ = both(pair, session, req(OTHER, [f"patch:layer=0,source={src.digest}"]), max_new_tokens=2)
    assert shape_of(m) == shape_of(t)
    for trace in (m, t):
        np.testing.assert_allclose(act(session, trace, 0), blob(session, src.digest), atol=1e-6)
        np.testing.assert_allclose(logits(session, trace), logits(session, source), atol=ATOL_ACT)
        assert results(session, trace)[0]["effect"]["calls"] == {"prefill": 1}
    raw = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    ref = session.artifact_store.put(encode_array(raw), "application/vnd.safetensors")
    m, t, _, _ = both(pair, session, req(PROMPT, [f"steer:layer=0,vector={ref.digest},alpha=2,normalize=false"]))
    (mres,), (tres,) = results(session, m), results(session, t)
    close_numbers(mres, tres, ATOL_EFFECT)
    assert mres["vector_input_norm"] == pytest.approx(float(np.linalg.norm(raw)), rel=1e-5)


def test_bad_interventions_raise_before_the_root_span(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    wrong = session.artifact_store.put(encode_array(np.ones(10, dtype=np.float32)), "application/vnd.safetensors")
    cases = [
        ("ablate:layer=5,direction=random:1", "layer 5 is out of range"),
        (f"ablate:layer=0,direction={wrong.digest}", "model width 64, got shape \\[10\\]"),
        ("steer:layer=0,vector=blake3:" + "0" * 64, "cannot read blake3:"),
    ]
    flush_deferred()
    session.force_flush()
    before = session.store.trace_count()
    for spec, message in cases:
        for ex in (mex, tex):
            with pytest.raises(ExecutorError, match=message):
                ex.run(req(PROMPT, [spec]))
    flush_deferred()
    session.force_flush()
    assert session.store.trace_count() == before  # no root span was opened
    src = rebuilt(session, tex.run(req(PROMPT, [], layers=(0,)), max_new_tokens=0).trace_id)
    digest = src.artifacts_of_kind("activation")[0].digest
    for ex in (mex, tex):
        with pytest.raises(ExecutorError, match="does not match"):
            ex.run(req("Hi", [f"patch:layer=0,source={digest}"]))
    # a lazily loaded MLX executor checks the layer from the config before loading anything
    lazy = MlxExecutor.from_pretrained(mex.path)
    with pytest.raises(ExecutorError, match="layer 7 is out of range: the model has 2 layers"):
        lazy.run(req(PROMPT, ["steer:layer=7,vector=random:1"]))
    assert not lazy.loaded


def test_absent_site_is_declared(session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer without an mlp module: capabilities drop to partial, the site is recorded missing,
    an intervention there is refused."""
    import mlx_lm.utils

    real_load = mlx_lm.utils.load_model

    class PlainCallable:  # not an nn.Module: discovery must not take it for the mlp site
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __call__(self, *args: Any) -> Any:
            return self.fn(*args)

    def load_without_mlp_0(path: Any, *args: Any, **kwargs: Any) -> Any:
        model, config = real_load(path, *args, **kwargs)
        block = model.layers[0]
        block["mlp"] = PlainCallable(block["mlp"])
        return model, config

    monkeypatch.setattr(mlx_lm.utils, "load_model", load_without_mlp_0)
    ex = MlxExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2), lazy=False)
    caps = ex.capabilities
    assert caps.levels["can_emit_activations"] == "partial"
    assert caps.notes["can_emit_activations"] == "sites mlp not found in TransformerBlock; available: residual, attn"
    assert caps.levels["can_apply_interventions"] == "full"
    trace = rebuilt(session, ex.run(req(PROMPT, []), sites=("residual", "mlp")).trace_id)
    assert trace.complete, trace.problems
    assert [(x.kind, x.reason, x.layer, x.detail) for x in trace.missing if x.kind == "activation"] == [
        ("activation", "unsupported", 0, "layer 0 has no mlp module")]
    assert sorted((a.layer, a.metadata["site"]) for a in trace.artifacts_of_kind("activation")) == [
        (0, "residual"), (1, "mlp"), (1, "residual")]
    with pytest.raises(ExecutorError, match="this model has no mlp site in layer 0"):
        ex.run(req(PROMPT, ["steer:layer=0,vector=random:1,site=mlp"]))


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_intervene_like_torch(family: str, session: Any) -> None:
    """Qwen2 iterates a fresh slice of its layer list: residual taps write into the owning list."""
    directory = cached_tiny_model(family, hidden_size=64, num_layers=2)
    pair = (MlxExecutor.from_pretrained(directory), TorchExecutor.from_pretrained(directory))
    request = req(PROMPT, ["steer:layer=0,vector=random:3,alpha=5", "ablate:layer=1,direction=random:6,site=attn"])
    m, t, mr, tr = both(pair, session, request, max_new_tokens=3, ignore_eos=True, sites=("residual", "attn"))
    assert m.missing == () and m.complete and shape_of(m) == shape_of(t)
    close_numbers(results(session, m), results(session, t), ATOL_EFFECT)
    for layer in (0, 1):
        for site in ("residual", "attn"):
            np.testing.assert_allclose(act(session, m, layer, site), act(session, t, layer, site), atol=ATOL_ACT)
    np.testing.assert_allclose(logits(session, m), logits(session, t), atol=ATOL_ACT)
    assert mr.token_ids == tr.token_ids
