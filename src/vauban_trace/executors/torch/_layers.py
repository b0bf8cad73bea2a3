"""Find the transformer layers of a model, generically, and the sites that can be hooked in each.

Transformers models keep their blocks in one ``nn.ModuleList`` (``model.layers`` for Llama,
Qwen2 and Mistral, ``transformer.h`` for GPT-2, ``encoder.layer`` for BERT). Rather than keep a
table of per-family paths, :func:`find_layers` looks for it:

1. every ``nn.ModuleList`` whose children all have the same class and own parameters is a
   candidate;
2. when the config states a layer count (``num_hidden_layers``, ``n_layer``, ``num_layers``), only
   candidates of exactly that length are kept;
3. among those, the shallowest module path wins (ties: the longest list, then the first found).

Inside each layer three *sites* can be observed or intervened on:

- ``residual``: the layer's own output, i.e. the residual stream after the layer (always present);
- ``attn``: the output of the first child named ``self_attn``, ``attn``, ``attention`` or
  ``self_attention`` (for BERT this module already adds the residual and applies LayerNorm: the
  module path and class are recorded with every artifact so the meaning stays visible);
- ``mlp``: the output of the first child named ``mlp``, ``feed_forward``, ``ffn`` or
  ``block_sparse_moe`` (BERT has none: its feed-forward is split across ``intermediate`` and
  ``output``, and the mlp site is then reported as absent, not guessed).

A model in which no layer list can be found gets ``None`` from :func:`find_layers` plus the reason,
and the executor declares activations and interventions unsupported instead of failing.

Hook outputs come in three shapes: a tensor, a tuple whose first element is the hidden state, or a
``ModelOutput``. :func:`hidden_of` and :func:`replace_hidden` read and rebuild all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vauban_trace.executors._interventions import SITES  # site names, in display order

_ATTN_NAMES: tuple[str, ...] = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES: tuple[str, ...] = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_COUNT_KEYS: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class SiteRef:
    """One hookable module: which layer, which site, its module path and class name."""

    layer: int
    site: str
    path: str
    module_class: str
    module: nn.Module

    def describe(self) -> dict[str, Any]:
        return {"module": self.path, "module_class": self.module_class}


@dataclass(frozen=True)
class LayerMap:
    """The layer list of a model and its hookable sites."""

    path: str
    layers: tuple[nn.Module, ...]
    sites: tuple[dict[str, SiteRef], ...]
    hidden_size: int | None

    @property
    def count(self) -> int:
        return len(self.layers)

    def site(self, layer: int, site: str) -> SiteRef | None:
        """The site ``site`` of ``layer``, or ``None`` when this model has no such module."""
        return self.sites[layer].get(site)

    def sites_available(self) -> tuple[str, ...]:
        """Sites present in every layer."""
        return tuple(s for s in SITES if all(s in per for per in self.sites))


def config_layer_count(config: Any) -> int | None:
    """The layer count stated by a (text) config, if any."""
    cfg = config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            cfg = getter()
        except Exception:
            cfg = config
    for key in _COUNT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def config_hidden_size(config: Any) -> int | None:
    cfg = config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            cfg = getter()
        except Exception:
            cfg = config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _homogeneous(mlist: nn.ModuleList) -> bool:
    children = list(mlist)
    if not children:
        return False
    cls = type(children[0])
    return all(type(c) is cls for c in children) and any(True for _ in children[0].parameters())


def _first_child(layer: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def find_layers(model: nn.Module) -> tuple[LayerMap | None, str]:
    """Locate the layer list of ``model``: ``(LayerMap, "")`` or ``(None, reason)``."""
    config = getattr(model, "config", None)
    expected = config_layer_count(config) if config is not None else None
    candidates: list[tuple[str, nn.ModuleList]] = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and _homogeneous(mod)
    ]
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        if not matching:
            return None, (
                f"no list of {expected} identical layers found in {type(model).__name__} "
                f"(config states {expected} layers)"
            )
        candidates = matching
    if not candidates:
        return None, f"no list of identical layers found in {type(model).__name__}"
    candidates.sort(key=lambda c: (c[0].count("."), -len(c[1])))
    path, mlist = candidates[0]
    sites: list[dict[str, SiteRef]] = []
    for index, layer in enumerate(mlist):
        prefix = f"{path}.{index}" if path else str(index)
        per: dict[str, SiteRef] = {
            "residual": SiteRef(index, "residual", prefix, type(layer).__name__, layer)
        }
        for site, names in (("attn", _ATTN_NAMES), ("mlp", _MLP_NAMES)):
            found = _first_child(layer, names)
            if found is not None:
                child_name, child = found
                per[site] = SiteRef(index, site, f"{prefix}.{child_name}", type(child).__name__, child)
        sites.append(per)
    hidden = config_hidden_size(config) if config is not None else None
    return LayerMap(path, tuple(mlist), tuple(sites), hidden), ""


def hidden_of(output: Any) -> torch.Tensor | None:
    """The hidden-state tensor inside a module output (tensor, tuple/list, or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    to_tuple = getattr(output, "to_tuple", None)
    if callable(to_tuple):
        items = to_tuple()
        if items and isinstance(items[0], torch.Tensor):
            return items[0]
    return None


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden state replaced by ``hidden`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    keys = list(output.keys()) if hasattr(output, "keys") else []
    if keys:
        output[keys[0]] = hidden
        return output
    raise TypeError(f"cannot replace the hidden state inside a {type(output).__name__}")


__all__ = [
    "SITES",
    "LayerMap",
    "SiteRef",
    "config_hidden_size",
    "config_layer_count",
    "find_layers",
    "hidden_of",
    "replace_hidden",
]
