"""Several prompts in one MLX request: left padding and masked forward passes.

The torch executor's convention, reproduced on mlx-lm models:

- **Padding**: prompts are left-padded with the pad id to the longest prompt (``width``), so the
  last position of every row is a real token; ``left_padding[row] = width - len(prompt)``.
- **Masking and positions**: a batch of more than one prompt runs with one mlx-lm
  ``BatchKVCache(left_padding)`` per layer. Its mask hides the padded keys from every query, and
  its per-row offset starts at ``-left_padding``, so RoPE numbers the real tokens of each row
  from 0, as transformers does with ``position_ids`` computed from the attention mask. Hidden
  states and logits *at padded positions* are computed but meaningless in both frameworks (they
  differ between them); those of real positions agree within float32 rounding.
- **One prompt** runs as before: no padding, mlx-lm's plain ``KVCache`` (or no cache at all when
  nothing is generated).
- **Decoding** (:mod:`._decode`): each row stops on its own; stopped rows are fed the pad id
  while the others go on (torch's rule).

Batches need a model whose mlx-lm cache is the plain ``KVCache`` in every layer (Llama, Qwen2,
Mistral without sliding layers...); :func:`check_batchable` refuses others (rotating, quantized
or state-space caches) with an :class:`ExecutorError` before the root span opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from vauban_trace._exceptions import ExecutorError


@dataclass(frozen=True)
class Padded:
    """Left-padded input ids ``[batch, width]`` and each row's padding."""

    ids: mx.array
    left_padding: tuple[int, ...]

    @property
    def batch(self) -> int:
        return len(self.left_padding)

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> Padded:
    """Rows of ids left-padded with ``pad_id`` to the longest one."""
    width = max(len(r) for r in rows)
    padding = tuple(width - len(r) for r in rows)
    data = [[pad_id] * p + [int(t) for t in r] for p, r in zip(padding, rows, strict=True)]
    return Padded(mx.array(data, dtype=mx.int32), padding)


def check_batchable(model: Any, batch: int) -> None:
    """Refuse a batch on a model whose cache is not the plain ``KVCache`` in every layer."""
    if batch <= 1:
        return
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    kinds = sorted({type(c).__name__ for c in make_prompt_cache(model) if type(c) is not KVCache})
    if kinds:
        raise ExecutorError(
            f"batches of several prompts need mlx-lm's plain KVCache in every layer; this model uses "
            f"{', '.join(kinds)} (run its prompts one request each)"
        )


def new_cache(model: Any, padded: Padded) -> list[Any]:
    """A fresh prompt cache: mlx-lm's own for one prompt, ``BatchKVCache`` per layer for a batch."""
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    if padded.batch == 1:
        return list(make_prompt_cache(model))
    return [BatchKVCache(list(padded.left_padding)) for _ in make_prompt_cache(model)]


def forward(model: Any, padded: Padded, *, keep_cache: bool = False) -> tuple[mx.array, list[Any] | None]:
    """The (lazy) logits ``[batch, width, vocab]`` of ``padded``, and its cache when ``keep_cache``.

    One prompt without a cache runs as ``model(ids)``; anything else runs with :func:`new_cache`
    (a batch needs it for the padding mask and the positions).
    """
    if padded.batch == 1 and not keep_cache:
        return model(padded.ids), None
    cache = new_cache(model, padded)
    return model(padded.ids, cache=cache), (cache if keep_cache else None)


def log_softmax(x: mx.array) -> mx.array:
    """Log-softmax over the last axis, in float32."""
    x = x.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


__all__ = ["Padded", "check_batchable", "forward", "left_pad", "log_softmax", "new_cache"]
