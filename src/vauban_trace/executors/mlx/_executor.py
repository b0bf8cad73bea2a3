"""``MlxExecutor``: traced inference over an mlx-lm model, one trace per request.

::

    import vauban_trace as vt
    from vauban_trace.contract import TraceRequest
    from vauban_trace.executors.mlx import MlxExecutor

    vt.configure(store_dir=".vauban")
    ex = MlxExecutor.from_pretrained("path/to/model")      # config checked now, weights in `load`
    req = TraceRequest(input_text="Paris is", collect_layers=(0, 1), return_logits=True,
                       return_logprobs=True,
                       requested_artifacts=("tokens", "text", "logits", "logprobs", "activation"))
    result = ex.run(req, max_new_tokens=8)                  # RunResult(trace_id, texts, token_ids, ...)
    sampled = ex.run(req, max_new_tokens=8, do_sample=True, seed=7, temperature=0.8, top_p=0.9,
                     stop=["\n"])                           # torch's tokens for seed 7 (CPU)

The weights are read by mlx-lm (``mlx_lm.utils.load_model``: the same ``model.safetensors`` as
transformers) and the tokenizer from the same directory (``mlx_lm.utils.load_tokenizer``, which
wraps the Hugging Face tokenizer files). Loading is lazy, as in the torch executor: the first
traced request shows a ``load`` stage; ``load()`` or reading ``capabilities`` loads untraced.

The stages of a request are in :mod:`._pipeline`, the interventions in :mod:`._intervene`.
Everything the caller can get wrong (a missing directory, a layer out of range, a bad
intervention, bad sampling settings or stop strings, a continuation count that fits neither one nor every prompt) raises :class:`ExecutorError` before the root span opens (for a
lazily loaded executor, what needs the weights is checked right after the ``load`` stage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Capabilities, Intervention, Trace, TraceRequest
from vauban_trace.executors import _requests
from vauban_trace.executors._common import RunResult as _BaseRunResult
from vauban_trace.executors._genparams import (
    GenerationSettings,
    check_generation,
    check_int,
    check_score_continuation,
)
from vauban_trace.executors.mlx._capabilities import build_capabilities
from vauban_trace.executors.mlx._layers import SITES_BUILT, MlxLayers, config_layer_count, find_layers
from vauban_trace.executors.mlx._score import ContinuationScore
from vauban_trace.executors.mlx._values import device_label

ALL_SITES = ("residual", "attn", "mlp")
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")


@dataclass(frozen=True)
class RunResult(_BaseRunResult):
    """What one request produced (the evidence itself is in the trace), plus continuation scores."""

    scores: tuple[ContinuationScore, ...] = ()


@dataclass(frozen=True)
class MlxRunOptions(GenerationSettings):
    """Validated generation (inherited) and recording settings of one run."""

    sites: tuple[str, ...] = ("residual",)
    logits_positions: str = "last"
    topk: int = 5
    ignore_eos: bool = False
    weights: tuple[str, ...] = ()
    score_continuation: tuple[str, ...] | None = None


def make_mlx_options(
    *, max_new_tokens: int = 0, sites: Sequence[str] = ("residual",), logits_positions: str = "last",
    topk: int = 5, ignore_eos: bool = False, weights: Sequence[str] = (),
    score_continuation: str | Sequence[str] | None = None, do_sample: bool = False, seed: int | None = None,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
) -> MlxRunOptions:
    """Check the settings of :meth:`MlxExecutor.run`; :class:`ExecutorError` names the bad one.

    The generation settings are checked by :func:`~vauban_trace.executors._genparams.check_generation`,
    the function the torch executor calls (same rules, same messages; a seed must be below ``2**64``).
    """
    gen = check_generation(max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                           temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
    check_int(topk, "topk", 1)
    if isinstance(sites, str) or not sites or any(s not in ALL_SITES for s in sites):
        raise ExecutorError(f"sites must be among {', '.join(ALL_SITES)}, got {sites!r}")
    if logits_positions not in ("last", "all"):
        raise ExecutorError(f"logits_positions must be 'last' or 'all', got {logits_positions!r}")
    if isinstance(weights, str) or any(not isinstance(w, str) or not w for w in weights):
        raise ExecutorError(f"weights must be a list of parameter names, got {weights!r}")
    score = check_score_continuation(score_continuation)
    return MlxRunOptions(
        **vars(gen), sites=tuple(dict.fromkeys(sites)), logits_positions=logits_positions, topk=topk,
        ignore_eos=bool(ignore_eos), weights=tuple(dict.fromkeys(weights)), score_continuation=score,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExecutorError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ExecutorError(f"{path} is not a JSON object")
    return value


class MlxExecutor:
    """Traced inference over one mlx-lm model (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise ExecutorError(f"model directory {str(directory)!r} does not exist (the MLX executor loads local directories)")
        if not (directory / "config.json").is_file():
            raise ExecutorError(f"{str(directory)!r} has no config.json: not a model directory")
        self.path = directory.resolve()
        self.config = _read_json(self.path / "config.json")
        self.name = name or self.path.name
        self.device = device_label()
        self._model: Any = None
        self._tokenizer: Any = None
        self._layers: MlxLayers | None = None
        self._layers_note = ""
        self._capabilities: Capabilities | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, name: str | None = None, lazy: bool = True) -> MlxExecutor:
        """An executor for the model in the local directory ``path``; ``lazy=False`` loads now."""
        executor = cls(path, name=name)
        if not lazy:
            executor.load()
        return executor

    # -- loading ----------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def eos_token_ids(self) -> frozenset[int]:
        """End-of-sequence ids: ``generation_config.json`` first, then ``config.json`` (transformers' rule)."""
        value = None
        gen = self.path / "generation_config.json"
        if gen.is_file():
            value = _read_json(gen).get("eos_token_id")
        if value is None:
            value = self.config.get("eos_token_id")
        if value is None:
            return frozenset(int(v) for v in getattr(self.tokenizer, "eos_token_ids", ()) or ())
        return frozenset([int(value)] if isinstance(value, int) else [int(v) for v in value])

    def load(self) -> None:
        """Load weights and tokenizer now (untraced); a no-op when loaded."""
        if self._model is not None:
            return
        from mlx_lm.utils import load_model, load_tokenizer

        try:
            model, config = load_model(self.path)
            tokenizer = load_tokenizer(self.path)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ExecutorError(f"mlx-lm cannot load {str(self.path)!r}: {type(exc).__name__}: {exc}") from exc
        self._model, self._tokenizer = model, tokenizer
        self._layers, self._layers_note = find_layers(model, config)
        self._capabilities = build_capabilities(
            device_kind=self.device, layers=self._layers, layers_note=self._layers_note)

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (mlx-lm's wrapper keeps it as ``_tokenizer``)."""
        self.load()
        return getattr(self._tokenizer, "_tokenizer", self._tokenizer)

    @property
    def layers(self) -> MlxLayers | None:
        self.load()
        return self._layers

    @property
    def layers_note(self) -> str:
        """Why no layer list was found (empty when one was)."""
        self.load()
        return self._layers_note

    @property
    def capabilities(self) -> Capabilities:
        self.load()
        assert self._capabilities is not None
        return self._capabilities

    def parameters(self) -> dict[str, Any]:
        """Every parameter by its dotted name (the names of the checkpoint for mlx-lm models)."""
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.parameters()))

    def resolve_weights(self, names: Sequence[str]) -> list[str]:
        """Check parameter names; none given: the input embedding. ``ExecutorError`` names a bad one."""
        params = self.parameters()
        if not names:
            found = [n for n in params if n.endswith(_EMBEDDING_SUFFIXES)][:1]
            if not found:
                raise ExecutorError("weight_snapshot: name the parameters to snapshot (weights=...); "
                                    "no input embedding parameter found")
            return found
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ExecutorError(f"unknown parameter {unknown[0]!r} (e.g. {', '.join(list(params)[:3])})")
        return list(names)

    def layer_count(self) -> int | None:
        """The layer count: from the loaded list, else from the config (no loading)."""
        if self._layers is not None:
            return self._layers.count
        return config_layer_count(self.config)

    # -- requests ---------------------------------------------------------------------------
    def make_request(
        self,
        prompts: str | Sequence[str],
        *,
        layers: Sequence[int] = (),
        interventions: Sequence[str | Intervention] = (),
        logits: bool = False,
        logprobs: bool = False,
        artifacts: Sequence[str] = (),
        chat: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> TraceRequest:
        """A :class:`TraceRequest` for one prompt or a batch, built as ``TorchExecutor.make_request`` builds it.

        The same framework-free builder (:func:`vauban_trace.executors.make_request`), so both
        executors build equal requests: one prompt in ``input_text``; a batch stored as a JSON list
        in the configured artifact store (``input_ref``, ``metadata["batch_size"]``; without
        ``vauban_trace.configure()`` a ``ConfigurationError``); intervention specs parsed
        (``steer:layer=1,vector=random:5,alpha=4``); requested kinds ``tokens``, ``text`` (every
        mlx-lm model has a language-model head), ``logits``/``logprobs`` when asked,
        ``activation`` with layers, ``intervention_result`` with interventions, plus
        ``artifacts``. Nothing is loaded and torch is never imported.
        """
        return _requests.make_request(
            prompts, causal_lm=True, layers=layers, interventions=interventions, logits=logits,
            logprobs=logprobs, artifacts=artifacts, chat=chat, metadata=metadata,
        )

    def run(
        self,
        request: TraceRequest,
        *,
        max_new_tokens: int = 0,
        do_sample: bool = False,
        seed: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        sites: Sequence[str] = ("residual",),
        logits_positions: str = "last",
        topk: int = 5,
        ignore_eos: bool = False,
        weights: Sequence[str] = (),
        score_continuation: str | Sequence[str] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> RunResult:
        """Run ``request`` as one traced request (stages in :mod:`._pipeline`).

        ``max_new_tokens`` > 0 generates (:mod:`._decode`): greedily, or with ``do_sample=True``
        sampled after ``temperature``, ``top_k`` and ``top_p``, drawn as the torch executor draws on
        the CPU for the same ``seed`` (:mod:`._sample`); ``stop`` (one string or several) ends a
        row when its decoded tail contains one (stop reason ``stop_string``; the returned text is
        cut before it); ``sites`` are among ``residual``, ``attn`` and
        ``mlp`` (a site a layer lacks is recorded missing); the request's ``interventions`` are
        applied (:mod:`._intervene`); ``logits_positions`` is ``last`` or ``all``; ``topk`` sizes the
        logits summary; ``ignore_eos`` generates exactly ``max_new_tokens`` tokens; ``weights``
        names parameters (``model.layers.0.mlp.up_proj.weight``) for ``weight_snapshot``
        artifacts (default when the kind is requested: the input embedding);
        ``score_continuation`` (one string, or one per prompt) scores that continuation after each
        prompt (stage ``score``, a ``metric`` artifact, ``RunResult.scores``); ``prompts`` overrides
        the request's input (a batch without a configured store). A request holding several prompts
        (``input_ref`` of a JSON list, as ``TorchExecutor.make_request`` stores a batch) runs them
        left-padded in one batch (:mod:`._batch`).
        """
        from vauban_trace.executors.mlx._pipeline import run_request

        opts = make_mlx_options(max_new_tokens=max_new_tokens, sites=sites, logits_positions=logits_positions,
                                topk=topk, ignore_eos=ignore_eos, weights=weights,
                                score_continuation=score_continuation, do_sample=do_sample, seed=seed,
                                temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
        return run_request(self, request, opts, prompts)

    def trace(self, request: TraceRequest, **kwargs: Any) -> Trace:
        """:meth:`run`, then flush and return the Trace rebuilt from the embedded store.

        Refuses (``ConfigurationError``, nothing run) without a configured session keeping a store.
        """
        return _requests.trace_request(self.run, request, **kwargs)


__all__ = ["ALL_SITES", "SITES_BUILT", "ContinuationScore", "MlxExecutor", "MlxRunOptions", "RunResult",
           "make_mlx_options"]
