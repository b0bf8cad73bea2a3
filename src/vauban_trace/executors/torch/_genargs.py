"""What ``instrument_model`` reads off a transformers model and a ``generate`` call.

``model_name`` (the ``gen_ai.request.model`` of a model: a local path reduced to its last part),
the input tensor of a call (``_first_tensor``), the device it runs on (``_model_device``), and
generation settings as ``generate`` would resolve them: call keywords first, then the call's
``generation_config``, then the model's (``_gen_setting``, ``_eos_ids``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch


def model_name(model: Any) -> str:
    """``gen_ai.request.model`` for a transformers model (a local path reduced to its last part)."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or ""
    name = str(name)
    if name and (os.path.isabs(name) or os.path.isdir(name)):
        name = os.path.basename(os.path.normpath(name))
    if not name:
        name = str(getattr(config, "model_type", None) or type(model).__name__)
    return name


def _first_tensor(args: Sequence[Any], kwargs: dict[str, Any], *names: str) -> torch.Tensor | None:
    for key in names:
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return None


def _model_device(model: Any, ids: torch.Tensor | None) -> torch.device:
    if ids is not None:
        return ids.device
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        found: torch.device = next(model.parameters()).device
        return found
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _gen_setting(model: Any, kwargs: dict[str, Any], key: str) -> Any:
    if key in kwargs:
        return kwargs[key]
    cfg = kwargs.get("generation_config")
    if cfg is not None and getattr(cfg, key, None) is not None:
        return getattr(cfg, key)
    if key == "max_new_tokens":
        cfg = getattr(model, "generation_config", None)
        return getattr(cfg, key, None) if cfg is not None else None
    return None


def _eos_ids(model: Any, kwargs: dict[str, Any]) -> set[int]:
    value = _gen_setting(model, kwargs, "eos_token_id")
    if value is None:
        cfg = getattr(model, "generation_config", None)
        value = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if value is None:
        return set()
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}


__all__ = ["model_name"]
