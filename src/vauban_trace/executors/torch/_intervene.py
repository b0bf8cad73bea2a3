"""Interventions: directional ablation, additive steering and activation patching, as forward hooks.

Spec syntax (CLI ``--intervene SPEC``, API :func:`parse_intervention`)::

    SPEC  := NAME ":" PARAM ("," PARAM)*
    PARAM := KEY "=" VALUE

    ablate:layer=L,direction=REF[,site=S][,positions=P]
    steer:layer=L,vector=REF[,alpha=A][,normalize=true|false][,site=S][,positions=P]
    patch:layer=L,source=DIGEST[,site=S][,positions=prompt]

    REF    := sha256:<hex> | blake3:<hex>    a blob in the artifact store (verified on read):
                                             safetensors (one tensor) or a JSON list of numbers
            | random:SEED                    a unit Gaussian direction drawn on the CPU with SEED
                                             (0 .. 2**64 - 1)
            | file:PATH                      a .safetensors (one tensor) or .npy file (no ',' in PATH)
    S      := residual (default) | attn | mlp
    P      := all (default: prompt and generated positions) | prompt

What each does to the hidden state ``h`` (last axis = model width) of site ``S`` in layer ``L``:

- ``ablate``: ``h <- h - (h . d) d`` with ``d`` the direction scaled to unit norm, so the
  projection of ``h`` onto ``d`` becomes 0 at that site;
- ``steer``: ``h <- h + alpha * v`` with ``v`` scaled to unit norm (``normalize=false`` keeps
  ``v`` as given), so the projection onto ``v`` grows by ``alpha``;
- ``patch``: ``h <- source`` on the prompt positions, ``source`` being an activation artifact
  of shape ``[batch, prompt_len, width]`` (as the observe stage records them), fetched from the
  artifact store by digest and verified. Patching applies to the prompt forward pass only.

Parsing errors and vectors of the wrong size raise :class:`ExecutorError` naming the problem.
The framework-free half (parsing, formatting, seeds, vector references) lives in
:mod:`vauban_trace.executors._interventions`, shared with the MLX executor.

Each hook measures, on the prompt forward pass, the mean L2 norm of the hidden state before and
after it acts and, for ablate/steer, the mean projection onto the unit direction before and after.
These stay on the device until :meth:`InterventionHook.effect` reads them (once, in the intervene
stage), so the hooks add no host synchronisation to the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Intervention
from vauban_trace.executors._interventions import (
    NAMES,
    format_intervention,
    load_array,
    locate,
    parse_intervention,
    random_seed,
    reference_of,
)
from vauban_trace.executors.torch._layers import LayerMap, hidden_of, replace_hidden


@dataclass
class ResolvedIntervention:
    """An intervention with its tensors fetched and checked against the model."""

    spec: Intervention
    site_path: str
    vector: torch.Tensor | None = None  # unit (or raw) direction, float32 on the device
    source: torch.Tensor | None = None  # patch source, float32 on the device
    vector_norm: float | None = None

    @property
    def site(self) -> str:
        return str(self.spec.params.get("site", "residual"))


def resolve(
    spec: Intervention,
    layers: LayerMap,
    store: Any | None,
    device: torch.device,
    batch_shape: tuple[int, int] | None,
) -> ResolvedIntervention:
    """Check ``spec`` against the model and fetch its vector or source tensor."""
    where, site, ref = locate(spec, layers)
    key, text = reference_of(spec, where)
    width = layers.hidden_size
    if spec.name == "patch":
        array = load_array(text, store, where=where)
        if batch_shape is not None and width is not None and array.shape != (*batch_shape, width):
            raise ExecutorError(
                f"{where}: source has shape {list(array.shape)} but this request's {site} hidden "
                f"state has shape {[*batch_shape, width]}"
            )
        return ResolvedIntervention(spec, ref.path, source=torch.from_numpy(array.copy()).to(device))
    if text.startswith("random:"):
        if width is None:
            raise ExecutorError(f"{where}: random directions need the model width (config has none)")
        gen = torch.Generator(device="cpu").manual_seed(random_seed(text, where))
        vec = torch.randn(width, generator=gen, dtype=torch.float32)
    else:
        vec = torch.from_numpy(load_array(text, store, where=where).copy())
    if vec.dim() != 1 or (width is not None and vec.shape[0] != width):
        raise ExecutorError(
            f"{where}: {key} must be a vector of the model width {width}, got shape {list(vec.shape)}"
        )
    norm = float(vec.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ExecutorError(f"{where}: {key} has zero or non-finite norm")
    if spec.name == "ablate" or bool(spec.params.get("normalize", True)):
        vec = vec / norm
    return ResolvedIntervention(spec, ref.path, vector=vec.to(device), vector_norm=norm)


@dataclass
class InterventionHook:
    """A forward hook applying one intervention; measures its own effect on the prompt pass."""

    item: ResolvedIntervention
    controller: InterventionSet
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def __call__(self, module: Any, args: Any, output: Any) -> Any:
        phase = self.controller.phase
        if phase is None:
            return None
        h = hidden_of(output)
        if h is None:
            return None
        spec = self.item.spec
        positions = str(spec.params.get("positions", "all"))
        if phase != "prefill" and (positions == "prompt" or spec.name == "patch"):
            return None
        self.calls[phase] = self.calls.get(phase, 0) + 1
        hf = h.float()
        if spec.name == "patch":
            src = self.item.source
            assert src is not None
            if src.shape != hf.shape:
                raise ExecutorError(
                    f"patch at layer {spec.layer_index}: source shape {list(src.shape)} does not match "
                    f"the hidden state {list(hf.shape)}"
                )
            new = src
        else:
            vec = self.item.vector
            assert vec is not None
            if spec.name == "ablate":
                new = hf - (hf @ vec).unsqueeze(-1) * vec
            else:
                new = hf + float(spec.params.get("alpha", 1.0)) * vec
        if phase == "prefill" and "norm_before" not in self.stats:
            self.stats["norm_before"] = hf.norm(dim=-1).mean()
            self.stats["norm_after"] = new.norm(dim=-1).mean()
            self.stats["max_abs_change"] = (new - hf).abs().max()
            if self.item.vector is not None:
                unit = self.item.vector / self.item.vector.norm()
                self.stats["projection_before"] = (hf @ unit).mean()
                self.stats["projection_after"] = (new @ unit).mean()
        return replace_hidden(output, new.to(h.dtype))

    def effect(self) -> dict[str, Any]:
        """Host-side numbers measured on the prompt forward pass (one read of a few scalars)."""
        out: dict[str, Any] = {k: float(v.item()) for k, v in self.stats.items()}
        if "norm_before" in out:
            out["norm_change"] = out["norm_after"] - out["norm_before"]
        out["calls"] = dict(self.calls)
        return out


class InterventionSet:
    """Registers the hooks of several interventions; ``phase`` switches them on and off.

    ``phase`` is ``None`` (hooks pass through: the clean reference run), ``"prefill"`` (the
    prompt forward pass), ``"decode"`` (generated positions) or ``"score"``.
    """

    def __init__(self, items: Sequence[ResolvedIntervention], layers: LayerMap) -> None:
        self.items = list(items)
        self.layers = layers
        self.phase: str | None = None
        self.hooks: list[InterventionHook] = []

    @contextmanager
    def installed(self) -> Iterator[InterventionSet]:
        handles = []
        try:
            for item in self.items:
                hook = InterventionHook(item, self)
                ref = self.layers.site(item.spec.layer_index, item.site)
                assert ref is not None
                handles.append(ref.module.register_forward_hook(hook))
                self.hooks.append(hook)
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Run the enclosed forward passes without interventions (the clean reference)."""
        saved = self.phase
        self.phase = None
        try:
            yield
        finally:
            self.phase = saved


__all__ = [
    "NAMES",
    "InterventionHook",
    "InterventionSet",
    "ResolvedIntervention",
    "format_intervention",
    "load_array",
    "parse_intervention",
    "resolve",
]
