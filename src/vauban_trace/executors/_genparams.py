"""Generation settings, checked once for every executor (no torch, no mlx imports).

``TorchExecutor.run`` and ``MlxExecutor.run`` take the same generation settings and must refuse
the same bad values with the same messages, before the root span opens. Both call
:func:`check_generation`, which returns a :class:`GenerationSettings` (the settings normalised)
or raises :class:`~vauban_trace._exceptions.ExecutorError` naming the first bad setting::

    from vauban_trace.executors._genparams import check_generation
    gen = check_generation(max_new_tokens=8, do_sample=True, seed=7, temperature=0.8, top_p=0.9,
                           stop="\\n")
    gen.stop            # ("\\n",)
    gen.temperature     # 0.8 (a float, also when an int was passed)

The settings are checked in this order; the first bad one raises:

===================  ===================================================================
``max_new_tokens``   an ``int`` >= 0 (``max_new_tokens must be an integer >= 0, got ...``)
``seed``             ``None`` or an ``int`` >= 0 (``seed must be an integer >= 0, got ...``)
                     and below ``2**64``, the range of a ``torch.Generator`` seed, which the
                     MLX executor reproduces (``seed must be below 2**64 (a torch.Generator
                     seed), got ...``)
``top_k``            ``None`` or an ``int`` >= 1 (``top_k must be an integer >= 1, got ...``)
``temperature``      a number > 0 (``temperature must be a number > 0, got ...``)
``top_p``            ``None`` or a number in (0, 1] (``top_p must be in (0, 1], got ...``)
``stop``             ``None``, one string or a sequence of strings, none empty
                     (``stop must be a string or a sequence of strings, got ...``;
                     ``stop strings must be non-empty strings``)
===================  ===================================================================

``bool`` is refused wherever a number is expected (``True`` is an ``int`` to Python, never a
count or a temperature here). ``do_sample`` is taken as ``bool(do_sample)``, unchecked.
:func:`check_int` is the integer check used above, shared for the executors' other integer
settings (``topk``); :func:`check_score_continuation` checks ``score_continuation`` for both.
Each executor's run options extend :class:`GenerationSettings` with its recording settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace._exceptions import ExecutorError

SEED_LIMIT = 2**64
"""Seeds must be below this: a ``torch.Generator`` seed is an unsigned 64-bit integer."""


@dataclass(frozen=True)
class GenerationSettings:
    """Checked generation settings of one run (see the module doc for the rules)."""

    max_new_tokens: int = 0
    do_sample: bool = False
    seed: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) >= ``minimum``, else :class:`ExecutorError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExecutorError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_generation(
    *,
    max_new_tokens: int = 0,
    do_sample: bool = False,
    seed: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
) -> GenerationSettings:
    """The generation settings, checked and normalised; :class:`ExecutorError` names the bad one."""
    check_int(max_new_tokens, "max_new_tokens", 0)
    if seed is not None:
        check_int(seed, "seed", 0)
        if seed >= SEED_LIMIT:
            raise ExecutorError(f"seed must be below 2**64 (a torch.Generator seed), got {seed!r}")
    if top_k is not None:
        check_int(top_k, "top_k", 1)
    if not _is_number(temperature) or not temperature > 0:
        raise ExecutorError(f"temperature must be a number > 0, got {temperature!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ExecutorError(f"top_p must be in (0, 1], got {top_p!r}")
    if stop is not None and not isinstance(stop, str | Sequence):
        raise ExecutorError(f"stop must be a string or a sequence of strings, got {stop!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stops):
        raise ExecutorError("stop strings must be non-empty strings")
    return GenerationSettings(
        max_new_tokens=max_new_tokens, do_sample=bool(do_sample), seed=seed, temperature=float(temperature),
        top_k=top_k, top_p=None if top_p is None else float(top_p), stop=stops,
    )


def check_score_continuation(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``score_continuation`` normalised to a tuple (one string, or one per prompt), or None;
    :class:`ExecutorError` when it is empty or holds anything but non-empty strings."""
    score = (value,) if isinstance(value, str) else (tuple(value) if value is not None else None)
    if score is not None and (not score or any(not isinstance(s, str) or not s for s in score)):
        raise ExecutorError("score_continuation must be a non-empty string (or one per prompt)")
    return score


__all__ = ["SEED_LIMIT", "GenerationSettings", "check_generation", "check_int", "check_score_continuation"]
