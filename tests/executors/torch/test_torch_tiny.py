"""The offline tiny-model builder: every family loads with the real transformers code, builds once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vauban_trace import ExecutorError
from vauban_trace.executors.torch.tiny import FAMILIES, build_tiny_model, cached_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_family_builds_and_loads(tmp_path: Path, family: str) -> None:
    directory = build_tiny_model(tmp_path / family, family, hidden_size=32, num_layers=2)
    config = json.loads((directory / "config.json").read_text())
    if family != "gpt2":
        assert config["rope_theta"] == 10000.0  # explicit, for mlx-lm (transformers 5 trap)
    assert (directory / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    layers = model.config.n_layer if family == "gpt2" else model.config.num_hidden_layers
    assert layers == 2
    assert len(tok) <= model.config.vocab_size
    enc = tok("Hello world, the quick brown fox.", return_tensors="pt")
    assert int(enc["input_ids"][0, 0]) == tok.bos_token_id
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], model.config.vocab_size)
    assert len(out.hidden_states) == 3
    text = tok.decode(enc["input_ids"][0], skip_special_tokens=True)
    assert text == "Hello world, the quick brown fox."
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|assistant|>\n")


def test_build_once_and_deterministic(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", "llama", hidden_size=32, seed=3)
    stamp = (a / ".vauban-tiny.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert build_tiny_model(tmp_path / "a", "llama", hidden_size=32, seed=3) == a
    assert time.perf_counter() - t0 < 1.0
    assert (a / ".vauban-tiny.json").stat().st_mtime_ns == stamp
    b = build_tiny_model(tmp_path / "b", "llama", hidden_size=32, seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    # other arguments rebuild the directory in place
    build_tiny_model(tmp_path / "a", "llama", hidden_size=32, seed=4)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


def test_cached_model_dir_is_named_by_arguments(tmp_path: Path) -> None:
    d1 = cached_tiny_model("gpt2", cache_dir=tmp_path, hidden_size=32)
    d2 = cached_tiny_model("gpt2", cache_dir=tmp_path, hidden_size=32)
    d3 = cached_tiny_model("gpt2", cache_dir=tmp_path, hidden_size=48)
    assert d1 == d2 != d3 and d1.parent == tmp_path.resolve()


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="'bert'"):
        build_tiny_model(tmp_path, "bert")
    with pytest.raises(ExecutorError, match="multiple of 16"):
        build_tiny_model(tmp_path, "llama", hidden_size=30)
