"""The MLX generation loop: greedy or sampled tokens, per-row stopping, stop strings.

:func:`decode` runs after the prefill (:mod:`._batch`), with the torch executor's rules
(``executors/torch/_decode.py``):

- **Next token**: greedy (``do_sample=False``), the argmax of each row's last logits, on the
  device; sampled (``do_sample=True``), the logits are read to the host and
  :class:`._sample.Sampler` applies temperature, top-k, top-p and torch's CPU multinomial draw
  with the seeded generator (same seed, same logits: the same token as the torch executor).
- **Stopping, per row**: on an end-of-sequence id (the token is kept); on a stop string, checked
  on the decoded tail of the row's generated tokens (the last ``longest stop + 8`` tokens, decoded
  with ``skip_special_tokens=True``); or after ``max_new_tokens`` tokens. Stopped rows are fed the
  pad id while the others go on (so the chosen-token logprobs of a stopped row are those of the
  pad id, as in torch). The loop ends when every row has stopped.
- **Stop-string cut**: for a row stopped by a stop string, :attr:`Decoded.stop_cut` is the
  character offset of the earliest stop string in its full decoded text; the pipeline's ``emit``
  stage returns the text cut there (the generated token ids are kept whole, as in torch).

Each step ends when its token ids are on the host (one counted read: the ids for greedy, the
logits for sampling) and, unless it is the last, when the next logits are evaluated (one counted
``mx.eval``): two synchronisation points per step that runs a forward pass, one for the last.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace.executors.mlx._batch import log_softmax
from vauban_trace.executors.mlx._counters import EvalCounter
from vauban_trace.executors.mlx._sample import Sampler

#: why one row stopped (the torch executor's words)
STOP_EOS, STOP_STRING, STOP_LENGTH = "eos", "stop_string", "max_new_tokens"


@dataclass(frozen=True)
class DecodeParams:
    """How to generate: the settings of :meth:`MlxExecutor.run` that the loop needs."""

    max_new_tokens: int
    pad_token_id: int = 0
    eos_token_ids: frozenset[int] = frozenset()
    do_sample: bool = False
    seed: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    return_logprobs: bool = False


@dataclass
class Decoded:
    """What the loop produced, per row, and how it ran."""

    tokens: list[list[int]]
    stop_reasons: list[str]
    step_times_s: list[float] = field(default_factory=list)
    forward_steps: int = 0
    chosen_logprobs: mx.array | None = None  # [batch, steps]
    stop_cut: list[int | None] = field(default_factory=list)  # char offset of the stop string per row

    @property
    def loop_stop_reason(self) -> str:
        reasons = set(self.stop_reasons)
        return next(iter(reasons)) if len(reasons) == 1 else "mixed"


def _stop_cuts(tokens: list[list[int]], reasons: list[str], stop: tuple[str, ...],
               detokenize: Callable[[Sequence[int]], str] | None) -> list[int | None]:
    cuts: list[int | None] = [None] * len(tokens)
    if not stop or detokenize is None:
        return cuts
    for row, reason in enumerate(reasons):
        if reason == STOP_STRING:
            text = detokenize(tokens[row])
            hits = [text.find(s) for s in stop if s in text]
            cuts[row] = min(hits) if hits else None
    return cuts


def decode(model: Any, logits: mx.array, cache: Any, params: DecodeParams, counter: EvalCounter,
           detokenize: Callable[[Sequence[int]], str] | None = None) -> Decoded:
    """Generate up to ``params.max_new_tokens`` tokens per row after a prefill (see the module doc)."""
    batch = int(logits.shape[0])
    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    times: list[float] = []
    chosen: list[mx.array] = []
    forward_steps = 0
    longest_stop = max((len(s) for s in params.stop), default=0)
    sampler = Sampler(seed=params.seed, temperature=params.temperature, top_k=params.top_k,
                      top_p=params.top_p) if params.do_sample else None
    last = logits[:, -1, :]
    active: list[bool] | None = None
    pad = mx.full((batch,), params.pad_token_id, dtype=mx.uint32)
    for _ in range(params.max_new_tokens):
        t0 = time.perf_counter()
        if sampler is None:
            nxt = mx.argmax(last, axis=-1)
            if active is not None:  # stopped rows are fed the pad id
                nxt = mx.where(mx.array(active), nxt, pad)
            host = [int(t) for t in counter.tolist(nxt)] if batch > 1 else [int(counter.item(nxt[0]))]
        else:
            ids = sampler.select(counter.numpy(last))  # every row draws, as in torch
            if active is not None:
                ids = np.where(np.asarray(active), ids, params.pad_token_id)
            host = [int(t) for t in ids]
            nxt = mx.array(host, dtype=mx.uint32)
        if params.return_logprobs:
            chosen.append(mx.take_along_axis(log_softmax(last), nxt[:, None], axis=-1))
        stopped_before = sum(r is not None for r in reasons)
        for row, tok in enumerate(host):
            if reasons[row] is not None:
                continue
            tokens[row].append(tok)
            if tok in params.eos_token_ids:
                reasons[row] = STOP_EOS
            elif longest_stop and detokenize is not None:
                tail = detokenize(tokens[row][-(longest_stop + 8):])
                if any(s in tail for s in params.stop):
                    reasons[row] = STOP_STRING
            if reasons[row] is None and len(tokens[row]) >= params.max_new_tokens:
                reasons[row] = STOP_LENGTH
        if all(r is not None for r in reasons):
            times.append(time.perf_counter() - t0)
            break
        if sum(r is not None for r in reasons) != stopped_before:
            active = [r is None for r in reasons]
        last = model(nxt[:, None], cache=cache)[:, -1, :]
        counter.eval(last)
        forward_steps += 1
        times.append(time.perf_counter() - t0)
    final = [r if r is not None else STOP_LENGTH for r in reasons]
    out = Decoded(tokens, final, times, forward_steps,
                  stop_cut=_stop_cuts(tokens, final, params.stop, detokenize))
    if chosen:
        out.chosen_logprobs = mx.concatenate(chosen, axis=-1)
        counter.eval(out.chosen_logprobs)
    return out


__all__ = ["STOP_EOS", "STOP_LENGTH", "STOP_STRING", "DecodeParams", "Decoded", "decode"]
