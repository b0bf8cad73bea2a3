"""Several prompts in one MLX request: left padding, masked forward passes, per-row greedy decoding.

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
- **Decoding** (:func:`greedy`): the argmax of each row's last logits; a row stops at an
  end-of-sequence id (the token is kept) or after ``max_new_tokens`` tokens; stopped rows are fed
  the pad id while the others go on (torch's rule, so the chosen-token logprobs of a stopped row
  are those of the pad id, as there). The loop ends when every row has stopped.

Batches need a model whose mlx-lm cache is the plain ``KVCache`` in every layer (Llama, Qwen2,
Mistral without sliding layers...); :func:`check_batchable` refuses others (rotating, quantized
or state-space caches) with an :class:`ExecutorError` before the root span opens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from vauban_trace._exceptions import ExecutorError
from vauban_trace.executors.mlx._counters import EvalCounter

STOP_EOS, STOP_LENGTH = "eos", "max_new_tokens"


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


@dataclass
class Decoded:
    """What the greedy loop produced, per row, and how it ran."""

    tokens: list[list[int]]
    stop_reasons: list[str]
    step_times_s: list[float] = field(default_factory=list)
    forward_steps: int = 0
    chosen_logprobs: mx.array | None = None  # [batch, steps]

    @property
    def loop_stop_reason(self) -> str:
        reasons = set(self.stop_reasons)
        return next(iter(reasons)) if len(reasons) == 1 else "mixed"


def greedy(model: Any, logits: mx.array, cache: Any, max_new: int, eos: frozenset[int], want_lp: bool,
           pad_id: int, counter: EvalCounter) -> Decoded:
    """Greedy decoding after a prefill: the first tokens from the prompt's last logits, then one
    cached step per token until every row has stopped.

    Each step ends when its next logits are evaluated (``mx.eval``) and its token ids are on the
    host (one read, needed for the stop check): two counted synchronisation points per step that
    runs a forward pass, one for the last step.
    """
    batch = int(logits.shape[0])
    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    times: list[float] = []
    chosen: list[mx.array] = []
    forward_steps = 0
    last = logits[:, -1, :]
    active: mx.array | None = None
    pad = mx.full((batch,), pad_id, dtype=mx.uint32)
    for _ in range(max_new):
        t0 = time.perf_counter()
        nxt = mx.argmax(last, axis=-1)
        if active is not None:  # stopped rows are fed the pad id
            nxt = mx.where(active, nxt, pad)
        if want_lp:
            chosen.append(mx.take_along_axis(log_softmax(last), nxt[:, None], axis=-1))
        host = counter.tolist(nxt) if batch > 1 else [counter.item(nxt[0])]
        stopped_before = sum(r is not None for r in reasons)
        for row, tok in enumerate(host):
            if reasons[row] is not None:
                continue
            tokens[row].append(int(tok))
            if int(tok) in eos:
                reasons[row] = STOP_EOS
            elif len(tokens[row]) >= max_new:
                reasons[row] = STOP_LENGTH
        if all(r is not None for r in reasons):
            times.append(time.perf_counter() - t0)
            break
        if sum(r is not None for r in reasons) != stopped_before:
            active = mx.array([r is None for r in reasons])
        last = model(nxt[:, None], cache=cache)[:, -1, :]
        counter.eval(last)
        forward_steps += 1
        times.append(time.perf_counter() - t0)
    out = Decoded(tokens, [r if r is not None else STOP_LENGTH for r in reasons], times, forward_steps)
    if chosen:
        out.chosen_logprobs = mx.concatenate(chosen, axis=-1)
        counter.eval(out.chosen_logprobs)
    return out


__all__ = ["STOP_EOS", "STOP_LENGTH", "Decoded", "Padded", "check_batchable", "forward", "greedy", "left_pad",
           "log_softmax", "new_cache"]
