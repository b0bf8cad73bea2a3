"""``TorchExecutor``: fully traced inference over a transformers model, one trace per request.

::

    import vauban_trace as vt
    from vauban_trace.executors.torch import TorchExecutor

    vt.configure(store_dir=".vauban")
    ex = TorchExecutor.from_pretrained("path/to/model", device="cpu")
    req = ex.make_request(["Hello", "Paris is"], layers=(0, 1), logprobs=True,
                          interventions=["steer:layer=1,vector=random:7,alpha=4"])
    result = ex.run(req, max_new_tokens=16)          # RunResult(trace_id, texts, token_ids, ...)
    trace = ex.trace(req, max_new_tokens=16)         # runs, flushes, and reads the rebuilt Trace back

Loading is lazy: ``from_pretrained`` checks the directory and reads the config at once (errors
name the path), and the weights are loaded inside the ``load`` stage of the first traced request,
so that request's trace shows the load. ``load()`` loads them untraced instead; reading
``capabilities`` or ``layers`` also loads (the layer list comes from the instantiated modules).

The stages of a request and what each records are in :mod:`._pipeline`; validation of everything
the caller can get wrong (layers out of range, bad sampling settings, intervention specs, unknown
weight names) happens before the root span opens and raises :class:`ExecutorError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

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
from vauban_trace.executors._requests import read_trace, trace_request
from vauban_trace.executors.torch import _load
from vauban_trace.executors.torch._capabilities import build_capabilities
from vauban_trace.executors.torch._layers import SITES, LayerMap, find_layers
from vauban_trace.executors.torch._score import ContinuationScore


@dataclass(frozen=True)
class RunResult(_BaseRunResult):
    """What one request produced (the evidence itself is in the trace), plus continuation scores."""

    scores: tuple[ContinuationScore, ...] = ()


@dataclass(frozen=True)
class RunOptions(GenerationSettings):
    """Validated generation (inherited) and recording settings of one run."""

    score_continuation: tuple[str, ...] | None = None
    deep_counters: bool = False
    sites: tuple[str, ...] = ("residual",)
    logits_positions: str = "last"
    weights: tuple[str, ...] = ()
    topk: int = 5
    ignore_eos: bool = False


def make_options(
    *,
    max_new_tokens: int = 0,
    do_sample: bool = False,
    seed: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    score_continuation: str | Sequence[str] | None = None,
    deep_counters: bool = False,
    sites: Sequence[str] = ("residual",),
    logits_positions: str = "last",
    weights: Sequence[str] = (),
    topk: int = 5,
    ignore_eos: bool = False,
) -> RunOptions:
    """Check the settings of :meth:`TorchExecutor.run`; :class:`ExecutorError` names the bad one.

    The generation settings are checked by :func:`~vauban_trace.executors._genparams.check_generation`
    (shared with the MLX executor: same rules, same messages).
    """
    gen = check_generation(max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                           temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
    check_int(topk, "topk", 1)
    score = check_score_continuation(score_continuation)
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ExecutorError(f"sites must be among {', '.join(SITES)}, got {list(sites)!r}")
    if logits_positions not in ("last", "all"):
        raise ExecutorError(f"logits_positions must be 'last' or 'all', got {logits_positions!r}")
    return RunOptions(
        **vars(gen), score_continuation=score,
        deep_counters=bool(deep_counters), sites=tuple(dict.fromkeys(sites)),
        logits_positions=logits_positions, weights=tuple(weights), topk=topk, ignore_eos=bool(ignore_eos),
    )


class TorchExecutor:
    """Traced inference over one transformers model on one device (see the module doc)."""

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        name: str | None = None,
        _source: _load.Source | None = None,
        _dtype: torch.dtype | str | None = None,
    ) -> None:
        self._source = _source
        self._dtype = _dtype
        self._loaded: _load.Loaded | None = None
        self._layers: LayerMap | None = None
        self._layers_note = ""
        self._capabilities: Capabilities | None = None
        if model is not None:
            if tokenizer is None:
                raise ExecutorError("TorchExecutor(model, tokenizer): a tokenizer is required")
            dev = device if device is not None else next(model.parameters()).device
            self.device = _load.resolve_device(dev)
            model.eval()
            model.to(self.device)
            self._attach(_load.wrap_loaded(model, tokenizer))
            self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        elif _source is not None:
            self.device = _load.resolve_device(device)
            self.name = name or _source.name
        else:
            raise ExecutorError("TorchExecutor needs a model and tokenizer (or use from_pretrained)")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        *,
        name: str | None = None,
        lazy: bool = True,
    ) -> TorchExecutor:
        """An executor for the model in ``path`` (a local directory; a hub id for users with network)."""
        source = _load.inspect_source(path)
        executor = cls(device=device, name=name, _source=source, _dtype=_load.resolve_dtype(dtype))
        if not lazy:
            executor.load()
        return executor

    def _attach(self, loaded: _load.Loaded) -> None:
        self._loaded = loaded
        self._layers, self._layers_note = find_layers(loaded.model)
        self._capabilities = build_capabilities(
            device=self.device, causal_lm=loaded.causal_lm, head_trusted=loaded.head_trusted,
            head_note=loaded.head_note, layers=self._layers, layers_note=self._layers_note,
        )

    def load(self) -> None:
        """Load the weights now (untraced); a no-op when they are loaded."""
        if self._loaded is None:
            assert self._source is not None
            self._attach(_load.load(self._source, self.device, self._dtype))

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _require(self) -> _load.Loaded:
        self.load()
        assert self._loaded is not None
        return self._loaded

    @property
    def model(self) -> Any:
        return self._require().model

    @property
    def tokenizer(self) -> Any:
        return self._require().tokenizer

    @property
    def layers(self) -> LayerMap | None:
        """The model's layer list, or ``None`` when it cannot be found (see ``layers_note``)."""
        self._require()
        return self._layers

    @property
    def layers_note(self) -> str:
        self._require()
        return self._layers_note

    @property
    def capabilities(self) -> Capabilities:
        self._require()
        assert self._capabilities is not None
        return self._capabilities

    @property
    def causal_lm(self) -> bool:
        if self._loaded is not None:
            return self._loaded.causal_lm
        assert self._source is not None
        return self._source.causal_lm

    # -- requests -------------------------------------------------------------------------
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
        """A :class:`TraceRequest` for one prompt or a batch.

        One prompt goes into ``input_text``. A batch is stored as a JSON list in the configured
        artifact store and named by ``input_ref`` (so its content follows the same capture rules
        as a single prompt), with ``metadata["batch_size"]``. Intervention specs are parsed here
        (:func:`parse_intervention`). Requested kinds: ``tokens`` always, ``text`` for causal
        models, ``logits``/``logprobs`` when asked, ``activation`` with layers,
        ``intervention_result`` with interventions, plus ``artifacts``.
        """
        return _requests.make_request(
            prompts, causal_lm=self.causal_lm, layers=layers, interventions=interventions, logits=logits,
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
        score_continuation: str | Sequence[str] | None = None,
        deep_counters: bool = False,
        prompts: Sequence[str] | None = None,
        sites: Sequence[str] = ("residual",),
        logits_positions: str = "last",
        weights: Sequence[str] = (),
        topk: int = 5,
        ignore_eos: bool = False,
    ) -> RunResult:
        """Run ``request`` as one traced request; see :mod:`._pipeline` for the stages.

        ``prompts`` overrides the request's input (a batch without a configured store).
        ``sites`` chooses the observed sites (residual, attn, mlp); ``logits_positions`` is
        ``last`` or ``all``; ``weights`` names parameters for weight snapshots (default: the
        input embedding) when ``weight_snapshot`` is requested; ``topk`` sizes the logits summary;
        ``ignore_eos`` generates through end-of-sequence tokens (fixed-length runs, benchmarks).
        """
        from vauban_trace.executors.torch._pipeline import run_request

        opts = make_options(
            max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed, temperature=temperature,
            top_k=top_k, top_p=top_p, stop=stop, score_continuation=score_continuation,
            deep_counters=deep_counters, sites=sites, logits_positions=logits_positions,
            weights=weights, topk=topk, ignore_eos=ignore_eos,
        )
        return run_request(self, request, opts, prompts)

    def trace(self, request: TraceRequest, **kwargs: Any) -> Trace:
        """:meth:`run`, then flush and return the Trace rebuilt from the embedded store."""
        return trace_request(self.run, request, **kwargs)


__all__ = ["RunOptions", "RunResult", "TorchExecutor", "make_options", "read_trace"]
