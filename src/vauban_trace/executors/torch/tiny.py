"""Tiny, offline, random-initialised causal language models for demos and tests.

No weights are ever downloaded. :func:`build_tiny_model` writes a complete Hugging Face model
directory that the *real* loading code reads (``AutoModelForCausalLM.from_pretrained(dir)``,
``AutoTokenizer.from_pretrained(dir)``, ``mlx_lm.utils.load_model``):

- ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``): a random-initialised
  model of one of the families ``llama``, ``mistral``, ``qwen2``, ``gpt2`` (seeded, so the same
  arguments give the same weights), hidden size and layer count as asked;
- a byte-level BPE tokenizer trained with the ``tokenizers`` library on a few built-in sentences
  (so any text tokenizes, and common words become single tokens), wrapped in
  ``PreTrainedTokenizerFast`` with ``<s>`` (bos, prepended), ``</s>`` (eos) and ``<pad>`` tokens
  and a simple chat template;
- ``.vauban-tiny.json``: the arguments and their hash. A second call with the same arguments
  finds it and returns at once (build once); different arguments rebuild the directory.

Builds are atomic (written to a sibling temporary directory, then renamed), so concurrent test
processes never see a half-written model.

Trap handled: transformers 5 writes ``rope_parameters.rope_theta`` and no top-level
``rope_theta``; mlx-lm's llama reads only ``rope_theta`` (silently defaulting to 10000), so it is
written explicitly into ``config.json`` as well.

:func:`cached_tiny_model` picks the directory for you under ``$VAUBAN_TRACE_CACHE`` (default
``~/.cache/vauban-trace/models``), named by family and argument hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ExecutorError

FAMILIES = ("llama", "mistral", "qwen2", "gpt2")
STAMP = ".vauban-tiny.json"
BUILDER_VERSION = 1

#: Training text for the tokenizer (and a source of prompts for tests).
SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A trace records what happened during one inference request.",
    "Tokenize, prefill, forward, observe, decode, score and emit are stages of inference.",
    "Logits, log probabilities and activations are artifacts stored by their digest.",
    "Hello world! How are you today? I am fine, thank you.",
    "The model reads the prompt and predicts the next token, one step at a time.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 and 2026 appear in text too.",
    "user: What is a span? assistant: A span is one timed operation inside a trace.",
    "Synchronisation points, host to device copies and memory pressure limit scaling.",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def default_cache_dir() -> Path:
    """``$VAUBAN_TRACE_CACHE/models`` if set, else ``~/.cache/vauban-trace/models``."""
    root = os.environ.get("VAUBAN_TRACE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vauban-trace"
    return base / "models"


def _spec(family: str, hidden_size: int, num_layers: int, vocab_size: int | None, seed: int,
          overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "builder": BUILDER_VERSION,
        "family": family,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": vocab_size,
        "seed": seed,
        "overrides": overrides,
    }


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(SENTENCES) * 4, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _config(family: str, *, vocab: int, hidden: int, layers: int, tok: Any, overrides: dict[str, Any]) -> Any:
    import transformers as tf

    heads = max(1, hidden // 16)
    special = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if family == "gpt2":
        kwargs: dict[str, Any] = {
            "vocab_size": vocab, "n_embd": hidden, "n_layer": layers, "n_head": heads,
            "n_positions": 512, **special,
        }
        kwargs.update(overrides)
        return tf.GPT2Config(**kwargs)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
    kwargs = {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": hidden * 2,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2) if heads % 2 == 0 else heads,
        "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": False, **special,
    }
    if family == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    return cls(**kwargs)


def _patch_rope_theta(config_path: Path) -> None:
    data = json.loads(config_path.read_text())
    rope = data.get("rope_parameters")
    if data.get("rope_theta") is None and isinstance(rope, dict) and rope.get("rope_theta") is not None:
        data["rope_theta"] = rope["rope_theta"]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_stamp(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / STAMP).read_text())["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_tiny_model(
    directory: str | os.PathLike[str],
    family: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Build (once) a tiny random-initialised ``family`` model + tokenizer in ``directory``.

    ``vocab_size`` is the tokenizer's training target (default 512); the model's vocabulary is at
    least the tokenizer's actual size plus 16, rounded up to a multiple of 64 (tokenizer classes
    chosen by ``AutoTokenizer`` for some families add a special token on load). ``hidden_size`` must be a multiple of 16 (head size 16).
    Extra keywords override the model config (e.g. ``max_position_embeddings=128``). Returns the
    directory. Raises :class:`ExecutorError` on an unknown family or a bad size.
    """
    if family not in FAMILIES:
        raise ExecutorError(f"unknown tiny model family {family!r} (expected one of: {', '.join(FAMILIES)})")
    if hidden_size < 16 or hidden_size % 16:
        raise ExecutorError(f"hidden_size must be a positive multiple of 16, got {hidden_size}")
    if num_layers < 1:
        raise ExecutorError(f"num_layers must be >= 1, got {num_layers}")
    if vocab_size is not None and vocab_size < 300:
        raise ExecutorError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
    target = Path(directory).expanduser().resolve()
    spec = _spec(family, hidden_size, num_layers, vocab_size, seed, dict(config_overrides))
    digest = spec_hash(spec)
    if _read_stamp(target) == digest:
        return target

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tok = _train_tokenizer(vocab_size or 512)
        # room above the tokenizer: some AutoTokenizer classes (qwen2) add an unk token on load
        vocab = max(vocab_size or 0, -(-(len(tok) + 16) // 64) * 64)
        config = _config(family, vocab=vocab, hidden=hidden_size, layers=num_layers, tok=tok,
                         overrides=dict(config_overrides))
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        finally:
            torch.random.set_rng_state(state)
        model.eval()
        model.save_pretrained(tmp)
        GenerationConfig(  # type: ignore[no-untyped-call]
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            do_sample=False,
        ).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _patch_rope_theta(tmp / "config.json")
        (tmp / STAMP).write_text(json.dumps({"hash": digest, "spec": spec}, indent=2, sort_keys=True) + "\n")
        if _read_stamp(target) == digest:  # another process finished first
            return target
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _read_stamp(target) != digest:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def cached_tiny_model(
    family: str = "llama",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """:func:`build_tiny_model` into ``<cache_dir>/tiny-<family>-<hash12>`` (default cache: see
    :func:`default_cache_dir`)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    spec = _spec(family, hidden_size, num_layers, vocab_size, seed, dict(config_overrides))
    name = f"tiny-{family}-{spec_hash(spec)[:12]}"
    return build_tiny_model(
        root / name, family, hidden_size=hidden_size, num_layers=num_layers, vocab_size=vocab_size,
        seed=seed, **config_overrides,
    )


__all__ = ["CHAT_TEMPLATE", "FAMILIES", "SENTENCES", "build_tiny_model", "cached_tiny_model", "default_cache_dir"]
