"""Content diffs: what changed inside paired artifacts, measured from their stored bytes.

:func:`diff_traces` compares digests and recorded summaries only. :func:`content_diff` goes one
step further for every artifact pair whose two blobs can be read from a blob store::

    from vauban_trace.report import content_diff, diff_traces
    cd = content_diff(diff_traces(baseline, candidate), store)   # store: ArtifactStore, path or URL
    cd = content_diff(diff, base_store, candidate_store)         # two stores, one per side
    (logits,) = cd.pairs_of_kind("logits")
    logits.kl_max, logits.kl_mean, logits.top1_agreement
    cd.pair("activation", layer=1).cosine_mean, cd.pair("activation", layer=1).relative_l2
    cd.to_dict()                                                 # JSON-ready, never NaN

Both blobs of a pair are read (``store.get``), decoded (safetensors first, JSON otherwise) and
compared. The last axis of a tensor is its feature (vocabulary, hidden) axis; every leading index
is a *position*. Measures, each a :class:`ContentPair` field:

``equal``
    the decoded contents are equal (every kind; for tensors: same shape, dtype and values).
``kl_max`` / ``kl_mean``
    logits and logprobs: per position KL(baseline || candidate) in nats, of the softmax of the
    logits, or of exp(logprobs); the maximum and the mean over positions. Computed in float64.
    Logprobs whose exp does not sum to 1 (within 1e-3) on the last axis (e.g. the per-token
    logprobs of generated tokens) are not a distribution: KL is not measured and a note says so.
    When the candidate gives zero probability where the baseline does not, KL is infinite: it is
    left out (None) and a note says so.
``top1_agreement``
    logits and logprobs: the fraction of positions whose argmax agrees.
``cosine_mean`` / ``cosine_min``
    any numeric tensor pair of equal shape (activations, logits, weights...): cosine similarity
    per position, mean and minimum over positions (float64, clipped to [-1, 1]). Positions where
    either side has zero norm have no cosine; they are left out and counted in a note.
``relative_l2``
    ||candidate - baseline|| / ||baseline|| over the whole tensor (None, with a note, when the
    baseline is all zeros).
``positions``
    how many positions were compared.

Nothing is estimated. When a pair cannot be measured, every measure is None and ``reason`` says
why: a digest absent on a side, a blob not in the store, a blob whose bytes no longer hash to its
digest, a blob that is neither safetensors nor JSON, shapes that differ, a tensor against a JSON
value, or a tensor with NaN or infinite entries. ``measured`` is true when ``reason`` is None.

Blobs are verified against their digests on read: :class:`~vauban_trace.artifacts.LocalArtifactStore`
and :class:`~vauban_trace.artifacts.FsspecArtifactStore` ``get`` already hash what they read; for
any other store object this module hashes the bytes itself. A blob read for one pair is cached
for the rest of the call (the same digest is often paired several times).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vauban_trace._exceptions import ArtifactStoreError, ReportError
from vauban_trace.artifacts import (
    FsspecArtifactStore,
    LocalArtifactStore,
    decode_array,
    decode_json,
    open_store,
    verify_bytes,
)
from vauban_trace.contract import Trace
from vauban_trace.report._diff import ArtifactDiff, TraceDiff, diff_traces

_DISTRIBUTION_KINDS = frozenset({"logits", "logprobs"})
_LOGSUMEXP_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ContentPair:
    """One artifact pair measured from its bytes; see the module docstring for each field."""

    kind: str
    layer: int | None
    stage: str | None
    position: int
    baseline_id: str
    candidate_id: str
    identical: bool | None
    reason: str | None = None
    equal: bool | None = None
    positions: int | None = None
    kl_max: float | None = None
    kl_mean: float | None = None
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    relative_l2: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layer": self.layer, "stage": self.stage, "position": self.position,
            "baseline_id": self.baseline_id, "candidate_id": self.candidate_id,
            "identical": self.identical, "measured": self.measured, "reason": self.reason,
            "equal": self.equal, "positions": self.positions,
            "kl_max": self.kl_max, "kl_mean": self.kl_mean, "top1_agreement": self.top1_agreement,
            "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
            "relative_l2": self.relative_l2, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ContentDiff:
    """Every pair of a :class:`TraceDiff`, measured from the bytes (or the reason it was not)."""

    baseline_trace_id: str
    candidate_trace_id: str
    pairs: tuple[ContentPair, ...] = ()

    def pairs_of_kind(self, kind: str) -> tuple[ContentPair, ...]:
        return tuple(p for p in self.pairs if p.kind == kind)

    def pair(self, kind: str, layer: int | None = None, position: int = 0) -> ContentPair:
        for p in self.pairs:
            if p.kind == kind and p.layer == layer and p.position == position:
                return p
        raise KeyError((kind, layer, position))

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_trace_id": self.baseline_trace_id, "candidate_trace_id": self.candidate_trace_id,
                "pairs": [p.to_dict() for p in self.pairs]}


class _Unmeasured(Exception):
    """Internal: a pair that cannot be measured; the message is the reason."""


# -- reading ----------------------------------------------------------------------------------------
def _as_store(value: Any, name: str) -> Any:
    if isinstance(value, str | os.PathLike):
        try:
            return open_store(value)
        except ArtifactStoreError as exc:
            raise ReportError(f"{name}: {exc}") from None
    if not callable(getattr(value, "get", None)):
        raise ReportError(f"{name} must be an artifact store (with get(digest)), a path or a URL, "
                          f"got {type(value).__name__}")
    return value


def _reader(store: Any) -> Callable[[str], bytes]:
    self_verifying = isinstance(store, LocalArtifactStore | FsspecArtifactStore)

    def read(digest: str) -> bytes:
        data = bytes(store.get(digest))
        if not self_verifying and not verify_bytes(data, digest):
            raise ArtifactStoreError(f"blob {digest} is corrupted: its bytes do not hash to the digest")
        return data

    return read


def _decode(data: bytes) -> Any:
    try:
        return decode_array(data)
    except ArtifactStoreError:
        pass
    try:
        return decode_json(data)
    except ArtifactStoreError:
        raise _Unmeasured("is neither a safetensors tensor nor JSON") from None


def _load(side: str, digest: str | None, read: Callable[[str], bytes], cache: dict[tuple[int, str], Any]) -> Any:
    if digest is None:
        raise _Unmeasured(f"no digest on the {side}, so there are no bytes to read")
    key = (id(read), digest)
    if key not in cache:
        try:
            cache[key] = ("ok", _decode(read(digest)))
        except ArtifactStoreError as exc:  # not found, corrupted, unsafe, invalid digest, I/O
            cache[key] = ("error", f"{side} blob unreadable: {exc}")
        except _Unmeasured as exc:
            cache[key] = ("error", f"{side} blob {digest} {exc}")
    status, value = cache[key]
    if status == "error":
        raise _Unmeasured(value)
    return value


# -- measuring --------------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    top = np.max(x, axis=-1, keepdims=True)
    shifted = x - top
    out: np.ndarray[Any, Any] = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return out


def _logsumexp(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    top = np.max(x, axis=-1, keepdims=True)
    out: np.ndarray[Any, Any] = (top + np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True)))[..., 0]
    return out


def _distribution(kind: str, b: np.ndarray[Any, Any], c: np.ndarray[Any, Any], out: dict[str, Any],
                  notes: list[str]) -> None:
    out["top1_agreement"] = float(np.mean(np.argmax(b, axis=-1) == np.argmax(c, axis=-1)))
    if kind == "logits":
        lp, lq = _log_softmax(b), _log_softmax(c)
    else:
        for side, x in (("baseline", b), ("candidate", c)):
            worst = float(np.max(np.abs(_logsumexp(x))))
            if not worst <= _LOGSUMEXP_TOLERANCE:
                notes.append(f"the {side} logprobs are not a distribution over the last axis "
                             f"(|log of the sum of exp| reaches {worst:.4g}): KL not measured")
                return
        lp, lq = b, c
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    kl = np.sum(terms, axis=-1)
    if not np.all(np.isfinite(kl)):
        notes.append("the candidate gives zero probability where the baseline does not: KL is infinite")
        return
    kl = np.maximum(kl, 0.0)  # rounding can leave -1e-17 for equal distributions
    out["kl_max"], out["kl_mean"] = float(np.max(kl)), float(np.mean(kl))


def _tensor(b: np.ndarray[Any, Any], c: np.ndarray[Any, Any], out: dict[str, Any], notes: list[str]) -> None:
    nb, nc = np.linalg.norm(b, axis=-1), np.linalg.norm(c, axis=-1)
    ok = (nb > 0) & (nc > 0)
    if int(np.sum(~ok)):
        notes.append(f"{int(np.sum(~ok))} position(s) with a zero vector on a side have no cosine")
    if np.any(ok):
        cos = np.clip(np.sum(b * c, axis=-1)[ok] / (nb[ok] * nc[ok]), -1.0, 1.0)
        out["cosine_mean"], out["cosine_min"] = float(np.mean(cos)), float(np.min(cos))
    base_norm = float(np.linalg.norm(b))
    if base_norm > 0:
        out["relative_l2"] = float(np.linalg.norm(c - b)) / base_norm
    else:
        notes.append("the baseline is all zeros: relative L2 change undefined")


def _measure(kind: str, b: Any, c: Any, notes: list[str]) -> dict[str, Any]:
    b_arr, c_arr = isinstance(b, np.ndarray), isinstance(c, np.ndarray)
    if b_arr != c_arr:
        raise _Unmeasured("one side is a tensor, the other a JSON value")
    if not b_arr:
        return {"equal": b == c}
    if b.shape != c.shape:
        raise _Unmeasured(f"shapes differ ({tuple(b.shape)} against {tuple(c.shape)}): "
                          "not compared position by position")
    out: dict[str, Any] = {"equal": bool(b.dtype == c.dtype and np.array_equal(b, c))}
    if b.dtype.kind not in "iuf" or c.dtype.kind not in "iuf":
        notes.append(f"dtype {b.dtype} / {c.dtype} is not numeric: compared for equality only")
        return out
    x, y = np.asarray(b, dtype=np.float64), np.asarray(c, dtype=np.float64)
    for side, arr in (("baseline", x), ("candidate", y)):
        if not np.all(np.isfinite(arr)):
            raise _Unmeasured(f"the {side} tensor has NaN or infinite entries")
    if x.size == 0:
        return out
    if x.ndim == 0:
        x, y = x.reshape(1), y.reshape(1)
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    out["positions"] = int(x.shape[0])
    if kind in _DISTRIBUTION_KINDS:
        _distribution(kind, x, y, out, notes)
    _tensor(x, y, out, notes)
    return out


def _pair(p: ArtifactDiff, read_b: Callable[[str], bytes], read_c: Callable[[str], bytes],
          cache: dict[tuple[int, str], Any]) -> ContentPair:
    head: dict[str, Any] = {"kind": p.kind, "layer": p.layer, "stage": p.stage, "position": p.position,
            "baseline_id": p.baseline_id, "candidate_id": p.candidate_id, "identical": p.identical}
    notes: list[str] = []
    try:
        b = _load("baseline", p.baseline_digest, read_b, cache)
        c = _load("candidate", p.candidate_digest, read_c, cache)
        fields = _measure(p.kind, b, c, notes)
    except _Unmeasured as exc:
        return ContentPair(**head, reason=str(exc))
    return ContentPair(**head, **fields, notes=tuple(notes))


def content_diff(diff: TraceDiff | Trace, store: Any, candidate_store: Any = None, *,
                 candidate: Trace | None = None) -> ContentDiff:
    """Measure every pair of ``diff`` from the blobs in ``store`` (``candidate_store`` for the
    candidate's blobs when they live elsewhere). ``diff`` may also be the baseline Trace, with the
    candidate Trace as ``candidate=``. See the module docstring."""
    if isinstance(diff, Trace):
        if not isinstance(candidate, Trace):
            raise ReportError("content_diff: with a baseline Trace, pass the candidate Trace as candidate=")
        diff = diff_traces(diff, candidate)
    elif not isinstance(diff, TraceDiff):
        raise ReportError(f"content_diff: expected a TraceDiff or a Trace, got {type(diff).__name__}")
    base = _as_store(store, "store")
    cand = base if candidate_store is None else _as_store(candidate_store, "candidate_store")
    read_b = _reader(base)
    read_c = read_b if cand is base else _reader(cand)
    cache: dict[tuple[int, str], Any] = {}
    pairs = tuple(_pair(p, read_b, read_c, cache) for p in diff.pairs)
    return ContentDiff(diff.baseline_trace_id, diff.candidate_trace_id, pairs)


__all__ = ["ContentDiff", "ContentPair", "content_diff"]
