"""The stages of one traced MLX request, in order, with the torch executor's names and artifacts.

=========  =================================================================================
stage      what happens / what is recorded on it
=========  =================================================================================
load       only in the first request of a lazily loaded executor: mlx-lm weights, tokenizer
tokenize   chat template (optional), tokenization with the Hugging Face tokenizer;
           ``tokens`` artifact of the prompt ids; token_count, batch_size
batch      the ``mx.array`` of input ids, left-padded to the longest prompt (:mod:`._batch`);
           metadata padding side, padded length, padding tokens, pad id; input_bytes derived
           from the array
prefill    the prompt forward pass (mlx-lm KV cache when decoding follows) with the residual
           capture installed, evaluated once (``mx.eval`` of logits and captured states);
           ``logits`` / ``logprobs`` of the last (or every) position, top-k in the summary
observe    ``activation`` artifacts of each requested (layer, site): residual, attn, mlp
           (layer, site, module, module_class, positions=prompt, source_dtype);
           ``weight_snapshot`` artifacts of named parameters (metadata parameter, source_dtype)
intervene  with interventions: a clean reference pass of the prompt without them, then one
           ``intervention_result`` artifact per intervention: parameters, hidden-state norm and
           projection before/after at its site, the change of the clean top token's logprob
decode     the loop over ``model(tokens, cache=cache)`` (:mod:`._decode`; intervention taps
           installed): greedy, or sampled as torch samples (:mod:`._sample`); each row stopping
           on its own (eos, stop string, length); per-step facts folded into vauban.decode.* attributes
           (and ``intervention_calls`` in its metadata); ``logprobs`` of the chosen tokens
score      with ``score_continuation``: the log-likelihood of the continuation after each
           prompt (:mod:`._score`); one ``metric`` artifact (sum and per-token logprobs and
           token ids per sequence)
emit       detokenization: ``text`` (cut before a stop string) and ``tokens`` of the generated
           output; usage and finish reasons on the root span
=========  =================================================================================

The prompt pass runs with the intervention taps installed first and the activation capture
second, so activations record the intervened hidden state (as in the torch executor).

Several prompts run as one left-padded batch, with the torch executor's artifact shapes
(``[batch, ...]``; the ``tokens``/``text`` artifacts are lists of rows for a batch, one row for one
prompt). A site a layer does not have is recorded missing per layer on the observe span; a
``metric`` requested without ``score_continuation`` is recorded missing (``not_requested``).
The root span carries the request's sampling settings as the torch executor's does
(``gen_ai.request.seed`` / ``top_k`` / ``top_p``, and ``temperature`` when sampling).

Counters: token_count and batch_size as in the torch executor (derived / declared),
``duration_s`` measured, ``memory_bytes`` from the MLX allocator peak (measured, method
``mlx.peak_memory``), ``sync_points`` = the evaluations this executor makes in the stage
(measured); copies and device time are ``unavailable``. Every artifact is converted to numpy
inside ``instrumentation_work()``; that copy is counted as ``instrumentation_d2h_*``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import TraceRequest
from vauban_trace.executors._common import request_inputs
from vauban_trace.executors.mlx._batch import Padded, check_batchable, forward, left_pad, log_softmax
from vauban_trace.executors.mlx._counters import EvalCounter, MlxCopyProbe, MlxMemoryProbe
from vauban_trace.executors.mlx._decode import (
    STOP_EOS,
    STOP_LENGTH,
    STOP_STRING,
    Decoded,
    DecodeParams,
    decode,
)
from vauban_trace.executors.mlx._intervene import InterventionSet, ResolvedIntervention, resolve
from vauban_trace.executors.mlx._layers import ActivationCapture
from vauban_trace.executors.mlx._score import ContinuationScore, score_continuations
from vauban_trace.executors.mlx._values import dtype_name
from vauban_trace.instrument import probes, record_artifact, record_missing, stage, traced_request
from vauban_trace.instrument._probes import instrumentation_work

if TYPE_CHECKING:
    from vauban_trace.executors.mlx._executor import MlxExecutor, MlxRunOptions, RunResult

_FINISH = {STOP_EOS: "stop", STOP_STRING: "stop", STOP_LENGTH: "length"}
_OWN_KINDS = frozenset(
    {"text", "tokens", "logits", "logprobs", "activation", "intervention_result", "weight_snapshot", "metric"}
)


def _inputs(request: TraceRequest, prompts: Sequence[str] | None) -> tuple[list[str] | None, list[list[int]] | None]:
    """The request's prompts, as texts or ids (``prompts`` overrides the request's input)."""
    if prompts is not None:
        texts = list(prompts)
        if isinstance(prompts, str) or not texts or any(not isinstance(t, str) for t in texts):
            raise ExecutorError("prompts must be a non-empty list of strings")
        return texts, None
    return request_inputs(request)


class _Plan:
    """Everything checked before the root span opens."""

    def __init__(self, ex: MlxExecutor, request: TraceRequest, opts: MlxRunOptions,
                 prompts: Sequence[str] | None) -> None:
        self.texts, self.ids = _inputs(request, prompts)
        self.batch = len(self.texts) if self.texts is not None else 1
        if opts.score_continuation is not None and len(opts.score_continuation) not in (1, self.batch):
            raise ExecutorError(
                f"score_continuation: give one continuation or one per prompt ({self.batch}), "
                f"got {len(opts.score_continuation)}"
            )
        self.continuations: list[list[int]] = []
        self.distinct_continuations = 0
        self.requested = set(request.requested_artifacts)
        self.want_logits = request.return_logits or "logits" in self.requested
        self.want_logprobs = request.return_logprobs or "logprobs" in self.requested
        count = ex.layer_count()
        self.layers = list(request.collect_layers)
        if not self.layers and "activation" in self.requested and count is not None:
            self.layers = list(range(count))
        if not ex.loaded or not request.interventions:  # else resolve() names the intervention
            wanted = [*self.layers, *(iv.layer_index for iv in request.interventions)]
        else:
            wanted = self.layers
        bad = [i for i in wanted if count is not None and i >= count]
        if bad and count is not None:
            raise ExecutorError(f"layer {bad[0]} is out of range: the model has {count} layers (0-{count - 1})")
        self.interventions = tuple(request.interventions)
        self.resolved: list[ResolvedIntervention] = []
        if ex.loaded:  # else right after the load stage
            self.resolve_interventions(ex)
        self.want_weights = "weight_snapshot" in self.requested or bool(opts.weights)
        self.weight_names: list[str] = []
        if self.want_weights and ex.loaded:  # else right after the load stage
            self.weight_names = ex.resolve_weights(opts.weights)
        if ex.loaded:  # else right after the load stage
            self.check_loaded(ex, request, opts)

    def check_loaded(self, ex: MlxExecutor, request: TraceRequest, opts: MlxRunOptions) -> None:
        """The checks that need the model and tokenizer."""
        if request.apply_chat_template and getattr(ex.tokenizer, "chat_template", None) is None:
            raise ExecutorError("apply_chat_template was requested but the tokenizer has no chat template")
        check_batchable(ex.model, self.batch)
        if opts.score_continuation is not None:
            conts = list(opts.score_continuation)
            if len(conts) == 1:
                conts = conts * self.batch
            self.continuations = [[int(i) for i in ex.tokenizer(c, add_special_tokens=False)["input_ids"]]
                                  for c in conts]
            if any(not c for c in self.continuations):
                raise ExecutorError("score_continuation tokenized to zero tokens")
            self.distinct_continuations = len(set(conts))

    def resolve_interventions(self, ex: MlxExecutor) -> None:
        if not self.interventions:
            return
        layers = ex.layers
        if layers is None:
            raise ExecutorError(f"cannot apply interventions: {ex.layers_note}")
        from vauban_trace.instrument import current_session

        session = current_session()
        store = session.artifact_store if session is not None else None
        self.resolved = [resolve(iv, layers, store) for iv in self.interventions]


@contextmanager
def _recording() -> Iterator[None]:
    with instrumentation_work():
        yield


def run_request(ex: MlxExecutor, request: TraceRequest, opts: MlxRunOptions,
                prompts: Sequence[str] | None = None) -> RunResult:
    from vauban_trace import __version__
    from vauban_trace.executors.mlx._executor import RunResult

    plan = _Plan(ex, request, opts, prompts)
    needs_load = not ex.loaded
    counter = EvalCounter()
    with probes(MlxMemoryProbe(), counter, MlxCopyProbe(ex.device)), traced_request(
        request, model=ex.name, provider="mlx_lm", operation="chat" if request.apply_chat_template else "text_completion",
        capabilities=None if needs_load else ex.capabilities, executor="mlx",
        executor_version=f"vauban-trace {__version__}; {_framework_versions()}",
        device=ex.device, max_tokens=opts.max_new_tokens, seed=opts.seed,
        temperature=opts.temperature if opts.do_sample else None, top_p=opts.top_p, top_k=opts.top_k,
    ) as req:
        if needs_load:
            with stage("load", device=ex.device) as st:
                ex.load()
                st.set_metadata({"class": type(ex.model).__name__, "missing_weights": 0})
            req.set_capabilities(ex.capabilities)
            if plan.want_weights:
                plan.weight_names = ex.resolve_weights(opts.weights)
            plan.resolve_interventions(ex)
            plan.check_loaded(ex, request, opts)
        return _run_stages(ex, req, request, opts, plan, counter, RunResult)


def _framework_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    words = []
    for dist in ("mlx", "mlx-lm"):
        try:
            words.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            words.append(f"{dist} unknown")
    return "; ".join(words)


def _declare_missing(ex: MlxExecutor, plan: _Plan, opts: MlxRunOptions) -> None:
    for kind in sorted(plan.requested - _OWN_KINDS):
        record_missing(kind, "unsupported", f"the MLX executor does not produce {kind} artifacts")
    if plan.layers and ex.layers is None:
        record_missing("activation", "unsupported", ex.capabilities.notes.get("can_emit_activations", ""))


def _run_stages(ex: MlxExecutor, req: Any, request: TraceRequest, opts: MlxRunOptions, plan: _Plan,
                counter: EvalCounter, result_cls: Any) -> RunResult:
    model, tok, dev, n = ex.model, ex.tokenizer, ex.device, plan.batch
    _declare_missing(ex, plan, opts)

    # -- tokenize ---------------------------------------------------------------------------
    with stage("tokenize", batch_size=n, device="cpu") as st:
        if plan.ids is not None:
            prompt_ids = plan.ids
        else:
            assert plan.texts is not None
            inputs = plan.texts
            if request.apply_chat_template:
                inputs = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                  add_generation_prompt=True) for t in inputs]
            prompt_ids = [[int(i) for i in tok(t, add_special_tokens=not request.apply_chat_template)["input_ids"]]
                          for t in inputs]
        if any(not p for p in prompt_ids):
            raise ExecutorError("a prompt tokenized to zero tokens")
        n_prompt = sum(len(p) for p in prompt_ids)
        st.set_counter("token_count", n_prompt, provenance="derived")
        st.set_metadata({"chat_template": request.apply_chat_template, "lengths": [len(p) for p in prompt_ids]})
        with _recording():
            record_artifact("tokens", prompt_ids[0] if n == 1 else prompt_ids, metadata={"role": "prompt"})

    # -- batch ------------------------------------------------------------------------------
    pad_id = _pad_id(tok, ex)
    with stage("batch", batch_size=n, device=dev) as st:
        padded = left_pad(prompt_ids, pad_id)
        counter.eval(padded.ids)
        width = padded.width
        st.set_counter("token_count", n * width, provenance="derived")
        st.set_counter("input_bytes", int(padded.ids.nbytes), provenance="derived")
        st.set_metadata({"padding_side": "left", "padded_length": width, "padding_tokens": n * width - n_prompt,
                         "pad_token_id": pad_id})

    for item in plan.resolved:  # patch sources must match this request's hidden-state shape
        if item.source is not None and tuple(item.source.shape[:2]) != (n, width):
            raise ExecutorError(
                f"patch at layer {item.spec.layer_index}: source shape {list(item.source.shape)} does not match "
                f"this request's hidden state [{n}, {width}, ...]"
            )

    layers = ex.layers
    ivset = InterventionSet(plan.resolved) if plan.resolved else None
    capture = None
    if plan.layers and layers is not None:
        capture = ActivationCapture(layers, [(i, s) for i in plan.layers for s in opts.sites])
    generate = opts.max_new_tokens > 0
    # -- prefill ----------------------------------------------------------------------------
    with stage("prefill", batch_size=n, device=dev) as st:
        st.set_counter("token_count", n_prompt, provenance="derived")
        # intervention taps first: the capture then sees the intervened output
        with ivset.installed("prefill") if ivset is not None else nullcontext(), \
                capture.installed() if capture is not None else nullcontext():
            logits, cache = forward(model, padded, keep_cache=generate)
        counter.eval(logits, *(capture.arrays() if capture is not None else ()),
                     *(ivset.arrays() if ivset is not None else ()))
        st.set_counter("output_bytes", int(logits.nbytes), provenance="derived")
        if plan.want_logits or plan.want_logprobs:
            _record_logits(logits, opts, plan)
    # -- observe ----------------------------------------------------------------------------
    if capture is not None or plan.weight_names:
        with stage("observe", batch_size=n, device=dev):
            _observe(capture)
            if plan.weight_names:
                _snapshot(ex, plan)
    # -- intervene --------------------------------------------------------------------------
    if ivset is not None:
        with stage("intervene", batch_size=n, device=dev):
            _intervene(ivset, model, padded, logits, counter)
    # -- decode -----------------------------------------------------------------------------
    decoded: Decoded | None = None
    if generate:
        params = DecodeParams(
            max_new_tokens=opts.max_new_tokens, pad_token_id=pad_id,
            eos_token_ids=frozenset() if opts.ignore_eos else ex.eos_token_ids(), do_sample=opts.do_sample,
            seed=opts.seed, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, stop=opts.stop,
            return_logprobs=plan.want_logprobs,
        )
        with stage("decode", batch_size=n, device=dev) as st:
            with ivset.installed("decode") if ivset is not None else nullcontext():
                decoded = decode(model, logits, cache, params, counter, _detokenizer(tok))
            _decode_attrs(st, decoded, ivset)
            if decoded.chosen_logprobs is not None:
                with _recording():
                    record_artifact("logprobs", decoded.chosen_logprobs, metadata={
                        "positions": "generated", "lengths": [len(t) for t in decoded.tokens]})
        del cache
    elif "text" in plan.requested:
        record_missing("text", "not_requested", "max_new_tokens is 0: nothing was generated")
    # -- score ------------------------------------------------------------------------------
    scores: list[ContinuationScore] = []
    if opts.score_continuation is not None:
        with stage("score", batch_size=n, device=dev) as st:
            with ivset.installed("score") if ivset is not None else nullcontext():
                scores = score_continuations(model, prompt_ids, plan.continuations, pad_id, counter)
            st.set_counter("token_count", sum(len(p) + len(c) for p, c in zip(prompt_ids, plan.continuations,
                                                                              strict=True)), provenance="derived")
            with _recording():
                record_artifact("metric", {
                    "metric": "continuation_logprob",
                    "sum_logprob": [s.sum_logprob for s in scores],
                    "token_logprobs": [list(s.token_logprobs) for s in scores],
                    "token_ids": [list(s.token_ids) for s in scores],
                }, metadata={"metric": "continuation_logprob", "continuations": plan.distinct_continuations})
    elif "metric" in plan.requested:
        record_missing("metric", "not_requested", "no score_continuation was given: nothing was scored")
    # -- emit -------------------------------------------------------------------------------
    texts: list[str] = []
    gen: list[list[int]] = []
    reasons: list[str] = []
    if decoded is not None:
        with stage("emit", batch_size=n, device="cpu") as st:
            gen = decoded.tokens
            detok = _detokenizer(tok)
            for ids, cut in zip(gen, decoded.stop_cut, strict=True):
                text = detok(ids)
                texts.append(text[:cut] if cut is not None else text)
            reasons = [_FINISH[r] for r in decoded.stop_reasons]
            st.set_counter("token_count", sum(len(g) for g in gen), provenance="derived")
            with _recording():
                record_artifact("text", texts[0] if n == 1 else texts, metadata={"role": "completion"})
                record_artifact("tokens", gen[0] if n == 1 else gen, metadata={"role": "completion"})
        req.set_finish_reasons(reasons)
    req.set_usage(input_tokens=n_prompt, output_tokens=sum(len(g) for g in gen))
    result: RunResult = result_cls(
        trace_id=req.trace_id, texts=tuple(texts), token_ids=tuple(tuple(g) for g in gen),
        finish_reasons=tuple(reasons), prompt_token_ids=tuple(tuple(p) for p in prompt_ids),
        stop_reasons=tuple(decoded.stop_reasons) if decoded is not None else (), scores=tuple(scores),
    )
    return result


def _detokenizer(tok: Any) -> Any:
    def detok(ids: Sequence[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=True))

    return detok


def _pad_id(tok: Any, ex: MlxExecutor) -> int:
    value = getattr(tok, "pad_token_id", None)
    if isinstance(value, int):
        return value
    eos = ex.eos_token_ids()
    return min(eos) if eos else 0


def _record_logits(logits: mx.array, opts: MlxRunOptions, plan: _Plan) -> None:
    values = logits[:, -1, :] if opts.logits_positions == "last" else logits
    meta = {"positions": opts.logits_positions, "padding": "left"}
    with _recording():
        if plan.want_logits:
            record_artifact("logits", values, metadata={**meta, "source_dtype": dtype_name(values.dtype)}, topk=opts.topk)
        if plan.want_logprobs:
            record_artifact("logprobs", log_softmax(values), metadata=meta, topk=opts.topk)


def _observe(capture: ActivationCapture | None) -> None:
    if capture is None:
        return
    with _recording():
        for ref, array in capture.items():
            if array is None:
                record_missing("activation", "failed", f"{ref.path} did not run during prefill", ref.layer)
                continue
            record_artifact("activation", array, layer=ref.layer, metadata={
                "site": ref.site, **ref.describe(), "positions": "prompt", "source_dtype": dtype_name(array.dtype)})
        for layer, site in capture.absent:
            record_missing("activation", "unsupported", f"layer {layer} has no {site} module", layer)


def _intervene(ivset: InterventionSet, model: Any, padded: Padded, logits: mx.array, counter: EvalCounter) -> None:
    """A clean pass of the prompt (no taps installed), then one ``intervention_result`` per intervention."""
    clean_logits, _ = forward(model, padded)
    clean = log_softmax(clean_logits[:, -1, :])
    dirty = log_softmax(logits[:, -1, :])
    top = mx.argmax(clean, axis=-1, keepdims=True)
    picked = (top, mx.take_along_axis(clean, top, axis=-1), mx.take_along_axis(dirty, top, axis=-1),
              mx.argmax(dirty, axis=-1))
    counter.eval(*picked)
    with _recording():
        top_ids, lp_clean, lp_dirty, top_dirty = (np.array(a).reshape(-1).tolist() for a in picked)
        lp_effect: dict[str, Any] = {
            "clean_top_token_ids": top_ids, "clean_top_logprobs": lp_clean,
            "intervened_logprobs_of_clean_top": lp_dirty,
            "logprob_change": [d - c for d, c in zip(lp_dirty, lp_clean, strict=True)],
            "intervened_top_token_ids": top_dirty,
            "scope": "all interventions of the request together, last prompt position",
        }
        for hook in ivset.hooks:
            spec = hook.item.spec
            value: dict[str, Any] = {
                "name": spec.name, "layer": spec.layer_index, "params": dict(spec.params),
                "site_module": hook.item.site_path, "effect": hook.effect(), "logits_effect": lp_effect,
            }
            if hook.item.vector_norm is not None:
                value["vector_input_norm"] = hook.item.vector_norm
            record_artifact("intervention_result", value, layer=spec.layer_index,
                            metadata={"intervention": spec.name, "site": hook.item.site})


def _snapshot(ex: MlxExecutor, plan: _Plan) -> None:
    params = ex.parameters()
    with _recording():
        for name in plan.weight_names:
            value = params[name]
            record_artifact("weight_snapshot", value, metadata={"parameter": name, "source_dtype": dtype_name(value.dtype)})


def _decode_attrs(st: Any, d: Decoded, ivset: InterventionSet | None) -> None:
    times = d.step_times_s
    arr = np.asarray(times, dtype=np.float64)
    st.set_attribute(sc.DECODE_STEPS, len(times))
    st.set_attribute(sc.DECODE_STEP_P50_S, float(np.percentile(arr, 50)) if times else 0.0)
    st.set_attribute(sc.DECODE_STEP_P95_S, float(np.percentile(arr, 95)) if times else 0.0)
    st.set_attribute(sc.DECODE_STEP_MAX_S, max(times) if times else 0.0)
    st.set_attribute(sc.DECODE_STEP_MEAN_S, statistics.fmean(times) if times else 0.0)
    st.set_attribute(sc.DECODE_STOP_REASON, d.loop_stop_reason)
    st.set_counter("token_count", sum(len(t) for t in d.tokens), provenance="derived")
    meta: dict[str, Any] = {"stop_reasons": d.stop_reasons, "forward_steps": d.forward_steps,
                            "generated": [len(t) for t in d.tokens]}
    if ivset is not None:  # how often each intervention acted on generated positions
        meta["intervention_calls"] = [h.calls.get("decode", 0) for h in ivset.hooks]
    st.set_metadata(meta)


__all__ = ["run_request"]
