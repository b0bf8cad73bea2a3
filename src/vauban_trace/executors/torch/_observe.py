"""Observe: capture the outputs of requested (layer, site) modules with removable forward hooks.

:class:`ActivationCapture` registers one forward hook per requested site while it is installed
(``with capture.installed(): model(...)``) and removes them all on exit, including on error, so a
model is left exactly as it was found. Hooks keep a detached reference to the module output's
hidden state (no copy, no host transfer): the observe stage then moves each captured tensor to
the host once, to store it as an ``activation`` artifact.

Only the first call of each hook while installed is kept: the executor installs the capture
around the prompt forward pass (prefill), so activations cover the prompt positions, shape
``[batch, prompt_len, width]``. Hooks registered after the intervention hooks on the same module
see the intervened output, which is what "the hidden state at that layer" means under an
intervention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from vauban_trace.executors.torch._layers import LayerMap, SiteRef, hidden_of


class ActivationCapture:
    """Capture hidden states at ``targets`` (pairs of layer index and site name)."""

    def __init__(self, layers: LayerMap, targets: Sequence[tuple[int, str]]) -> None:
        self.layers = layers
        self.targets: list[SiteRef] = []
        self.absent: list[tuple[int, str]] = []
        for layer, site in targets:
            ref = layers.site(layer, site)
            if ref is None:
                self.absent.append((layer, site))
            else:
                self.targets.append(ref)
        self.captured: dict[tuple[int, str], torch.Tensor] = {}

    def _hook(self, ref: SiteRef) -> Any:
        key = (ref.layer, ref.site)

        def hook(module: Any, args: Any, output: Any) -> None:
            if key in self.captured:
                return
            hidden = hidden_of(output)
            if hidden is not None:
                self.captured[key] = hidden.detach()

        return hook

    @contextmanager
    def installed(self) -> Iterator[ActivationCapture]:
        handles = []
        try:
            for ref in self.targets:
                handles.append(ref.module.register_forward_hook(self._hook(ref)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def items(self) -> Iterator[tuple[SiteRef, torch.Tensor | None]]:
        """Each target with its captured tensor (``None`` when the module never ran)."""
        for ref in self.targets:
            yield ref, self.captured.get((ref.layer, ref.site))


__all__ = ["ActivationCapture"]
