"""Find the decoder layers of an mlx-lm model and capture the residual stream after them.

Discovery (:func:`find_layers`): mlx-lm models expose their block list as ``model.layers`` (a
property returning ``model.model.layers`` for Llama and Mistral, ``model.model.h`` for GPT-2, a
fresh slice ``pipeline_layers`` for Qwen2; mlx-lm's own cache builder relies on it). It is accepted when it is a list of ``nn.Module`` whose
length matches the config's layer count (``num_hidden_layers``, ``n_layer``, ``num_layers``)
when the config states one. The module path of each layer (``model.layers.3``) comes from
``named_modules()``, so artifacts name the same modules as the torch executor's; the list that
owns the layers in the module tree (found by that path) is the one the capture writes into, so a
model that slices its list on every call still runs the taps.

Capture (:class:`ResidualCapture`): mlx-lm models are plain Python: the inner model loops over
that list and calls each layer. While the capture is installed, the requested entries of the list
are replaced by a thin proxy that calls the real layer, keeps a reference to its output (the
residual stream after the layer, ``[batch, seq, width]``; no copy, no evaluation) and delegates
every attribute to it (``layer.use_sliding`` and the like keep working). The original layers are
put back on exit, also on error. Only the first call while installed is kept: the executor
installs it around the prompt pass, so activations cover the prompt positions.

Only the ``residual`` site is built; ``attn`` and ``mlp`` outputs would need hooks inside the
layer and are declared unsupported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

SITES_BUILT = ("residual",)
_MODULE: type = nn.Module  # type: ignore[attr-defined]
_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def config_layer_count(config: Mapping[str, Any]) -> int | None:
    for key in _COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class MlxLayers:
    """The decoder layer list of a model and the module path of each layer."""

    container: list[Any]  # the list the model's forward pass iterates (or slices)
    slots: tuple[int, ...]  # index of each layer in ``container``
    paths: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.slots)

    def module(self, index: int) -> Any:
        return self.container[self.slots[index]]

    @property
    def path(self) -> str:
        return self.paths[0].rsplit(".", 1)[0] if self.paths else ""


def find_layers(model: Any, config: Mapping[str, Any]) -> tuple[MlxLayers | None, str]:
    """``(MlxLayers, "")``, or ``(None, reason)`` when no layer list is found."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, list) or not layers or not all(isinstance(m, _MODULE) for m in layers):
        return None, f"{type(model).__name__} exposes no list of layer modules as .layers"
    expected = config_layer_count(config)
    if expected is not None and expected != len(layers):
        return None, f"{type(model).__name__}.layers has {len(layers)} entries, the config states {expected} layers"
    by_id = {id(m): name for name, m in model.named_modules()}
    paths = tuple(by_id.get(id(m), f"layers.{i}") for i, m in enumerate(layers))
    container = _owner_list(model, paths[0]) or layers
    slots = []
    for m in layers:
        slot = next((j for j, other in enumerate(container) if other is m), None)
        if slot is None:
            return None, f"cannot locate layer {by_id.get(id(m), '?')} in the list the model iterates"
        slots.append(slot)
    return MlxLayers(container, tuple(slots), paths), ""


def _owner_list(model: Any, first_path: str) -> list[Any] | None:
    """The list that holds the layers in the module tree (``model.layers`` of the inner model).

    ``model.layers`` may be a fresh slice on each access (Qwen2's ``pipeline_layers``); replacing
    an entry of a slice would change nothing, so the capture writes into the owning list.
    """
    owner: Any = model
    parts = first_path.split(".")[:-1]
    if not parts:
        return None
    for part in parts:
        try:
            owner = owner[part] if isinstance(owner, dict) else getattr(owner, part)
        except (KeyError, AttributeError, TypeError):
            return None
    return owner if isinstance(owner, list) else None


def _hidden(output: Any) -> mx.array | None:
    if isinstance(output, mx.array):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], mx.array):
        return output[0]
    return None


class _LayerTap:
    """Stands in for one layer in the list: calls it and keeps its first output."""

    def __init__(self, layer: Any, index: int, sink: dict[int, mx.array]) -> None:
        object.__setattr__(self, "_tap_layer", layer)
        object.__setattr__(self, "_tap_index", index)
        object.__setattr__(self, "_tap_sink", sink)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self._tap_layer(*args, **kwargs)
        hidden = _hidden(output)
        if hidden is not None and self._tap_index not in self._tap_sink:
            self._tap_sink[self._tap_index] = hidden
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tap_layer, name)


class ResidualCapture:
    """Capture the residual stream after each of ``indices`` during one forward pass."""

    def __init__(self, layers: MlxLayers, indices: Sequence[int]) -> None:
        self.layers = layers
        self.indices = list(dict.fromkeys(indices))
        self.captured: dict[int, mx.array] = {}

    @contextmanager
    def installed(self) -> Iterator[ResidualCapture]:
        container = self.layers.container
        originals = {i: container[self.layers.slots[i]] for i in self.indices}
        try:
            for i, layer in originals.items():
                container[self.layers.slots[i]] = _LayerTap(layer, i, self.captured)
            yield self
        finally:
            for i, layer in originals.items():
                container[self.layers.slots[i]] = layer

    def arrays(self) -> list[mx.array]:
        return list(self.captured.values())

    def items(self) -> Iterator[tuple[int, str, mx.array | None]]:
        """``(layer, module path, captured array or None when the layer never ran)``."""
        for i in self.indices:
            yield i, self.layers.paths[i], self.captured.get(i)


__all__ = ["SITES_BUILT", "MlxLayers", "ResidualCapture", "config_layer_count", "find_layers"]
