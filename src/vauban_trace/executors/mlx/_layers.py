"""Find the decoder layers of an mlx-lm model, their sites, and tap a site's output.

Discovery (:func:`find_layers`): mlx-lm models expose their block list as ``model.layers`` (a
property returning ``model.model.layers`` for Llama and Mistral, ``model.model.h`` for GPT-2, a
fresh slice ``pipeline_layers`` for Qwen2; mlx-lm's own cache builder relies on it). It is accepted
when it is a list of ``nn.Module`` whose length matches the config's layer count
(``num_hidden_layers``, ``n_layer``, ``num_layers``) when the config states one. The module path of
each layer (``model.layers.3``) comes from ``named_modules()``, so artifacts name the same modules
as the torch executor's; the list that owns the layers in the module tree (found by that path) is
the one the taps write into, so a model that slices its list on every call still runs them.

Sites, as in the torch executor (same names, same module paths):

- ``residual``: the layer's own output, the residual stream after the layer;
- ``attn``: the output of the layer's first child named ``self_attn``, ``attn``, ``attention`` or
  ``self_attention`` (for mlx-lm's Llama/Qwen2/Mistral blocks: the attention output after
  ``o_proj``, before the residual add, the same quantity as transformers' attention module);
- ``mlp``: the output of the first child named ``mlp``, ``feed_forward``, ``ffn`` or
  ``block_sparse_moe``.

A site missing from a layer is absent (``MlxLayers.site`` gives ``None``), never guessed.

Taps (:func:`tapped`): mlx-lm models are plain Python. The layer loop calls each entry of the
layer list, and a block calls its children through attribute access, which for an ``nn.Module``
(a ``dict``) reads the child from the module's own dict. While a tap is installed, the slot that
holds the site's module (an entry of the layer list, or the child's key in the layer's dict) holds
a thin proxy instead: it calls the real module, hands the output to the tap's function (which
may return a replacement) and delegates every other attribute (``layer.use_sliding`` keeps
working). The original is put back on exit, also on error. Taps nest: the last installed wraps the
earlier ones and sees their (possibly replaced) output; the executor installs the intervention
taps first, so the activation capture records the intervened hidden state, as in the torch
executor. Taps are installed around forward passes only, so the module tree is intact whenever
parameters are read (weight snapshots).

Capture (:class:`ActivationCapture`): keeps a reference to the first output of each requested
(layer, site) while installed (no copy, no evaluation); installed around the prompt pass, so
activations cover the prompt positions, ``[batch, prompt_len, width]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from vauban_trace.executors._interventions import SITES  # site names, in display order (shared)

SITES_BUILT = SITES
_MODULE: type = nn.Module  # type: ignore[attr-defined]
_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_CHILD_NAMES: dict[str, tuple[str, ...]] = {
    "attn": ("self_attn", "attn", "attention", "self_attention"),
    "mlp": ("mlp", "feed_forward", "ffn", "block_sparse_moe"),
}

#: A tap function: ``fn(output hidden state) -> replacement or None`` (None keeps the output).
TapFn = Callable[[mx.array], "mx.array | None"]


def _config_int(config: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def config_layer_count(config: Mapping[str, Any]) -> int | None:
    return _config_int(config, _COUNT_KEYS)


def config_hidden_size(config: Mapping[str, Any]) -> int | None:
    return _config_int(config, _WIDTH_KEYS)


@dataclass(frozen=True)
class SiteRef:
    """One tappable module: layer, site, module path and class, and the slot that holds it."""

    layer: int
    site: str
    path: str
    module_class: str
    owner: Any  # the list (residual) or the layer module (attn, mlp) holding the module
    key: int | str  # index in the list, or the child's key in the layer's dict

    def describe(self) -> dict[str, Any]:
        return {"module": self.path, "module_class": self.module_class}


@dataclass(frozen=True)
class MlxLayers:
    """The decoder layer list of a model, the module path of each layer and its sites."""

    container: list[Any]  # the list the model's forward pass iterates (or slices)
    slots: tuple[int, ...]  # index of each layer in ``container``
    paths: tuple[str, ...]
    sites: tuple[dict[str, SiteRef], ...] = ()
    hidden_size: int | None = None

    @property
    def count(self) -> int:
        return len(self.slots)

    def module(self, index: int) -> Any:
        return self.container[self.slots[index]]

    @property
    def path(self) -> str:
        return self.paths[0].rsplit(".", 1)[0] if self.paths else ""

    def site(self, layer: int, site: str) -> SiteRef | None:
        """The site ``site`` of ``layer``, or ``None`` when this model has no such module."""
        return self.sites[layer].get(site) if 0 <= layer < len(self.sites) else None

    def sites_available(self) -> tuple[str, ...]:
        """Sites present in every layer."""
        return tuple(s for s in SITES if all(s in per for per in self.sites))


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
    sites = []
    for index, (layer, slot, path) in enumerate(zip(layers, slots, paths, strict=True)):
        per = {"residual": SiteRef(index, "residual", path, type(layer).__name__, container, slot)}
        for site, names in _CHILD_NAMES.items():
            name = next((n for n in names if isinstance(layer.get(n), _MODULE)), None)
            if name is not None:
                child = layer[name]
                per[site] = SiteRef(index, site, f"{path}.{name}", type(child).__name__, layer, name)
        sites.append(per)
    return MlxLayers(container, tuple(slots), paths, tuple(sites), config_hidden_size(config)), ""


def _owner_list(model: Any, first_path: str) -> list[Any] | None:
    """The list that holds the layers in the module tree (``model.layers`` of the inner model).

    ``model.layers`` may be a fresh slice on each access (Qwen2's ``pipeline_layers``); replacing
    an entry of a slice would change nothing, so the taps write into the owning list.
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


def hidden_of(output: Any) -> mx.array | None:
    """The hidden state inside a module output (an array, or a tuple/list starting with one)."""
    if isinstance(output, mx.array):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], mx.array):
        return output[0]
    return None


