"""Sampling the next token as the torch executor does, without torch: same filters, same draws.

The torch executor's ``_select`` (``do_sample=True``) works on the last logits ``[batch, vocab]``:

1. ``scores = logits.float() / max(temperature, 1e-6)``;
2. top-k (``0 < top_k < vocab``): scores below the k-th largest become ``-inf`` (ties with the
   k-th value are kept);
3. top-p (``0 < top_p < 1``): scores sorted ascending, their softmax summed cumulatively, and
   the tokens whose cumulative probability is ``<= 1 - top_p`` dropped, the most likely token
   always kept (torch's CPU ``cumsum`` accumulates float32 in double: so does this one);
4. ``probs = softmax(scores)``, then one ``torch.multinomial(probs, 1, generator=gen)`` per step
   with a CPU generator seeded with ``seed``: ``argmax(probs / q)`` over exponential draws ``q``.

:class:`Sampler` runs the same steps in numpy on the host, with the draws of
:class:`._torchrand.TorchCpuGenerator` (bit-identical to torch's for the same seed). So, given
the same logits, it picks the same token as the torch executor on the CPU, and the generator
advances by the same ``2 * batch * vocab`` words per step, stopped rows included. The logits
of the two frameworks differ by float32 rounding (about 1e-6) and so do the softmaxes (a few
ulps), so a token can only differ where two candidates of ``probs / q`` are that close; the
tests measured none (see docs/mlx-executor.md). The torch executor on a CUDA device draws
from CUDA's generator instead: those tokens are not reproduced.

A seeded run is reproducible; ``seed=None`` draws from the operating system's entropy.
Probabilities that are not finite (NaN logits) raise :class:`ExecutorError` with torch's words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vauban_trace._exceptions import ExecutorError
from vauban_trace.executors.mlx._torchrand import TorchCpuGenerator

Array = np.ndarray[Any, Any]


def _softmax(scores: Array) -> Array:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: Array = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def filter_scores(logits: Array, temperature: float, top_k: int | None, top_p: float | None) -> Array:
    """Steps 1-3 of the module doc: float32 scores, ``-inf`` where top-k / top-p drop a token."""
    scores: Array = np.asarray(logits, dtype=np.float32) / np.float32(max(temperature, 1e-6))
    vocab = scores.shape[-1]
    if top_k is not None and 0 < top_k < vocab:
        kth = np.partition(scores, vocab - top_k, axis=-1)[..., vocab - top_k:vocab - top_k + 1]
        scores = np.where(scores < kth, np.float32(-np.inf), scores)
    if top_p is not None and 0.0 < top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")
        ordered = np.take_along_axis(scores, order, axis=-1)
        cumulative = np.cumsum(_softmax(ordered), axis=-1, dtype=np.float64).astype(np.float32)
        drop_sorted = cumulative <= np.float32(1.0 - top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        scores = np.where(drop, np.float32(-np.inf), scores)
    return scores


def probabilities(logits: Array, temperature: float, top_k: int | None, top_p: float | None) -> Array:
    """Step 4's ``probs``: the softmax of :func:`filter_scores` (zero where a filter dropped a token)."""
    return _softmax(filter_scores(logits, temperature, top_k, top_p))


class Sampler:
    """Next-token draws with the torch executor's filters and its CPU generator (see module doc)."""

    def __init__(self, *, seed: int | None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = TorchCpuGenerator(seed)

    def draw(self, probs: Array) -> Array:
        """One id per row of ``probs`` ``[batch, vocab]``: ``argmax(probs / exponential)``."""
        if not (np.isfinite(probs).all() and (probs >= 0).all()):
            raise ExecutorError("probability tensor contains either `inf`, `nan` or element < 0")
        race = probs / self.generator.exponential(tuple(probs.shape))
        ids: Array = np.argmax(race, axis=-1)
        return ids

    def select(self, logits: Array) -> Array:
        """Next ids ``[batch]`` from last-position logits ``[batch, vocab]`` (host numpy)."""
        return self.draw(probabilities(logits, self.temperature, self.top_k, self.top_p))


__all__ = ["Sampler", "filter_scores", "probabilities"]
