"""TorchExecutor on a CUDA device (skipped without one): parity, counters, interventions, long decode.

Run on a GPU machine: ``python -m pytest -q tests/executors/torch/test_torch_executor_cuda.py -s``
(``-s`` prints the measured decode step times).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace.artifacts import decode_array, decode_json
from vauban_trace.contract import validate_trace
from vauban_trace.executors.torch import TorchExecutor, _decode
from vauban_trace.executors.torch.tiny import cached_tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to torch)"),
]

PROMPTS = ["Hello world", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    memory = InMemorySpanExporter()
    s = vt.configure(store_dir=tmp_path_factory.mktemp("cuda-store"), exporter=["embedded", memory])
    s.memory = memory
    yield s
    s.shutdown()


@pytest.mark.parametrize(("family", "dtype"), [("llama", None), ("gpt2", None), ("qwen2", "bfloat16")])
def test_cuda_greedy_batch_matches_generate(family: str, dtype: str | None, session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model(family, hidden_size=64, num_layers=2), device="cuda",
                                       dtype=dtype)
    result = ex.run(ex.make_request(PROMPTS, layers=(0, 1)), max_new_tokens=16)
    tok = ex.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    with torch.no_grad():
        ref = ex.model.generate(**enc, max_new_tokens=16, do_sample=False)[:, enc["input_ids"].shape[1]:].tolist()
    for mine, theirs in zip(result.token_ids, ref, strict=True):
        assert list(mine) == theirs[: len(mine)]


def test_cuda_trace_carries_device_counters_and_bf16_evidence(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2), device="cuda",
                                       dtype="bfloat16")
    trace = ex.trace(ex.make_request(PROMPTS, layers=(1,), logprobs=True,
                                     interventions=["ablate:layer=1,direction=random:3"]), max_new_tokens=8)
    validate_trace(trace)
    assert trace.complete, trace.problems
    assert trace.capabilities is not None and trace.capabilities.device_kinds == ("cuda",)
    assert trace.capabilities.level("can_profile_device_memory") == "full"
    prefill = trace.spans_for_stage("prefill")[0]
    assert prefill.profile is not None and prefill.profile.device is not None
    assert prefill.profile.device.kind == "cuda"
    assert prefill.profile.memory_bytes is not None and prefill.profile.memory_bytes > 0
    assert prefill.profile.memory_method == "cuda.max_memory_allocated"
    (act,) = trace.artifacts_of_kind("activation")
    assert act.metadata["source_dtype"] == "bfloat16"
    d = torch.randn(64, generator=torch.Generator().manual_seed(3))
    d = (d / d.norm()).numpy()
    hidden = decode_array(session.artifact_store.get(act.digest)).astype(np.float64)
    # ablation computed in float32, stored back in bf16: the projection is ~0 relative to the norm
    ratio = np.abs(hidden @ d) / np.linalg.norm(hidden, axis=-1)
    assert ratio.max() < 2e-2
    (res,) = trace.artifacts_of_kind("intervention_result")
    value = decode_json(session.artifact_store.get(res.digest))
    assert abs(value["effect"]["projection_after"]) < 1e-3 * max(1.0, value["effect"]["norm_before"])


def test_cuda_seeded_sampling_is_reproducible_with_tracing_on_and_off(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2), device="cuda")
    ex.load()
    ids = torch.tensor([ex.tokenizer(PROMPTS[0])["input_ids"]], device="cuda")
    mask = torch.ones_like(ids)
    params = _decode.DecodeParams(max_new_tokens=24, do_sample=True, seed=42, top_k=40,
                                  eos_token_ids=frozenset({ex.tokenizer.eos_token_id}))
    with torch.inference_mode():
        logits, cache = _decode.prefill(ex.model, ids, mask)
        off = _decode.decode(ex.model, logits, cache, mask, params).tokens[0]
    on = ex.run(ex.make_request(PROMPTS[0], layers=(0,)), max_new_tokens=24, do_sample=True, seed=42, top_k=40)
    assert list(on.token_ids[0]) == off


def test_cuda_thousand_token_generation_within_limits(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=32, num_layers=1,
                                                         max_position_embeddings=2048), device="cuda")
    ex.load()
    session.memory.clear()
    trace = ex.trace(ex.make_request(PROMPTS[0]), max_new_tokens=1000, ignore_eos=True)
    raw = session.memory.get_finished_spans()
    assert all(s.dropped_events == 0 and s.dropped_attributes == 0 for s in raw)
    dec = trace.spans_for_stage("decode")[0]
    assert dec.profile is not None and dec.profile.metadata["decode.steps"] == 1000
    meta = dec.profile.metadata
    print(f"\ncuda decode, 1000 steps: p50 {meta['decode.step_p50_s'] * 1e3:.2f} ms, "
          f"p95 {meta['decode.step_p95_s'] * 1e3:.2f} ms, max {meta['decode.step_max_s'] * 1e3:.2f} ms, "
          f"sync_points {dec.profile.sync_points}, device {torch.cuda.get_device_name()}")
