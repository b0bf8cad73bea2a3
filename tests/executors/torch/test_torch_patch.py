"""instrument_model on a real (tiny, offline) transformers model: spans, tokens, removal, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from transformers import AutoModelForCausalLM, AutoTokenizer

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ContractError
from vauban_trace.artifacts import open_store
from vauban_trace.executors.torch._patch import instrument_model, model_name, uninstrument_model
from vauban_trace.executors.torch.tiny import cached_tiny_model


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    directory = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    return model, AutoTokenizer.from_pretrained(directory)


@pytest.fixture()
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp, exporter
    tp.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name.split(" ")[0]: s for s in exporter.get_finished_spans()}


def test_generate_is_traced_with_genai_root_and_stages(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    inputs = tok("Hello world", return_tensors="pt")
    prompt_len = int(inputs["input_ids"].shape[1])
    with instrument_model(model, tok, tracer_provider=tp):
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    spans = _by_name(exporter)
    assert set(spans) == {"text_completion", "prefill", "decode"}
    root = spans["text_completion"]
    assert root.name == f"text_completion {model_name(model)}"
    attrs = root.attributes
    assert attrs[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    assert attrs[sc.GEN_AI_PROVIDER_NAME] == "huggingface.transformers"
    assert attrs[sc.GEN_AI_REQUEST_MODEL].startswith("tiny-llama-")
    assert attrs[sc.GEN_AI_REQUEST_MAX_TOKENS] == 6
    assert attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] == prompt_len
    new = out[0, prompt_len:].tolist()
    eos = tok.eos_token_id
    expected_out = new.index(eos) + 1 if eos in new else len(new)
    assert attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == expected_out
    assert list(attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS]) == ["stop" if eos in new else "length"]
    assert sc.GEN_AI_INPUT_MESSAGES not in attrs and sc.GEN_AI_OUTPUT_MESSAGES not in attrs
    prefill, decode = spans["prefill"].attributes, spans["decode"].attributes
    assert prefill[sc.usl("token_count")] == prompt_len and prefill[sc.usl("batch_size")] == 1
    steps = out.shape[1] - prompt_len - 1
    assert decode[sc.DECODE_STEPS] == steps
    assert decode[sc.usl("token_count")] == steps
    assert decode[sc.DECODE_STEP_P50_S] > 0 and decode[sc.DECODE_STEP_MAX_S] >= decode[sc.DECODE_STEP_P50_S]
    for span in (spans["prefill"], spans["decode"]):
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.attributes[sc.usl_provenance("memory_bytes")] == "measured"
        assert span.attributes[sc.usl("h2d_copies")] == 0
        assert span.attributes[sc.usl_provenance("h2d_copies")] == "derived"


def test_greedy_tokens_are_identical_with_and_without_instrumentation(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, _exporter = traced
    inputs = tok(["The quick brown fox"], return_tensors="pt")
    plain = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    with instrument_model(model, tok, tracer_provider=tp, deep_counters=True, layers=(0, 1),
                          capture_artifacts=("tokens", "logits"), artifact_store=open_store("memory://patch-eq")):
        traced_out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert torch.equal(plain, traced_out)


def test_remove_restores_the_original_methods_and_stops_tracing(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    cls_generate, cls_forward = type(model).generate, type(model).forward
    before = dict(model.__dict__)
    handle = instrument_model(model, tok, tracer_provider=tp)
    assert "generate" in model.__dict__ and "forward" in model.__dict__
    with pytest.raises(ContractError, match="already instrumented"):
        instrument_model(model, tok, tracer_provider=tp)
    handle.remove()
    handle.remove()  # idempotent
    assert "generate" not in model.__dict__ and "forward" not in model.__dict__
    assert model.generate.__func__ is cls_generate and model.forward.__func__ is cls_forward
    assert model.__dict__.keys() == before.keys()
    inputs = tok("Hello", return_tensors="pt")
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    model(**inputs)
    assert exporter.get_finished_spans() == ()
    instrument_model(model, tracer_provider=tp)
    assert uninstrument_model(model) is True
    assert uninstrument_model(model) is False
    assert "generate" not in model.__dict__


def test_user_exceptions_propagate_unchanged_and_are_recorded(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    inputs = tok("Hello", return_tensors="pt")
    with instrument_model(model, tok, tracer_provider=tp):
        with pytest.raises(ValueError) as traced_err:
            model.generate(**inputs, max_new_tokens=2, not_a_generate_argument=3)
    with pytest.raises(ValueError) as plain_err:
        model.generate(**inputs, max_new_tokens=2, not_a_generate_argument=3)
    assert str(traced_err.value) == str(plain_err.value)
    root = _by_name(exporter)["text_completion"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes[sc.ERROR_TYPE] == "ValueError"


def test_request_settings_given_to_generate_are_recorded(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    inputs = tok("Hello", return_tensors="pt")
    torch.manual_seed(0)
    with instrument_model(model, tok, tracer_provider=tp):
        model.generate(**inputs, max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    attrs = _by_name(exporter)["text_completion"].attributes
    assert attrs[sc.GEN_AI_REQUEST_TEMPERATURE] == pytest.approx(0.7)
    assert attrs[sc.GEN_AI_REQUEST_TOP_P] == pytest.approx(0.9)
    assert attrs[sc.GEN_AI_REQUEST_TOP_K] == 20


def test_content_is_captured_only_on_opt_in(tiny: tuple[Any, Any], traced: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny
    tp, exporter = traced
    inputs = tok("Hello world", return_tensors="pt")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    with instrument_model(model, tok, tracer_provider=tp):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    spans = _by_name(exporter)
    root = spans["text_completion"].attributes
    messages = json.loads(root[sc.GEN_AI_OUTPUT_MESSAGES])
    completion = tok.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    assert messages == [{"role": "assistant", "parts": [{"type": "text", "content": completion}]}]
    assert list(root[sc.REQUEST_PROMPT_IDS]) == inputs["input_ids"][0].tolist()
    prompt = tok.decode(inputs["input_ids"][0].tolist(), skip_special_tokens=True)
    assert json.loads(root[sc.GEN_AI_INPUT_MESSAGES]) == [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
    assert "emit" in spans


def test_artifacts_and_activations_are_recorded_on_their_stages(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    store = open_store("memory://patch-artifacts")
    inputs = tok("Hello world", return_tensors="pt")
    with instrument_model(model, tok, tracer_provider=tp, capture_artifacts=("tokens", "text", "logits"),
                          layers=(0, 1, 7), artifact_store=store):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    spans = _by_name(exporter)
    kinds = {
        name: sorted(
            str(e.attributes.get(sc.ARTIFACT_KIND)) + ("!" if e.name == sc.EVENT_ARTIFACT_MISSING else "")
            for e in span.events
        )
        for name, span in spans.items()
    }
    assert kinds["prefill"] == ["logits"]
    assert kinds["observe"] == ["activation", "activation", "activation!"]  # layer 7 does not exist
    assert kinds["emit"] == ["text", "tokens"]
    tokens_event = next(e for e in spans["emit"].events if e.attributes[sc.ARTIFACT_KIND] == "tokens")
    digest = tokens_event.attributes[sc.ARTIFACT_DIGEST]
    assert json.loads(store.get(digest)) == out[0, inputs["input_ids"].shape[1]:].tolist()


def test_bare_forward_is_one_request(tiny: tuple[Any, Any], traced: Any) -> None:
    model, tok = tiny
    tp, exporter = traced
    inputs = tok("Hello world", return_tensors="pt")
    with instrument_model(model, tok, tracer_provider=tp, deep_counters=True):
        model(**inputs)
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["forward", f"forward {model_name(model)}"]
    stage_span = next(s for s in exporter.get_finished_spans() if s.name == "forward")
    assert stage_span.attributes[sc.COUNTER_MODE] == "deep"
    assert stage_span.attributes[sc.usl_provenance("sync_points")] == "measured"


def test_bad_arguments_are_refused(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    with pytest.raises(ContractError, match="capture_artifacts"):
        instrument_model(model, tok, capture_artifacts=("weights",))
    with pytest.raises(ContractError, match="layers"):
        instrument_model(model, tok, layers=(-1,))
    with pytest.raises(ContractError, match="torch.nn.Module"):
        instrument_model(object())
    assert "generate" not in model.__dict__


def test_without_an_sdk_the_wrappers_call_straight_through(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    from opentelemetry.trace import NoOpTracerProvider

    inputs = tok("Hello", return_tensors="pt")
    with instrument_model(model, tok, tracer_provider=NoOpTracerProvider()):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= inputs["input_ids"].shape[1] + 1
