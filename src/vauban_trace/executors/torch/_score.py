"""Score: the log-likelihood of a given continuation after each prompt.

:func:`score_continuations` builds ``prompt_ids + continuation_ids`` per sequence (the
continuation tokenized without special tokens), left-pads the batch, runs one forward pass, and
reads the log-softmax at each continuation position ``t`` from the logits at ``t - 1``. The
result per sequence: the continuation's token ids, their log-probabilities, and their sum.

Interventions whose hooks are active in the ``score`` phase (ablate and steer on all positions)
apply to this pass too; patching does not (it targets the prompt pass only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vauban_trace.executors.torch._decode import position_ids_for, positions_kwargs


@dataclass(frozen=True)
class ContinuationScore:
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.token_logprobs))


def score_continuations(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_token_id: int,
    device: torch.device,
) -> list[ContinuationScore]:
    """Log-probabilities of ``continuations[i]`` after ``prompts[i]`` (same length lists)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **positions_kwargs(model, position_ids_for(mask))).logits
    logprobs = logits.float().log_softmax(-1)
    results: list[ContinuationScore] = []
    gathered: list[torch.Tensor] = []
    for row, cont in enumerate(continuations):
        start = width - len(cont)  # first continuation position
        positions = torch.arange(start - 1, width - 1, device=device)
        targets = ids[row, start:]
        gathered.append(logprobs[row, positions, :].gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    host = [g.tolist() for g in gathered]  # one transfer per sequence, after all gathers are queued
    for cont, values in zip(continuations, host, strict=True):
        results.append(ContinuationScore(tuple(int(t) for t in cont), tuple(float(v) for v in values)))
    return results


def topk_of(values: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Top-k ids and values over the last axis of the last row (the last position)."""
    flat = values.reshape(-1, values.shape[-1])[-1].float()
    k = min(k, flat.shape[-1])
    top = torch.topk(flat, k)
    return [int(i) for i in top.indices.tolist()], [float(v) for v in top.values.tolist()]


__all__ = ["ContinuationScore", "score_continuations", "topk_of"]
