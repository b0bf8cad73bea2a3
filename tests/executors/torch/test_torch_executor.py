"""TorchExecutor end to end on tiny offline models: generation parity, trace shape, artifacts, limits.

Traces go through the real SDK and the embedded exporter into a temporary store, and are read
back through the one rebuild path (``executor.trace``). An in-memory exporter on the same provider
gives the raw SDK spans (dropped events/attributes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.artifacts import decode_array, decode_json
from vauban_trace.contract import validate_trace
from vauban_trace.executors.torch import TorchExecutor, _decode
from vauban_trace.executors.torch.tiny import cached_tiny_model

FAMILIES = ("llama", "gpt2", "qwen2", "mistral")
PROMPTS = ["Hello world", "The quick brown fox jumps over"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    memory = InMemorySpanExporter()
    s = vt.configure(store_dir=tmp_path_factory.mktemp("exec-store"), exporter=["embedded", memory])
    s.memory = memory
    yield s
    s.shutdown()


_EXECUTORS: dict[str, TorchExecutor] = {}


def executor(family: str) -> TorchExecutor:
    if family not in _EXECUTORS:
        _EXECUTORS[family] = TorchExecutor.from_pretrained(cached_tiny_model(family, hidden_size=64, num_layers=2))
    return _EXECUTORS[family]


def blob(session: Any, digest: str | None) -> Any:
    assert digest is not None
    data = session.artifact_store.get(digest)
    return decode_json(data) if data[:1] in (b"[", b"{", b'"') else decode_array(data)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batch_matches_model_generate(family: str, session: Any) -> None:
    ex = executor(family)
    result = ex.run(ex.make_request(PROMPTS, layers=(0, 1)), max_new_tokens=12)
    tok, model = ex.tokenizer, ex.model
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False)[:, enc["input_ids"].shape[1]:]
    pad = ex.tokenizer.pad_token_id
    for mine, theirs in zip(result.token_ids, ref.tolist(), strict=True):
        assert list(mine) == theirs[: len(mine)]
        assert all(t == pad for t in theirs[len(mine):])  # generate pads after the sequence stopped
    assert result.prompt_token_ids == tuple(tuple(tok(p)["input_ids"]) for p in PROMPTS)
    assert result.trace_id is not None


def _untraced(ex: TorchExecutor, prompt: str, params: _decode.DecodeParams) -> list[int]:
    ids = torch.tensor([ex.tokenizer(prompt)["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        logits, cache = _decode.prefill(ex.model, ids, mask)
        return _decode.decode(ex.model, logits, cache, mask, params).tokens[0]


def test_greedy_and_seeded_sampling_are_identical_with_tracing_on_and_off(session: Any) -> None:
    ex = executor("llama")
    eos = frozenset({ex.tokenizer.eos_token_id})
    greedy = _untraced(ex, PROMPTS[0], _decode.DecodeParams(max_new_tokens=16, eos_token_ids=eos))
    traced = ex.run(ex.make_request(PROMPTS[0], layers=(0, 1), logprobs=True), max_new_tokens=16)
    assert list(traced.token_ids[0]) == greedy

    settings = {"temperature": 0.9, "top_k": 50, "top_p": 0.95}
    sampled = _untraced(ex, PROMPTS[0], _decode.DecodeParams(
        max_new_tokens=16, do_sample=True, seed=1234, eos_token_ids=eos, **settings))  # type: ignore[arg-type]
    on = ex.run(ex.make_request(PROMPTS[0], layers=(1,)), max_new_tokens=16, do_sample=True, seed=1234, **settings)
    again = ex.run(ex.make_request(PROMPTS[0]), max_new_tokens=16, do_sample=True, seed=1234, **settings)
    other = ex.run(ex.make_request(PROMPTS[0]), max_new_tokens=16, do_sample=True, seed=99, **settings)
    assert list(on.token_ids[0]) == sampled == list(again.token_ids[0])
    assert list(other.token_ids[0]) != sampled


def test_trace_has_every_stage_and_artifacts_with_their_producers(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
    assert not ex.loaded  # loading happens inside the first traced request
    req = ex.make_request(PROMPTS, layers=(0, 1), logprobs=True,
                          interventions=["steer:layer=1,vector=random:3,alpha=2"],
                          artifacts=["weight_snapshot", "metric"])
    trace = ex.trace(req, max_new_tokens=6, score_continuation=" dog", sites=("residual", "mlp"))
    validate_trace(trace)
    assert trace.complete, trace.problems
    root = trace.root
    assert root is not None and root.name.startswith("text_completion tiny-llama-")
    stages = [s.stage for s in trace.spans if s.parent_id == root.id]
    assert stages == ["load", "tokenize", "batch", "prefill", "observe", "intervene", "decode", "score", "emit"]
    producers = {(a.kind, trace.span(a.producer_span_id).stage) for a in trace.artifacts}
    assert producers == {
        ("tokens", "tokenize"), ("logits", "prefill"), ("logprobs", "prefill"), ("activation", "observe"),
        ("weight_snapshot", "observe"), ("intervention_result", "intervene"), ("logprobs", "decode"),
        ("metric", "score"), ("text", "emit"), ("tokens", "emit"),
    }
    acts = trace.artifacts_of_kind("activation")
    assert sorted((a.layer, a.metadata["site"]) for a in acts) == [
        (0, "mlp"), (0, "residual"), (1, "mlp"), (1, "residual")]
    width = max(len(ex.tokenizer(p)["input_ids"]) for p in PROMPTS)
    for a in acts:
        assert a.shape == (2, width, 64) and a.dtype == "float32" and a.digest
        assert a.metadata["module"].startswith("model.layers.")
        assert set(a.summary) >= {"mean", "std", "l2_norm"}
    assert trace.capabilities == ex.capabilities
    assert trace.request is not None and trace.request.collect_layers == (0, 1)
    assert trace.missing == ()
    dec = trace.spans_for_stage("decode")[0]
    assert dec.profile is not None
    meta = dec.profile.metadata
    assert meta["decode.steps"] == 6 and meta["decode.stop_reason"] == "max_new_tokens"
    assert 0 < meta["decode.step_p50_s"] <= meta["decode.step_p95_s"] <= meta["decode.step_max_s"]
    assert dec.profile.token_count == 12 and dec.profile.batch_size == 2
    prefill = trace.spans_for_stage("prefill")[0]
    assert prefill.profile is not None and prefill.profile.token_count == sum(
        len(ex.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert prefill.profile.provenance_of("duration_s") == "measured"


def test_artifact_contents_match_the_model(session: Any) -> None:
    ex = executor("llama")
    trace = ex.trace(ex.make_request(PROMPTS[1], layers=(0,), logprobs=True, artifacts=["weight_snapshot"]),
                     max_new_tokens=0)
    ids = torch.tensor([ex.tokenizer(PROMPTS[1])["input_ids"]])
    with torch.no_grad():
        out = ex.model(ids, output_hidden_states=True)
    (act,) = trace.artifacts_of_kind("activation")
    np.testing.assert_allclose(blob(session, act.digest), out.hidden_states[1].numpy(), rtol=1e-5, atol=1e-6)
    (logits,) = trace.artifacts_of_kind("logits")
    np.testing.assert_allclose(blob(session, logits.digest), out.logits[:, -1].numpy(), rtol=1e-5, atol=1e-6)
    top = torch.topk(out.logits[0, -1], 5)
    assert list(logits.summary["topk_ids"]) == top.indices.tolist()
    (weights,) = trace.artifacts_of_kind("weight_snapshot")
    assert weights.metadata["parameter"] == "model.embed_tokens.weight"
    np.testing.assert_array_equal(blob(session, weights.digest), ex.model.model.embed_tokens.weight.detach().numpy())
    assert blob(session, trace.artifacts_of_kind("tokens")[0].digest) == ids[0].tolist()
    # nothing generated: text was requested by make_request and is declared missing, not omitted
    assert [(m.kind, m.reason) for m in trace.missing] == [("text", "not_requested")]


def test_eos_and_stop_strings_end_generation(session: Any) -> None:
    ex = executor("gpt2")
    base = ex.run(ex.make_request(PROMPTS[0]), max_new_tokens=12, ignore_eos=True)
    tokens = list(base.token_ids[0])
    # stop string: a piece of the greedy text; the returned text stops right before it
    text = base.texts[0]
    assert len(text) > 6
    stop = text[4:7]
    cut = ex.run(ex.make_request(PROMPTS[0]), max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert cut.finish_reasons == ("stop",) and cut.stop_reasons == ("stop_string",)
    assert cut.texts[0] == text[: text.find(stop)]
    assert len(cut.token_ids[0]) < 12 and list(cut.token_ids[0]) == tokens[: len(cut.token_ids[0])]
    # eos: declare the 4th generated token to be the end of sequence
    config = ex.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = tokens[3]
    try:
        trace = ex.trace(ex.make_request(PROMPTS[0]), max_new_tokens=12)
    finally:
        config.eos_token_id = saved
    result_tokens = blob(session, [a for a in trace.artifacts_of_kind("tokens")
                                   if a.metadata.get("role") == "completion"][0].digest)
    first = tokens.index(tokens[3])
    assert result_tokens == tokens[: first + 1]  # the eos token is kept, as generate does
    dec = trace.spans_for_stage("decode")[0]
    assert dec.profile is not None and dec.profile.metadata["decode.stop_reason"] == "eos"
    assert trace.root is not None
    assert list(trace.root.metadata["gen_ai.response.finish_reasons"]) == ["stop"]


def test_continuation_score_is_the_log_likelihood(session: Any) -> None:
    ex = executor("qwen2")
    trace = ex.trace(ex.make_request(PROMPTS, artifacts=["metric"]), score_continuation=" lazy dog")
    (metric,) = trace.artifacts_of_kind("metric")
    value = blob(session, metric.digest)
    tok = ex.tokenizer
    cont = tok(" lazy dog", add_special_tokens=False)["input_ids"]
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        full = torch.tensor([ids + cont])
        with torch.no_grad():
            lp = ex.model(full).logits.float().log_softmax(-1)[0]
        expected = [float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(cont)]
        assert value["token_ids"][i] == cont
        np.testing.assert_allclose(value["token_logprobs"][i], expected, rtol=1e-4, atol=1e-4)
        assert value["sum_logprob"][i] == pytest.approx(sum(expected), abs=1e-3)


def test_metric_requested_without_a_continuation_is_declared_missing(session: Any) -> None:
    ex = executor("qwen2")
    trace = ex.trace(ex.make_request(PROMPTS[0], artifacts=["metric"]), max_new_tokens=2)
    assert trace.artifacts_of_kind("metric") == ()
    assert [(m.kind, m.reason) for m in trace.missing] == [("metric", "not_requested")]


def test_thousand_token_generation_stays_within_span_and_event_limits(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=32, num_layers=1,
                                                         max_position_embeddings=2048))
    ex.load()
    session.memory.clear()
    trace = ex.trace(ex.make_request(PROMPTS[0], logprobs=True), max_new_tokens=1000, ignore_eos=True)
    raw = session.memory.get_finished_spans()
    assert len(raw) == len(trace.spans) <= 8
    assert all(s.dropped_events == 0 and s.dropped_attributes == 0 and s.dropped_links == 0 for s in raw)
    assert trace.complete and not trace.problems
    dec = trace.spans_for_stage("decode")[0]
    assert dec.profile is not None
    assert dec.profile.metadata["decode.steps"] == 1000 and dec.profile.token_count == 1000
    assert dec.metadata["forward_steps"] == 999
    (chosen,) = [a for a in trace.artifacts_of_kind("logprobs") if a.metadata.get("positions") == "generated"]
    assert chosen.shape == (1, 1000)
    text_tokens = [a for a in trace.artifacts_of_kind("tokens") if a.metadata.get("role") == "completion"]
    assert len(blob(session, text_tokens[0].digest)) == 1000


def test_unsupported_kinds_are_recorded_missing_on_the_root(session: Any) -> None:
    ex = executor("llama")
    req = ex.make_request(PROMPTS[0], artifacts=["report_evidence"])
    trace = ex.trace(req, max_new_tokens=2)
    assert [(m.kind, m.reason) for m in trace.missing] == [("report_evidence", "unsupported")]
    assert trace.root is not None and trace.missing[0].span_id == trace.root.id


def test_chat_template_is_applied_and_named_in_the_operation(session: Any) -> None:
    ex = executor("llama")
    trace = ex.trace(ex.make_request("What is a span?", chat=True), max_new_tokens=2)
    assert trace.root is not None and trace.root.name.startswith("chat ")
    tok = ex.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is a span?"}], tokenize=False,
                                   add_generation_prompt=True)
    (prompt,) = [a for a in trace.artifacts_of_kind("tokens") if a.metadata.get("role") == "prompt"]
    assert blob(session, prompt.digest) == tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"sites": ("residual", "ffn")}, "sites"),
        ({"logits_positions": "first"}, "logits_positions"),
        ({"weights": ["no.such.weight"]}, "no.such.weight"),
        ({"score_continuation": ["a", "b", "c"]}, "one per prompt"),
    ],
)
def test_bad_settings_raise_before_anything_is_traced(kwargs: dict[str, Any], message: str, session: Any) -> None:
    ex = executor("llama")
    ex.load()  # loaded: every check runs before the root span (lazy executors check some after "load")
    session.force_flush()  # earlier runs' spans land first
    before = len(session.store.list_traces(limit=1000))
    with pytest.raises(ExecutorError, match=message):
        ex.run(ex.make_request(PROMPTS[0]), **kwargs)
    session.force_flush()
    assert len(session.store.list_traces(limit=1000)) == before


def test_out_of_range_layer_is_a_clear_error(session: Any) -> None:
    ex = executor("llama")
    with pytest.raises(ExecutorError, match=r"layer 2 is out of range: the model has 2 layers \(0-1\)"):
        ex.run(ex.make_request(PROMPTS[0], layers=(0, 2)))
    lazy = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
    with pytest.raises(ExecutorError, match="layer 9 is out of range"):
        lazy.run(lazy.make_request(PROMPTS[0], layers=(9,)))
    assert not lazy.loaded  # refused from the config alone, before loading weights


def test_missing_model_directory_and_bad_device(tmp_path: Any) -> None:
    with pytest.raises(ExecutorError, match="does not exist"):
        TorchExecutor.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExecutorError, match="no config.json"):
        TorchExecutor.from_pretrained(tmp_path / "empty")
    directory = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    with pytest.raises(ExecutorError, match="unknown device|not available"):
        TorchExecutor.from_pretrained(directory, device="tpu")
    with pytest.raises(ExecutorError, match="unknown dtype"):
        TorchExecutor.from_pretrained(directory, dtype="float7")


def test_batch_where_one_sequence_hits_eos_matches_generate(session: Any) -> None:
    ex = executor("mistral")
    free = ex.run(ex.make_request(PROMPTS), max_new_tokens=12, ignore_eos=True)
    eos = free.token_ids[0][3]
    config = ex.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = eos
    try:
        result = ex.run(ex.make_request(PROMPTS), max_new_tokens=12)
        tok = ex.tokenizer
        tok.padding_side = "left"
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            ref = ex.model.generate(**enc, max_new_tokens=12, do_sample=False)[:, enc["input_ids"].shape[1]:].tolist()
    finally:
        config.eos_token_id = saved
    first = list(free.token_ids[0]).index(eos)
    assert list(result.token_ids[0]) == list(free.token_ids[0][: first + 1])
    assert result.stop_reasons[0] == "eos" and result.finish_reasons[0] == "stop"
    for mine, theirs in zip(result.token_ids, ref, strict=True):
        assert list(mine) == theirs[: len(mine)]
        assert all(t == tok.pad_token_id for t in theirs[len(mine):])


def test_all_positions_logits_and_bfloat16_evidence(session: Any) -> None:
    ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2), dtype="bfloat16")
    trace = ex.trace(ex.make_request(PROMPTS, layers=(1,), logprobs=True), logits_positions="all", max_new_tokens=2)
    width = max(len(ex.tokenizer(p)["input_ids"]) for p in PROMPTS)
    (logits,) = trace.artifacts_of_kind("logits")
    assert logits.shape[:2] == (2, width) and logits.metadata["positions"] == "all"
    assert logits.metadata["source_dtype"] == "bfloat16"
    (act,) = trace.artifacts_of_kind("activation")
    assert act.metadata["source_dtype"] == "bfloat16" and act.dtype == "float32"
    lp = [a for a in trace.artifacts_of_kind("logprobs") if a.metadata.get("positions") == "all"][0]
    values = blob(session, lp.digest)
    np.testing.assert_allclose(np.exp(values).sum(-1), 1.0, rtol=1e-3)


def test_deep_counters_count_the_decode_loops_host_reads(session: Any) -> None:
    ex = executor("llama")
    cheap = ex.trace(ex.make_request(PROMPTS[0], layers=(0,)), max_new_tokens=5, ignore_eos=True)
    deep = ex.trace(ex.make_request(PROMPTS[0], layers=(0,)), max_new_tokens=5, ignore_eos=True, deep_counters=True)
    cheap_dec = cheap.spans_for_stage("decode")[0].profile
    deep_dec = deep.spans_for_stage("decode")[0].profile
    assert cheap_dec is not None and deep_dec is not None
    assert cheap_dec.sync_points is None and cheap_dec.provenance_of("sync_points") == "unavailable"
    # one host read of the token ids per step (the stop check), counted by the deep probe on CPU
    assert deep_dec.provenance_of("sync_points") == "measured"
    assert deep_dec.sync_points is not None and deep_dec.sync_points >= 5
    assert deep_dec.metadata.get("usl.mode") == "deep"
