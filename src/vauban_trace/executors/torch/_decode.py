"""The executor's own generation loop over ``model.forward`` with a KV cache.

Why not ``model.generate``: the loop must time every step, know why it stopped, and let hooks
see a prompt pass distinct from the generated positions. It reproduces ``generate``'s greedy
tokens exactly (tests check this for several families, left-padded batches included):

- :func:`prefill` runs the prompt (left-padded, ``position_ids`` from the attention mask, the
  same rule as ``generate``) with ``use_cache=True`` and returns the logits of every position
  and the cache;
- :func:`decode` picks a token from the last logits, appends it, and runs one forward step per
  new token until every sequence has stopped. A sequence stops on an end-of-sequence id (the
  token is kept, as ``generate`` does), on a stop string (checked on the decoded tail of its
  generated tokens; the returned text is cut before the stop string) or when ``max_new_tokens``
  tokens were generated. Finished sequences are fed the pad id while the others go on.

Sampling (``do_sample=True``) applies temperature, then top-k, then top-p to the logits and draws
from a ``torch.Generator`` seeded with ``seed`` on the model's device (the CPU when that device
has no generator), so a seeded run is reproducible, with tracing on or off.

Per-step facts are never one span or event each: :class:`DecodeResult` holds the per-step wall
times (each step ends when its token ids are on the host, which the stop check needs anyway), and
the executor folds them into the decode span's attributes (steps, p50, p95, max, mean).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: why one sequence stopped
STOP_EOS = "eos"
STOP_STRING = "stop_string"
STOP_LENGTH = "max_new_tokens"


@dataclass(frozen=True)
class DecodeParams:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    eos_token_ids: frozenset[int] = frozenset()
    pad_token_id: int = 0
    stop: tuple[str, ...] = ()
    return_logprobs: bool = False


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # generated ids per sequence (eos kept, padding after stop dropped)
    stop_reasons: list[str]  # per sequence: eos | stop_string | max_new_tokens
    step_times_s: list[float] = field(default_factory=list)
    forward_steps: int = 0  # forward passes run after the prompt
    chosen_logprobs: torch.Tensor | None = None  # [batch, steps] log-softmax of the raw logits
    stop_cut: list[int | None] = field(default_factory=list)  # char offset of the stop string

    @property
    def steps(self) -> int:
        return len(self.step_times_s)

    @property
    def loop_stop_reason(self) -> str:
        reasons = set(self.stop_reasons)
        if len(reasons) == 1:
            return next(iter(reasons))
        return "mixed"


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword of the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params


def positions_kwargs(model: torch.nn.Module, positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"position_ids": positions}`` for models whose forward takes them, else nothing."""
    return {"position_ids": positions} if _accepts(model, "position_ids") else {}


def position_ids_for(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (``generate``'s rule)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def prefill(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, use_cache: bool = True
) -> tuple[torch.Tensor, Any]:
    """Forward over the prompt; returns (logits [batch, seq, vocab], cache or None)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=use_cache,
        **positions_kwargs(model, position_ids_for(attention_mask)),
    )
    return out.logits, (_cache_of(out) if use_cache else None)


def _make_generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    try:
        gen = torch.Generator(device=device)
    except RuntimeError:
        gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _select(logits: torch.Tensor, params: DecodeParams, gen: torch.Generator | None) -> torch.Tensor:
    """Next token ids [batch] from last-position logits [batch, vocab]."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / max(params.temperature, 1e-6)
    if params.top_k is not None and 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p is not None and 0.0 < params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1.0 - params.top_p)
        drop_sorted[..., -1:] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    if gen is not None and gen.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def decode(
    model: torch.nn.Module,
    logits: torch.Tensor,
    cache: Any,
    attention_mask: torch.Tensor,
    params: DecodeParams,
    detokenize: Callable[[Sequence[int]], str] | None = None,
) -> DecodeResult:
    """Generate up to ``params.max_new_tokens`` tokens after a :func:`prefill`."""
    batch = logits.shape[0]
    device = logits.device
    key = cache_keyword(model)
    with_positions = _accepts(model, "position_ids")
    gen = _make_generator(device, params.seed) if params.do_sample else None
    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    cuts: list[int | None] = [None] * batch
    step_times: list[float] = []
    chosen: list[torch.Tensor] = []
    longest_stop = max((len(s) for s in params.stop), default=0)
    mask = attention_mask
    last = logits[:, -1, :]
    forward_steps = 0
    active: torch.Tensor | None = None
    pad = torch.full((batch,), params.pad_token_id, dtype=torch.long, device=device)
    for _step in range(params.max_new_tokens):
        t0 = time.perf_counter()
        nxt = _select(last, params, gen)
        if active is not None:  # some sequences have stopped: feed them the pad id
            nxt = torch.where(active, nxt, pad)
        if params.return_logprobs:
            chosen.append(last.float().log_softmax(-1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1))
        host = nxt.tolist()
        stopped_before = sum(r is not None for r in reasons)
        for i, tok in enumerate(host):
            if reasons[i] is not None:
                continue
            tokens[i].append(int(tok))
            if int(tok) in params.eos_token_ids:
                reasons[i] = STOP_EOS
            elif longest_stop and detokenize is not None:
                tail = detokenize(tokens[i][-(longest_stop + 8):])
                if any(s in tail for s in params.stop):
                    reasons[i] = STOP_STRING
            if reasons[i] is None and len(tokens[i]) >= params.max_new_tokens:
                reasons[i] = STOP_LENGTH
        if all(r is not None for r in reasons):
            step_times.append(time.perf_counter() - t0)
            break
        if sum(r is not None for r in reasons) != stopped_before:
            active = torch.tensor([r is None for r in reasons], device=device)
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        positions = mask.long().sum(-1, keepdim=True) - 1
        out = model(
            input_ids=nxt.unsqueeze(-1),
            attention_mask=mask,
            use_cache=True,
            **({"position_ids": positions} if with_positions else {}),
            **{key: cache},
        )
        forward_steps += 1
        cache = _cache_of(out)
        last = out.logits[:, -1, :]
        step_times.append(time.perf_counter() - t0)
    final = [r if r is not None else STOP_LENGTH for r in reasons]
    if params.stop and detokenize is not None:
        for i, reason in enumerate(final):
            if reason == STOP_STRING:
                text = detokenize(tokens[i])
                hits = [text.find(s) for s in params.stop if s in text]
                cuts[i] = min(hits) if hits else None
    return DecodeResult(
        tokens=tokens,
        stop_reasons=final,
        step_times_s=step_times,
        forward_steps=forward_steps,
        chosen_logprobs=torch.stack(chosen, dim=-1) if chosen else None,
        stop_cut=cuts,
    )


__all__ = [
    "STOP_EOS",
    "STOP_LENGTH",
    "STOP_STRING",
    "DecodeParams",
    "DecodeResult",
    "cache_keyword",
    "decode",
    "position_ids_for",
    "positions_kwargs",
    "prefill",
]
