"""Torch's CPU random draws without torch: ``random:SEED`` vectors and the sampler's exponentials.

The torch executor draws the direction of ``random:SEED`` with a CPU ``torch.Generator`` seeded
with ``SEED``. For the same request to steer along the same direction in the MLX executor (which
never imports torch), this module reproduces that draw in numpy, following torch's CPU kernel:

- the generator is a standard 32-bit Mersenne Twister seeded with ``SEED & 0xffffffff``
  (``init_genrand``, as numpy's legacy ``RandomState(seed)``), one 32-bit output per draw;
- ``n >= 16`` (float32, contiguous): every element first gets a uniform ``(x & (2**24 - 1)) /
  2**24``; then each block of 16 becomes 16 normals by Box-Muller, ``u1 = 1 - d[j]``,
  ``u2 = d[j + 8]``, ``d[j] = r cos(2 pi u2)``, ``d[j + 8] = r sin(2 pi u2)`` with
  ``r = sqrt(-2 log u1)``, ``j < 8``; when ``n`` is not a multiple of 16 the last 16 values are
  recomputed from 16 fresh uniforms;
- ``n < 16``: one double normal per element (two 64-bit uniforms of 53 bits, each made of two
  32-bit draws, high word first; ``r = sqrt(-2 log1p(-u2))``, ``theta = 2 pi u1``; the cosine
  is returned and the sine kept for the next element).

Torch evaluates the transcendental functions with its own vector library (Sleef with AVX2), so
the values agree to a few float32 ulps, not bit for bit: largest difference 1.1e-6 on the 6 seeds
and 8 sizes (1 to 896) of ``test_random_vectors_equal_torch``, 3.6e-7 in a one-off check of 9
seeds and 12 sizes up to 4,096. A seed outside ``0 .. 2**64 - 1`` is refused, as torch refuses it.

:class:`TorchCpuGenerator` is the same generator kept across calls, for the sampler
(:mod:`._sample`): ``torch.multinomial(probs, 1, generator=gen)`` on the CPU draws one sample
per row as ``argmax(probs / q)`` with ``q = empty_like(probs).exponential_(1, gen)``, and this
build of torch (2.13 CPU, with MKL) fills ``q`` with its default kernel, not MKL's: element by
element in row-major order, a 53-bit double uniform ``u`` from two 32-bit draws (high word
first), ``-log1p(-u)`` rounded to float32. :meth:`TorchCpuGenerator.exponential` reproduces
it bit for bit (``test_exponential_draws_equal_torch``: every element equal on 5 seeds and
shapes up to ``[3, 50257]``, and over consecutive calls on one generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

_MASK24 = np.uint32((1 << 24) - 1)
_MASK53 = (1 << 53) - 1


def _uniform24(draw: Callable[[int], np.ndarray[Any, Any]], count: int) -> np.ndarray[Any, Any]:
    raw = draw(count)
    return ((raw & _MASK24).astype(np.float64) * 2.0**-24).astype(np.float32)


def _box_muller16(block: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    u1 = 1.0 - block[:8].astype(np.float64)
    u2 = block[8:16].astype(np.float64)
    radius = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * math.pi * u2
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)]).astype(np.float32)


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in 0 .. 2**64 - 1, got {seed}")


class TorchCpuGenerator:
    """A ``torch.Generator()`` (CPU) after ``manual_seed(seed)``, for exponential draws (see module doc).

    ``seed=None`` seeds from the operating system's entropy, as an unseeded run is not reproducible
    in torch either.
    """

    def __init__(self, seed: int | None) -> None:
        if seed is not None:
            _check_seed(seed)
        self._state = np.random.RandomState(None if seed is None else seed & 0xFFFFFFFF)

    def _words(self, count: int) -> np.ndarray[Any, Any]:
        raw: np.ndarray[Any, Any] = self._state.randint(0, 2**32, size=count, dtype=np.uint32)
        return raw

    def exponential(self, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """``torch.empty(shape).exponential_(1, generator=gen)`` as float32, advancing the generator."""
        count = int(np.prod(shape))
        words = self._words(2 * count).astype(np.uint64)
        bits = ((words[0::2] << np.uint64(32)) | words[1::2]) & np.uint64(_MASK53)
        uniform = bits.astype(np.float64) * 2.0**-53
        out: np.ndarray[Any, Any] = (-np.log1p(-uniform)).astype(np.float32).reshape(shape)
        return out


def torch_cpu_randn(seed: int, n: int) -> np.ndarray[Any, Any]:
    """``torch.randn(n, generator=torch.Generator().manual_seed(seed)).numpy()`` (see module doc)."""
    _check_seed(seed)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    state = np.random.RandomState(seed & 0xFFFFFFFF)

    def draw(count: int) -> np.ndarray[Any, Any]:
        raw: np.ndarray[Any, Any] = state.randint(0, 2**32, size=count, dtype=np.uint32)
        return raw

    if n >= 16:
        out = _uniform24(draw, n)
        for i in range(0, n - 15, 16):
            out[i:i + 16] = _box_muller16(out[i:i + 16])
        if n % 16:
            out[n - 16:] = _box_muller16(_uniform24(draw, 16))
        return out
    values = np.empty(n, dtype=np.float32)
    cached: float | None = None
    for i in range(n):
        if cached is not None:
            values[i], cached = cached, None
            continue
        words = [int(w) for w in draw(4)]
        u1 = (((words[0] << 32) | words[1]) & _MASK53) * 2.0**-53
        u2 = (((words[2] << 32) | words[3]) & _MASK53) * 2.0**-53
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        cached = radius * math.sin(theta)
        values[i] = radius * math.cos(theta)
    return values


__all__ = ["TorchCpuGenerator", "torch_cpu_randn"]
