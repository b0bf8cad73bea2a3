"""Load a transformers model and tokenizer honestly: device, dtype, and what the head really is.

:func:`inspect_source` checks the source before anything heavy happens (a missing directory or an
unreadable config is an :class:`ExecutorError` naming the path), and decides which class to load:

- a causal language model when the config's ``architectures`` name one (an ``*ForCausalLM`` /
  ``*LMHeadModel`` class, or any class of transformers' causal-LM mapping), or, when the config
  lists no architecture, when its ``model_type`` has a causal-LM class and the config is not an
  encoder (``is_decoder`` false with a non-causal architecture);
- otherwise the bare model (``AutoModel``): an encoder such as BERT/MiniLM. Loading such a
  checkpoint with ``AutoModelForCausalLM`` would *succeed* with a randomly initialised head, so
  the executor never does that: the model has no language-model head and logits are unsupported.

:func:`load` then loads weights (``local_files_only`` for directories: nothing is downloaded;
hub ids are passed to transformers as they are, for users with network), records which weights
the checkpoint lacked, and declares the head untrusted when output-embedding weights were missing
(randomly initialised) and not tied to the input embeddings.

Devices: ``cpu``, ``cuda``, ``cuda:N``, ``mps``; an unavailable device is an error naming it.
Dtypes: ``float32``, ``float16``, ``bfloat16``, ``auto`` (the checkpoint's), or a ``torch.dtype``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vauban_trace._exceptions import ExecutorError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A checked ``torch.device``; :class:`ExecutorError` when unknown or unavailable here."""
    text = "cpu" if device is None else str(device)
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ExecutorError(f"unknown device {text!r} (expected cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ExecutorError(f"device {text!r} is not available: torch.cuda.is_available() is False")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ExecutorError(f"device {text!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ExecutorError(f"device {text!r} is not available: torch.backends.mps.is_available() is False")
    elif dev.type != "cpu":
        raise ExecutorError(f"unsupported device {text!r} (expected cpu, cuda, cuda:N or mps)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``None`` (transformers' default), ``"auto"``, or a floating ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    low = str(dtype).strip().lower().removeprefix("torch.")
    if low == "auto":
        return "auto"
    if low not in _DTYPES:
        raise ExecutorError(f"unknown dtype {dtype!r} (expected float32, float16, bfloat16 or auto)")
    return _DTYPES[low]


@dataclass(frozen=True)
class Source:
    """What :func:`inspect_source` learned: where the model is, and which class to load."""

    location: str
    local: bool
    config: Any
    causal_lm: bool
    name: str


def _causal_architecture_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def is_causal_config(config: Any) -> bool:
    """Whether the config describes a causal language model (see the module doc)."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        known = _causal_architecture_names()
        return any(a in known or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    # encoder families (bert, roberta...) have a causal class that is only valid with is_decoder
    return bool(getattr(config, "is_decoder", True)) or config.model_type not in _ENCODER_TYPES


_ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "rembert"})


def inspect_source(path: str | os.PathLike[str]) -> Source:
    """Check that ``path`` is a model directory (or a hub id) and read its config."""
    text = os.fspath(path)
    if not text:
        raise ExecutorError("model path is empty")
    p = Path(text).expanduser()
    local = p.exists()
    if local and not p.is_dir():
        raise ExecutorError(f"model path {text!r} is not a directory")
    if not local and not _HUB_ID.match(text):
        raise ExecutorError(f"model directory {text!r} does not exist")
    location = str(p.resolve()) if local else text
    if local and not (p / "config.json").is_file():
        raise ExecutorError(f"model directory {text!r} has no config.json")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, local_files_only=local)
    except Exception as exc:
        raise ExecutorError(f"cannot read the model config of {text!r}: {type(exc).__name__}: {exc}") from exc
    name = p.resolve().name if local else text
    return Source(location, local, config, is_causal_config(config), name)


@dataclass
class Loaded:
    """A loaded model with what is known about it."""

    model: Any
    tokenizer: Any
    causal_lm: bool
    head_trusted: bool
    head_note: str = ""
    missing_weights: tuple[str, ...] = ()
    load_notes: dict[str, Any] = field(default_factory=dict)


def _module_path(model: torch.nn.Module, target: torch.nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, mod in model.named_modules():
        if mod is target:
            return str(name)
    return None


def head_status(model: Any, missing: list[str]) -> tuple[bool, str]:
    """Whether the output head's weights came from the checkpoint (or are tied to ones that did)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        return False, f"{type(model).__name__} has no language-model head"
    path = _module_path(model, head)
    head_missing = [k for k in missing if path and (k == path or k.startswith(path + "."))]
    if not head_missing:
        return True, ""
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head_w = getattr(head, "weight", None)
    in_w = getattr(inputs, "weight", None)
    tied = head_w is not None and in_w is not None and head_w.data_ptr() == in_w.data_ptr()
    if tied and all(k.endswith("weight") for k in head_missing):
        return True, ""
    return False, (
        f"the checkpoint lacks the language-model head weights ({', '.join(head_missing)}): "
        "they would be random, so logits are not emitted"
    )


def load(source: Source, device: torch.device, dtype: torch.dtype | str | None) -> Loaded:
    """Load weights and tokenizer of ``source`` onto ``device``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if source.causal_lm else AutoModel
    kwargs: dict[str, Any] = {"local_files_only": source.local, "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        loaded: Any = cls.from_pretrained(source.location, **kwargs)
        model, info = loaded
    except Exception as exc:
        raise ExecutorError(f"cannot load the model in {source.location!r}: {type(exc).__name__}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=source.local)
    except Exception as exc:
        raise ExecutorError(
            f"cannot load the tokenizer in {source.location!r}: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    model.to(device)
    missing = sorted(str(k) for k in (info.get("missing_keys") or []))
    if source.causal_lm:
        trusted, note = head_status(model, missing)
    else:
        trusted, note = False, f"{type(model).__name__} is an encoder without a language-model head"
    notes: dict[str, Any] = {"class": type(model).__name__, "missing_weights": len(missing)}
    return Loaded(model, tokenizer, source.causal_lm, trusted, note, tuple(missing), notes)


def wrap_loaded(model: Any, tokenizer: Any) -> Loaded:
    """Describe a model the caller loaded (no checkpoint information: the head is trusted if present)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    config = getattr(model, "config", None)
    causal = head is not None and config is not None and is_causal_config(config)
    note = "" if causal else f"{type(model).__name__} has no language-model head"
    return Loaded(model, tokenizer, causal, causal, note, (), {"class": type(model).__name__})


__all__ = [
    "Loaded",
    "Source",
    "head_status",
    "inspect_source",
    "is_causal_config",
    "load",
    "resolve_device",
    "resolve_dtype",
    "wrap_loaded",
]
