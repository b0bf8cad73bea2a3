"""Describe framework values (arrays, tensors) without importing the frameworks.

The core never imports torch or mlx. A value is described by an adapter chosen from the module
of its type: numpy arrays are handled here; a value whose ``type(x).__module__`` starts with
``torch`` (or ``mlx``) is handed to ``vauban_trace.executors.torch._values`` (or
``...mlx._values``), imported only at that moment, so a process that never passes a tensor never
imports the executor package. An adapter module provides two functions::

    describe(value) -> ValueInfo | None       # bytes, device kind and label, shape, dtype; no copy
    to_host(value) -> HostArray               # a numpy array on the host, plus the copies it took

When an executor package has no such module, a duck-typed fallback serves tensors that offer
``numel()``, ``element_size()``, ``device``, ``shape``, ``dtype`` and ``detach()``/``cpu()``/``numpy()``.

Containers are looked into one level deep (list, tuple, dict values, and mapping-like model
outputs), which covers ``f(input_ids, attention_mask=...)`` and ``ModelOutput(logits=...)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from vauban_trace.instrument._probes import instrumentation_work


@dataclass(frozen=True)
class ValueInfo:
    """What is known about a tensor-like value without touching its data."""

    nbytes: int
    device_kind: str
    device_label: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class HostArray:
    """A value brought to host memory as numpy, with the device-to-host copies that took."""

    array: np.ndarray
    d2h_copies: int = 0
    d2h_bytes: int = 0


_ADAPTERS: dict[str, ModuleType | None] = {}


def _adapter(family: str) -> ModuleType | None:
    if family not in _ADAPTERS:
        try:
            _ADAPTERS[family] = importlib.import_module(f"vauban_trace.executors.{family}._values")
        except ImportError:
            _ADAPTERS[family] = None
    return _ADAPTERS[family]


def _family(value: object) -> str | None:
    mod = type(value).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("mlx"):
        return "mlx"
    return None


def _duck_info(value: Any) -> ValueInfo | None:
    try:
        nbytes = int(value.numel()) * int(value.element_size())
        device = str(value.device)
        shape = tuple(int(d) for d in value.shape)
        dtype = str(value.dtype).removeprefix("torch.")
    except Exception:
        return None
    kind = device.split(":", 1)[0]
    return ValueInfo(nbytes, kind, device, shape, dtype)


def describe(value: object) -> ValueInfo | None:
    """Describe a single tensor-like value, or ``None`` when it is not one."""
    if isinstance(value, np.ndarray):
        return ValueInfo(int(value.nbytes), "cpu", "cpu", tuple(int(d) for d in value.shape), str(value.dtype))
    family = _family(value)
    if family is None:
        return None
    adapter = _adapter(family)
    if adapter is not None and hasattr(adapter, "describe"):
        try:
            info: ValueInfo | None = adapter.describe(value)
            return info
        except Exception:
            return None
    return _duck_info(value)


def to_host(value: object) -> HostArray | None:
    """Bring a tensor-like value to a host numpy array (``None`` when it is not tensor-like)."""
    if isinstance(value, np.ndarray):
        return HostArray(value)
    family = _family(value)
    if family is None:
        return None
    adapter = _adapter(family)
    if adapter is not None and hasattr(adapter, "to_host"):
        with instrumentation_work():  # torch deep counters count these copies apart
            result: HostArray = adapter.to_host(value)
        return result
    info = _duck_info(value)
    if info is None:
        return None
    t: Any = value
    t = t.detach() if hasattr(t, "detach") else t
    on_device = info.device_kind != "cpu"
    t = t.cpu() if hasattr(t, "cpu") else t
    if info.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2") and hasattr(t, "float"):
        t = t.float()
    array = np.asarray(t.numpy() if hasattr(t, "numpy") else t)
    return HostArray(array, 1 if on_device else 0, info.nbytes if on_device else 0)


def _children(value: object) -> Iterable[object]:
    if isinstance(value, (list, tuple)):
        return value
    if isinstance(value, Mapping):
        return value.values()
    return ()


def total_bytes(values: Iterable[object]) -> tuple[int, ValueInfo | None, bool]:
    """Sum the bytes of tensor-like values among ``values`` (one container level deep).

    Returns ``(bytes, first_info, found_any)``; ``first_info`` gives the device of the first
    tensor seen.
    """
    total = 0
    first: ValueInfo | None = None
    found = False
    for value in values:
        info = describe(value)
        if info is not None:
            total += info.nbytes
            first = first or info
            found = True
            continue
        for child in _children(value):
            cinfo = describe(child)
            if cinfo is not None:
                total += cinfo.nbytes
                first = first or cinfo
                found = True
    return total, first, found