def replace_hidden(output: Any, hidden: mx.array) -> Any:
    """``output`` with its hidden state replaced (same container type)."""
    if isinstance(output, mx.array):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return [hidden, *output[1:]]


class _Tap:
    """Stands in for one module in its slot: calls it, lets ``fn`` see or replace the output."""

    def __init__(self, target: Any, fn: TapFn) -> None:
        object.__setattr__(self, "_tap_target", target)
        object.__setattr__(self, "_tap_fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self._tap_target(*args, **kwargs)
        hidden = hidden_of(output)
        if hidden is None:
            return output
        new = self._tap_fn(hidden)
        return output if new is None else replace_hidden(output, new)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tap_target, name)


@contextmanager
def tapped(ref: SiteRef, fn: TapFn) -> Iterator[None]:
    """Install a tap on ``ref``'s slot for the enclosed block; the original is put back on exit."""
    original = ref.owner[ref.key]
    ref.owner[ref.key] = _Tap(original, fn)
    try:
        yield
    finally:
        ref.owner[ref.key] = original


class ActivationCapture:
    """Capture the output of each requested (layer, site) during one forward pass."""

    def __init__(self, layers: MlxLayers, targets: Sequence[tuple[int, str]]) -> None:
        self.layers = layers
        self.targets: list[SiteRef] = []
        self.absent: list[tuple[int, str]] = []
        for layer, site in dict.fromkeys(targets):
            ref = layers.site(layer, site)
            if ref is None:
                self.absent.append((layer, site))
            else:
                self.targets.append(ref)
        self.captured: dict[tuple[int, str], mx.array] = {}

    def _keep(self, key: tuple[int, str]) -> TapFn:
        def keep(hidden: mx.array) -> None:
            if key not in self.captured:
                self.captured[key] = hidden

        return keep

    @contextmanager
    def installed(self) -> Iterator[ActivationCapture]:
        with ExitStack() as stack:
            for ref in self.targets:
                stack.enter_context(tapped(ref, self._keep((ref.layer, ref.site))))
            yield self

    def arrays(self) -> list[mx.array]:
        return list(self.captured.values())

    def items(self) -> Iterator[tuple[SiteRef, mx.array | None]]:
        """Each target with its captured array (``None`` when the module never ran)."""
        for ref in self.targets:
            yield ref, self.captured.get((ref.layer, ref.site))


class ResidualCapture(ActivationCapture):
    """:class:`ActivationCapture` of the residual site of ``indices``."""

    def __init__(self, layers: MlxLayers, indices: Sequence[int]) -> None:
        super().__init__(layers, [(i, "residual") for i in indices])


__all__ = [
    "SITES",
    "SITES_BUILT",
    "ActivationCapture",
    "MlxLayers",
    "ResidualCapture",
    "SiteRef",
    "config_hidden_size",
    "config_layer_count",
    "find_layers",
    "hidden_of",
    "replace_hidden",
    "tapped",
]
