"""Score: the log-likelihood of a given continuation after each prompt (the torch executor's ``score``).

:func:`score_continuations` builds ``prompt_ids + continuation_ids`` per sequence (the
continuation tokenized by the caller without special tokens), left-pads them (:mod:`._batch`),
runs one forward pass without a KV cache to keep, and reads the log-softmax (float32) at each
continuation position ``t`` from the logits at ``t - 1``. One evaluation (``mx.eval`` of the
gathered values) ends the pass. The result per sequence: the continuation's token ids, their
log-probabilities, and their sum (:class:`ContinuationScore`, the torch executor's fields).

Interventions installed for the ``score`` phase (ablate and steer on all positions) apply to this
pass too; patching and ``positions=prompt`` do not (they target the prompt pass only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace.executors.mlx._batch import forward, left_pad, log_softmax
from vauban_trace.executors.mlx._counters import EvalCounter


@dataclass(frozen=True)
class ContinuationScore:
    """Log-probabilities of one continuation's tokens after its prompt."""

    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.token_logprobs))


def score_continuations(model: Any, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                        pad_id: int, counter: EvalCounter) -> list[ContinuationScore]:
    """Log-probabilities of ``continuations[i]`` after ``prompts[i]`` (same-length lists)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    padded = left_pad(seqs, pad_id)
    width = padded.width
    logits, _ = forward(model, padded)
    logprobs = log_softmax(logits)
    gathered: list[mx.array] = []
    for row, cont in enumerate(continuations):
        start = width - len(cont)  # first continuation position
        targets = padded.ids[row, start:]
        gathered.append(mx.take_along_axis(logprobs[row, start - 1:width - 1, :], targets[:, None], axis=-1)[:, 0])
    counter.eval(*gathered)
    return [ContinuationScore(tuple(int(t) for t in cont), tuple(float(v) for v in np.array(g).tolist()))
            for cont, g in zip(continuations, gathered, strict=True)]


__all__ = ["ContinuationScore", "score_continuations"]
