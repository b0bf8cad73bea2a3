"""Interventions in the MLX executor: ablate, steer and patch, with the torch executor's semantics.

A request's ``interventions`` are contract :class:`~vauban_trace.contract.Intervention` records
(``MlxExecutor.make_request`` / ``TorchExecutor.make_request`` / the shared, torch-free
``vauban_trace.executors.parse_intervention`` build them from ``NAME:key=value,...`` specs; see
``docs/torch-executor.md``). The MLX executor applies the same three kinds, with the
same parameters, at the same sites, and records the same ``intervention_result`` artifacts:

- ``ablate`` (``direction``): ``h <- h - (h . d) d``, ``d`` the direction scaled to unit norm;
- ``steer`` (``vector``, ``alpha`` = 1, ``normalize`` = true): ``h <- h + alpha v``, ``v`` scaled
  to unit norm unless ``normalize`` is false;
- ``patch`` (``source``): ``h <- source`` on the prompt pass, ``source`` an activation artifact of
  shape ``[batch, prompt_len, width]`` fetched from the artifact store by digest (verified).

``site`` is ``residual`` (default), ``attn`` or ``mlp`` (:mod:`._layers`); ``positions`` is
``all`` (default: the prompt pass and every decode step) or ``prompt`` (patch: always prompt).
Vector references: ``sha256:``/``blake3:`` digests in the artifact store (safetensors with one
tensor, or a JSON list of numbers), ``file:PATH`` (``.npy`` or ``.safetensors``), or
``random:SEED``, which draws the very vector the torch executor draws (torch's CPU ``randn``
reproduced in numpy by :mod:`._torchrand`, equal to a few float32 ulps), so one request means the
same thing on both executors. The arithmetic runs in float32 on MLX arrays; the result is cast
back to the hidden state's dtype.

Each intervention is an MLX tap (:func:`._layers.tapped`) on its site: the tap's function gets
the module's output and returns the intervened one. The executor installs the taps around the
prompt pass (phase ``prefill``) and around the decode loop (phase ``decode``), never in between,
so the clean reference pass of the ``intervene`` stage and the weight snapshots see the model
untouched. On the prompt pass each tap records, as lazy MLX arrays evaluated with the logits
(no extra evaluation), the mean L2 norm of the hidden state before and after it acts, the largest
absolute change and, for ablate/steer, the mean projection onto the unit direction before and
after; :meth:`InterventionTap.effect` reads them in the ``intervene`` stage. ``calls`` counts
how often a tap acted per phase.

Errors (:class:`ExecutorError`, with the torch executor's wording): an unknown intervention name,
a layer out of range, a site the layer does not have, an unreadable or tampered blob, a vector that
is not of the model width, a zero or non-finite vector, a patch source of the wrong shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Intervention
from vauban_trace.executors._interventions import (
    NAMES,
    format_intervention,
    load_array,
    locate,
    random_seed,
    reference_of,
)
from vauban_trace.executors.mlx._layers import MlxLayers, SiteRef, tapped
from vauban_trace.executors.mlx._torchrand import torch_cpu_randn


@dataclass
class ResolvedIntervention:
    """An intervention with its arrays fetched and checked against the model."""

    spec: Intervention
    ref: SiteRef
    vector: mx.array | None = None  # unit (or raw) direction, float32
    source: mx.array | None = None  # patch source, float32
    vector_norm: float | None = None

    @property
    def site(self) -> str:
        return self.ref.site

    @property
    def site_path(self) -> str:
        return self.ref.path


def _random_vector(text: str, width: int | None, where: str) -> np.ndarray[Any, Any]:
    if width is None:
        raise ExecutorError(f"{where}: random directions need the model width (config has none)")
    return torch_cpu_randn(random_seed(text, where), width)


def resolve(spec: Intervention, layers: MlxLayers, store: Any | None) -> ResolvedIntervention:
    """Check ``spec`` against the model and fetch its vector or source array."""
    where, _site, ref = locate(spec, layers)
    key, text = reference_of(spec, where)
    width = layers.hidden_size
    if spec.name == "patch":
        return ResolvedIntervention(spec, ref, source=mx.array(load_array(text, store, where=where)))
    if text.startswith("random:"):
        vec = _random_vector(text, width, where)
    else:
        vec = load_array(text, store, where=where)
    if vec.ndim != 1 or (width is not None and vec.shape[0] != width):
        raise ExecutorError(
            f"{where}: {key} must be a vector of the model width {width}, got shape {list(vec.shape)}"
        )
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm) or norm == 0.0:
        raise ExecutorError(f"{where}: {key} has zero or non-finite norm")
    if spec.name == "ablate" or bool(spec.params.get("normalize", True)):
        vec = (vec / np.float32(norm)).astype(np.float32)
    return ResolvedIntervention(spec, ref, vector=mx.array(vec), vector_norm=norm)


def _mean_norm(h: mx.array) -> mx.array:
    return mx.mean(mx.sqrt(mx.sum(h * h, axis=-1)))


@dataclass
class InterventionTap:
    """The tap function of one intervention; measures its own effect on the prompt pass."""

    item: ResolvedIntervention
    controller: InterventionSet
    stats: dict[str, mx.array] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def __call__(self, h: mx.array) -> mx.array | None:
        phase = self.controller.phase
        if phase is None:
            return None
        spec = self.item.spec
        positions = str(spec.params.get("positions", "all"))
        if phase != "prefill" and (positions == "prompt" or spec.name == "patch"):
            return None
        self.calls[phase] = self.calls.get(phase, 0) + 1
        hf = h.astype(mx.float32)
        if spec.name == "patch":
            src = self.item.source
            assert src is not None
            if tuple(src.shape) != tuple(hf.shape):
                raise ExecutorError(
                    f"patch at layer {spec.layer_index}: source shape {list(src.shape)} does not match "
                    f"the hidden state {list(hf.shape)}"
                )
            new = src
        else:
            vec = self.item.vector
            assert vec is not None
            if spec.name == "ablate":
                new = hf - mx.expand_dims(hf @ vec, -1) * vec
            else:
                new = hf + float(str(spec.params.get("alpha", 1.0))) * vec
        if phase == "prefill" and "norm_before" not in self.stats:
            self.stats["norm_before"] = _mean_norm(hf)
            self.stats["norm_after"] = _mean_norm(new)
            self.stats["max_abs_change"] = mx.max(mx.abs(new - hf))
            if self.item.vector is not None:
                unit = self.item.vector / mx.sqrt(mx.sum(self.item.vector * self.item.vector))
                self.stats["projection_before"] = mx.mean(hf @ unit)
                self.stats["projection_after"] = mx.mean(new @ unit)
        return new.astype(h.dtype)

    def effect(self) -> dict[str, Any]:
        """Host-side numbers measured on the prompt pass (already evaluated with the logits)."""
        out: dict[str, Any] = {k: float(np.array(v)) for k, v in self.stats.items()}
        if "norm_before" in out:
            out["norm_change"] = out["norm_after"] - out["norm_before"]
        out["calls"] = dict(self.calls)
        return out


class InterventionSet:
    """The taps of a request's interventions; ``installed(phase)`` applies them to the enclosed passes.

    ``phase`` is ``"prefill"`` (the prompt pass) or ``"decode"`` (generated positions). Outside
    ``installed`` the model is untouched (the clean reference pass). Taps of the same site apply
    in request order, each seeing the previous one's output.
    """

    def __init__(self, items: Sequence[ResolvedIntervention]) -> None:
        self.items = list(items)
        self.phase: str | None = None
        self.hooks = [InterventionTap(item, self) for item in self.items]

    @contextmanager
    def installed(self, phase: str) -> Iterator[InterventionSet]:
        with ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(tapped(hook.item.ref, hook))
            self.phase = phase
            try:
                yield self
            finally:
                self.phase = None

    def arrays(self) -> list[mx.array]:
        """The prompt-pass measurements, to evaluate with the prompt pass's logits."""
        return [v for hook in self.hooks for v in hook.stats.values()]


__all__ = [
    "NAMES",
    "InterventionSet",
    "InterventionTap",
    "ResolvedIntervention",
    "format_intervention",
    "load_array",
    "resolve",
]
