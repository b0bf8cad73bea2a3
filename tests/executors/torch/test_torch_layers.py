"""Generic layer discovery over real (tiny, offline) transformers models of several families."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

from vauban_trace.executors.torch import TorchExecutor, find_layers
from vauban_trace.executors.torch._layers import hidden_of, replace_hidden
from vauban_trace.executors.torch.tiny import cached_tiny_model

EXPECTED = {
    # family: (layer list path, attn class suffix, mlp class suffix)
    "llama": ("model.layers", "Attention", "MLP"),
    "mistral": ("model.layers", "Attention", "MLP"),
    "qwen2": ("model.layers", "Attention", "MLP"),
    "gpt2": ("transformer.h", "Attention", "MLP"),
}


def _model(family: str) -> tuple[Any, Any]:
    directory = cached_tiny_model(family, hidden_size=64, num_layers=2)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_layers_and_sites_are_found_in_every_family(family: str) -> None:
    model, _tok = _model(family)
    layers, note = find_layers(model)
    assert layers is not None, note
    path, attn_suffix, mlp_suffix = EXPECTED[family]
    assert layers.path == path
    assert layers.count == 2
    assert layers.hidden_size == 64
    assert layers.sites_available() == ("residual", "attn", "mlp")
    for i in range(2):
        assert layers.site(i, "residual").module is layers.layers[i]  # type: ignore[union-attr]
        assert layers.site(i, "attn").module_class.endswith(attn_suffix)  # type: ignore[union-attr]
        assert layers.site(i, "mlp").module_class.endswith(mlp_suffix)  # type: ignore[union-attr]
        assert layers.site(i, "attn").path.startswith(f"{path}.{i}.")  # type: ignore[union-attr]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_residual_site_is_the_layer_output(family: str) -> None:
    """The hooked residual output of layer 0 equals hidden_states[1] of the model's own output."""
    model, tok = _model(family)
    layers, _ = find_layers(model)
    assert layers is not None
    seen: list[torch.Tensor] = []
    handle = layers.site(0, "residual").module.register_forward_hook(  # type: ignore[union-attr]
        lambda m, a, o: seen.append(hidden_of(o).detach().clone())  # type: ignore[union-attr]
    )
    try:
        ids = torch.tensor([tok("Hello world")["input_ids"]])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], out.hidden_states[1])


def test_bert_encoder_has_residual_and_attention_but_no_mlp_site() -> None:
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=3, num_attention_heads=4)).eval()
    layers, note = find_layers(model)
    assert layers is not None, note
    assert layers.path == "encoder.layer" and layers.count == 3
    assert layers.sites_available() == ("residual", "attn")
    assert layers.site(1, "mlp") is None
    assert layers.site(1, "attn").path == "encoder.layer.1.attention"  # type: ignore[union-attr]


def test_model_whose_layers_cannot_be_found_is_unsupported_not_a_crash() -> None:
    model, tok = _model("gpt2")
    model.config.n_layer = 7  # the config now disagrees with every module list in the model
    layers, note = find_layers(model)
    assert layers is None
    assert "7" in note and "GPT2LMHeadModel" in note
    ex = TorchExecutor(model, tok)
    caps = ex.capabilities
    assert caps.level("can_emit_activations") == "unsupported"
    assert caps.level("can_apply_interventions") == "unsupported"
    assert "7 identical layers" in caps.notes["can_emit_activations"]
    # inference still runs: no hook is needed, the requested activations are declared missing
    result = ex.run(ex.make_request("Hello", layers=(0,)), max_new_tokens=2)
    assert len(result.token_ids[0]) == 2


def test_hidden_of_and_replace_hidden_keep_the_container_type() -> None:
    h = torch.ones(1, 2, 3)
    other = torch.zeros(1, 2, 3)
    assert hidden_of(h) is h
    assert hidden_of((h, None)) is h
    assert hidden_of("text") is None
    assert replace_hidden(h, other) is other
    rebuilt = replace_hidden((h, "cache"), other)
    assert isinstance(rebuilt, tuple) and rebuilt[0] is other and rebuilt[1] == "cache"
    assert replace_hidden([h, 1], other)[0] is other
