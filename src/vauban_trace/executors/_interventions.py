"""Intervention specs shared by every executor: parsing, formatting, vector references (no torch, no mlx).

The spec syntax and what each intervention does are described in
:mod:`vauban_trace.executors.torch._intervene` (the reference executor); the MLX executor applies
the same specs with the same arithmetic. This module holds the framework-free half both use:

- :func:`parse_intervention` / :func:`format_intervention`: ``NAME:key=value,...`` <-> contract
  :class:`~vauban_trace.contract.Intervention`, with :class:`ExecutorError` naming the problem;
- :func:`random_seed`: the seed of a ``random:SEED`` reference, checked to fit the 64 bits both
  executors' generators take (0 .. 2**64 - 1);
- :func:`locate` / :func:`reference_of`: the checks both executors' ``resolve`` run before
  fetching anything (known name, layer in range, site present; the vector or source reference);
- :func:`load_array`: the float32 array a ``sha256:`` / ``blake3:`` digest (from the artifact
  store, verified) or a ``file:PATH`` (.npy, .safetensors, JSON list) names.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from vauban_trace._exceptions import ArtifactStoreError, ExecutorError
from vauban_trace.contract import Intervention

#: where an intervention acts in a decoder layer
SITES: tuple[str, ...] = ("residual", "attn", "mlp")
#: the largest seed of ``random:SEED`` (torch's CPU generator and its numpy twin take 64 bits)
MAX_SEED = 2**64 - 1

_Ref = TypeVar("_Ref")
_Ref_co = TypeVar("_Ref_co", covariant=True)

NAMES: tuple[str, ...] = ("ablate", "steer", "patch")

_ALLOWED: dict[str, dict[str, bool]] = {  # key -> required
    "ablate": {"layer": True, "direction": True, "site": False, "positions": False},
    "steer": {
        "layer": True, "vector": True, "alpha": False, "normalize": False, "site": False, "positions": False,
    },
    "patch": {"layer": True, "source": True, "site": False, "positions": False},
}
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|blake3:[0-9a-f]{64})$")


def _bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ExecutorError(f"{where}: expected true or false, got {text!r}")


def _check_ref(text: str, where: str) -> str:
    if _DIGEST_RE.match(text):
        return text
    if text.startswith("random:"):
        random_seed(text, where)
        return text
    if text.startswith("file:") and len(text) > len("file:"):
        return text
    raise ExecutorError(
        f"{where}: {text!r} is not a vector reference (expected sha256:<64 hex>, blake3:<64 hex>, "
        "random:SEED or file:PATH)"
    )


def random_seed(text: str, where: str) -> int:
    """The seed of ``random:SEED``: an integer in 0 .. :data:`MAX_SEED`, else :class:`ExecutorError`."""
    seed = text[len("random:"):] if text.startswith("random:") else ""
    if not seed.isdigit() or not seed.isascii() or int(seed) > MAX_SEED:
        raise ExecutorError(f"{where}: random:SEED needs an integer seed in 0 .. 2**64 - 1, got {text!r}")
    return int(seed)


def parse_intervention(spec: str) -> Intervention:
    """Parse ``NAME:key=value,...`` into a contract :class:`Intervention` (see module doc)."""
    text = spec.strip()
    name, sep, rest = text.partition(":")
    name = name.strip().lower()
    if not sep or name not in NAMES:
        raise ExecutorError(
            f"intervention {spec!r}: expected NAME:key=value,... with NAME one of {', '.join(NAMES)}"
        )
    allowed = _ALLOWED[name]
    raw: dict[str, str] = {}
    for part in (p for p in rest.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise ExecutorError(f"intervention {spec!r}: {part.strip()!r} is not key=value")
        if key not in allowed:
            raise ExecutorError(
                f"intervention {spec!r}: unknown parameter {key!r} for {name} "
                f"(allowed: {', '.join(allowed)})"
            )
        if key in raw:
            raise ExecutorError(f"intervention {spec!r}: parameter {key!r} given twice")
        raw[key] = value.strip()
    missing = [k for k, req in allowed.items() if req and k not in raw]
    if missing:
        raise ExecutorError(f"intervention {spec!r}: missing parameter(s) {', '.join(missing)}")
    where = f"intervention {spec!r}"
    try:
        layer = int(raw.pop("layer"))
    except ValueError:
        raise ExecutorError(f"{where}: layer must be an integer") from None
    if layer < 0:
        raise ExecutorError(f"{where}: layer must be >= 0, got {layer}")
    params: dict[str, Any] = {"site": raw.pop("site", "residual").lower()}
    if params["site"] not in SITES:
        raise ExecutorError(f"{where}: site must be one of {', '.join(SITES)}, got {params['site']!r}")
    if name == "patch":
        source = raw.pop("source")
        if not _DIGEST_RE.match(source):
            raise ExecutorError(f"{where}: source must be a digest (sha256:<64 hex> or blake3:<64 hex>)")
        params["source"] = source
        if raw.pop("positions", "prompt").lower() != "prompt":
            raise ExecutorError(f"{where}: patch applies to the prompt positions only (positions=prompt)")
        params["positions"] = "prompt"
    else:
        key = "direction" if name == "ablate" else "vector"
        params[key] = _check_ref(raw.pop(key), where)
        positions = raw.pop("positions", "all").lower()
        if positions not in ("all", "prompt"):
            raise ExecutorError(f"{where}: positions must be all or prompt, got {positions!r}")
        params["positions"] = positions
    if name == "steer":
        try:
            alpha = float(raw.pop("alpha", "1.0"))
        except ValueError:
            raise ExecutorError(f"{where}: alpha must be a number") from None
        if not math.isfinite(alpha):
            raise ExecutorError(f"{where}: alpha must be finite")
        params["alpha"] = alpha
        params["normalize"] = _bool(raw.pop("normalize", "true"), f"{where} normalize")
    return Intervention(name=name, layer_index=layer, params=params)


def format_intervention(iv: Intervention) -> str:
    """The spec string of an intervention (inverse of :func:`parse_intervention`)."""
    parts = [f"layer={iv.layer_index}"]
    for key, value in iv.params.items():
        parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return f"{iv.name}:" + ",".join(parts)


def _array_from_bytes(data: bytes, where: str) -> np.ndarray[Any, Any]:
    from vauban_trace.artifacts._codecs import decode_array, decode_json

    try:
        return np.asarray(decode_array(data), dtype=np.float32)
    except Exception:
        pass
    try:
        obj = decode_json(data)
    except Exception:
        raise ExecutorError(f"{where}: blob is neither safetensors nor JSON") from None
    try:
        return np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError):
        raise ExecutorError(f"{where}: JSON blob is not a list of numbers") from None


def load_array(ref: str, store: Any | None, *, where: str) -> np.ndarray[Any, Any]:
    """Fetch the array a reference names (digest from ``store``, or ``file:PATH``)."""
    if ref.startswith("file:"):
        path = Path(ref[len("file:"):]).expanduser()
        if not path.is_file():
            raise ExecutorError(f"{where}: file {str(path)!r} does not exist")
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        return _array_from_bytes(path.read_bytes(), where)
    if store is None:
        raise ExecutorError(f"{where}: {ref} names a blob but no artifact store is configured")
    try:
        data = store.get(ref)  # verifies the digest
    except ArtifactStoreError as exc:
        raise ExecutorError(f"{where}: cannot read {ref} from the artifact store: {exc}") from exc
    return _array_from_bytes(data, where)




class LayerSites(Protocol[_Ref_co]):
    """What :func:`locate` needs of an executor's layer map."""

    @property
    def count(self) -> int: ...

    def site(self, layer: int, site: str) -> _Ref_co | None: ...


def locate(spec: Intervention, layers: LayerSites[_Ref]) -> tuple[str, str, _Ref]:
    """(where, site, site reference) of ``spec`` in a model: ``where`` names the intervention in
    error messages; :class:`ExecutorError` for an unknown name, a layer out of range or a site the
    layer does not have."""
    where = f"intervention {format_intervention(spec)!r}"
    if spec.name not in NAMES:
        raise ExecutorError(f"{where}: unknown intervention {spec.name!r} (expected {', '.join(NAMES)})")
    if spec.layer_index >= layers.count:
        raise ExecutorError(
            f"{where}: layer {spec.layer_index} is out of range (model has {layers.count} layers: "
            f"0-{layers.count - 1})"
        )
    site = str(spec.params.get("site", "residual"))
    ref = layers.site(spec.layer_index, site)
    if ref is None:
        raise ExecutorError(f"{where}: this model has no {site} site in layer {spec.layer_index}")
    return where, site, ref


def reference_of(spec: Intervention, where: str) -> tuple[str, str]:
    """(parameter, reference) that ``spec`` reads: ``source`` for patch, ``direction`` for ablate,
    ``vector`` for steer; :class:`ExecutorError` when it is missing (an Intervention built without
    :func:`parse_intervention`)."""
    key = "source" if spec.name == "patch" else "direction" if spec.name == "ablate" else "vector"
    text = str(spec.params.get(key, ""))
    if not text:
        raise ExecutorError(f"{where}: missing parameter {key}")
    return key, text


__all__ = ["MAX_SEED", "NAMES", "SITES", "format_intervention", "load_array", "locate", "parse_intervention", "random_seed",
           "reference_of", "LayerSites"]
