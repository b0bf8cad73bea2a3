"""The stages of one traced request, in order, and what each records.

=========  =================================================================================
stage      what happens / what is recorded on it
=========  =================================================================================
load       only in the first request of a lazily loaded executor: weights and tokenizer
tokenize   chat template (optional) and tokenization on the host; ``tokens`` artifact of the
           prompt ids; token_count = prompt tokens, batch_size
batch      left padding (right for encoders), attention mask, copy to the device;
           metadata: padded length, padding tokens, pad id
prefill    the prompt forward pass with observe and intervention hooks installed (stage
           ``forward`` for encoders); ``logits``/``logprobs`` artifacts of the last (or every)
           position with top-k ids and values in the summary
observe    ``activation`` artifacts (layer, site, module, shape, dtype, digest, summary) of the
           hidden states captured during prefill; ``weight_snapshot`` artifacts
intervene  a clean reference forward pass with the hooks suspended, then one
           ``intervention_result`` artifact per intervention: parameters, hidden-state norm and
           projection before/after at its site, and the change of the clean top token's logprob
decode     the generation loop; per-step facts aggregated on the span (vauban.decode.steps,
           step_p50_s, step_p95_s, step_max_s, step_mean_s, stop_reason); ``logprobs`` artifact
           of the chosen tokens when logprobs were asked
score      log-likelihood of the given continuation(s): one ``metric`` artifact (sum and
           per-token logprobs per sequence)
emit       ``text`` and ``tokens`` artifacts of the generated output; usage and finish reasons
           on the root span
=========  =================================================================================

Requested kinds the executor cannot produce are recorded missing on the root span with reason
``unsupported`` and the capability note, before any stage runs. Artifact recording runs inside
``instrumentation_work()``, so the copies it makes are counted as ``instrumentation_d2h_*``, not as
the workload's.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import TraceRequest
from vauban_trace.executors._common import request_inputs
from vauban_trace.executors.torch import _decode
from vauban_trace.executors.torch._intervene import InterventionSet, ResolvedIntervention, resolve
from vauban_trace.executors.torch._observe import ActivationCapture
from vauban_trace.executors.torch._score import score_continuations
from vauban_trace.instrument import probes, record_artifact, record_missing, stage, traced_request
from vauban_trace.instrument._probes import instrumentation_work

if TYPE_CHECKING:
    from vauban_trace.executors.torch._executor import RunOptions, RunResult, TorchExecutor

_FINISH = {_decode.STOP_EOS: "stop", _decode.STOP_STRING: "stop", _decode.STOP_LENGTH: "length"}
_OWN_KINDS = frozenset(
    {"text", "tokens", "logits", "logprobs", "activation", "intervention_result", "weight_snapshot", "metric"}
)


def _make_probes(device: torch.device, deep: bool) -> list[Any]:
    from vauban_trace.executors.torch._counters import make_probes

    return list(make_probes(device, deep=deep))


def _inputs(request: TraceRequest, prompts: Sequence[str] | None) -> tuple[list[str] | None, list[list[int]] | None]:
    if prompts is not None:
        texts = list(prompts)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise ExecutorError("prompts must be a non-empty list of strings")
        return texts, None
    return request_inputs(request)


class _Plan:
    """Everything checked before the root span opens."""

    def __init__(self, ex: TorchExecutor, request: TraceRequest, opts: RunOptions, prompts: Sequence[str] | None) -> None:
        self.texts, self.ids = _inputs(request, prompts)
        caps = ex.capabilities
        loaded = ex._require()
        self.batch = len(self.texts) if self.texts is not None else 1
        requested = set(request.requested_artifacts)
        self.want_logits = request.return_logits or "logits" in requested
        self.want_logprobs = request.return_logprobs or "logprobs" in requested
        self.head = loaded.head_trusted
        layers = ex._layers
        count = layers.count if layers is not None else 0
        self.layers_to_collect: list[int] = list(request.collect_layers)
        if not self.layers_to_collect and "activation" in requested:
            self.layers_to_collect = list(range(count))
        if layers is not None:
            bad = [i for i in self.layers_to_collect if i >= count]
            if bad:
                raise ExecutorError(
                    f"layer {bad[0]} is out of range: the model has {count} layers (0-{count - 1})"
                )
        if request.interventions and layers is None:
            raise ExecutorError(f"cannot apply interventions: {ex._layers_note}")
        self.want_weights = "weight_snapshot" in requested or bool(opts.weights)
        params = dict(loaded.model.named_parameters())
        names = list(opts.weights)
        if self.want_weights and not names:
            try:
                emb = loaded.model.get_input_embeddings()
            except (NotImplementedError, AttributeError):
                emb = None
            names = [n for n, p in params.items() if emb is not None and p is getattr(emb, "weight", None)][:1]
            if not names:
                raise ExecutorError("weight_snapshot: name the parameters to snapshot (weights=...); "
                                    "this model exposes no input embedding")
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ExecutorError(f"unknown parameter {unknown[0]!r} (e.g. {', '.join(list(params)[:3])})")
        self.weight_names = names
        if opts.score_continuation is not None and len(opts.score_continuation) not in (1, self.batch):
            raise ExecutorError(
                f"score_continuation: give one continuation or one per prompt ({self.batch}), "
                f"got {len(opts.score_continuation)}"
            )
        if request.apply_chat_template and getattr(loaded.tokenizer, "chat_template", None) is None:
            raise ExecutorError("apply_chat_template was requested but the tokenizer has no chat template")
        store = None
        from vauban_trace.instrument import current_session

        session = current_session()
        if session is not None:
            store = session.artifact_store
        self.resolved: list[ResolvedIntervention] = []
        if layers is not None:
            for iv in request.interventions:
                self.resolved.append(resolve(iv, layers, store, ex.device, None))
        self.unsupported = {
            kind: caps.notes.get(f"can_emit_{kind}", "") for kind in ("logits", "logprobs") if not self.head
        }
        self.requested = requested


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


@contextlib.contextmanager
def _recording() -> Iterator[None]:
    with instrumentation_work(), torch.inference_mode():
        yield


def _precheck_layers(ex: TorchExecutor, request: TraceRequest) -> None:
    """Layer indices against the config's layer count, before weights are loaded."""
    from vauban_trace.executors.torch._layers import config_layer_count

    assert ex._source is not None
    count = config_layer_count(ex._source.config)
    wanted = [*request.collect_layers, *(i.layer_index for i in request.interventions)]
    bad = [i for i in wanted if count is not None and i >= count]
    if bad and count is not None:
        raise ExecutorError(f"layer {bad[0]} is out of range: the model has {count} layers (0-{count - 1})")


def run_request(ex: TorchExecutor, request: TraceRequest, opts: RunOptions, prompts: Sequence[str] | None) -> RunResult:
    from vauban_trace import __version__
    from vauban_trace.executors.torch._executor import RunResult

    needs_load = not ex.loaded
    plan = None
    if needs_load:
        _precheck_layers(ex, request)
    else:
        plan = _Plan(ex, request, opts, prompts)  # every check before the root span opens
    dev = str(ex.device)
    probe_list = _make_probes(ex.device, opts.deep_counters)
    operation = "embeddings" if not ex.causal_lm else ("chat" if request.apply_chat_template else "text_completion")
    with probes(*probe_list):
        with traced_request(
            request, model=ex.name, provider="huggingface.transformers", operation=operation,
            capabilities=None if needs_load else ex.capabilities, executor="torch",
            executor_version=f"vauban-trace {__version__}; torch {torch.__version__}", device=dev,
            max_tokens=opts.max_new_tokens if ex.causal_lm else None, seed=opts.seed,
            temperature=opts.temperature if opts.do_sample else None, top_p=opts.top_p, top_k=opts.top_k,
        ) as req:
            if needs_load:
                with stage("load", device=dev) as st:
                    ex.load()
                    loaded = ex._require()
                    st.set_metadata({"class": type(loaded.model).__name__,
                                     "missing_weights": len(loaded.missing_weights)})
                _set_capabilities(req, ex)
                plan = _Plan(ex, request, opts, prompts)
            assert plan is not None
            return _run_stages(ex, req, request, opts, plan, RunResult)


def _set_capabilities(req: Any, ex: TorchExecutor) -> None:
    req.set_capabilities(ex.capabilities)


def _run_stages(ex: TorchExecutor, req: Any, request: TraceRequest, opts: RunOptions, plan: _Plan, result_cls: Any) -> RunResult:
    loaded = ex._require()
    model, tok, device, dev = loaded.model, loaded.tokenizer, ex.device, str(ex.device)
    layers = ex._layers
    for kind, note in plan.unsupported.items():
        if kind in plan.requested or (kind == "logits" and plan.want_logits) or (kind == "logprobs" and plan.want_logprobs):
            record_missing(kind, "unsupported", note)
    for kind in sorted(plan.requested - _OWN_KINDS):
        record_missing(kind, "unsupported", f"the torch executor does not produce {kind} artifacts")
    if plan.layers_to_collect and layers is None:
        record_missing("activation", "unsupported", ex._layers_note)

    # -- tokenize ---------------------------------------------------------------------------
    with stage("tokenize", batch_size=plan.batch, device="cpu") as st:
        if plan.ids is not None:
            prompt_ids = plan.ids
        else:
            assert plan.texts is not None
            inputs = plan.texts
            if request.apply_chat_template:
                inputs = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True) for t in inputs]
            prompt_ids = [list(tok(t, add_special_tokens=not request.apply_chat_template)["input_ids"]) for t in inputs]
        if any(len(p) == 0 for p in prompt_ids):
            raise ExecutorError("a prompt tokenized to zero tokens")
        n_prompt = sum(len(p) for p in prompt_ids)
        st.set_counter("token_count", n_prompt, provenance="derived")
        st.set_metadata({"chat_template": request.apply_chat_template, "lengths": [len(p) for p in prompt_ids]})
        with _recording():
            record_artifact("tokens", prompt_ids[0] if plan.batch == 1 else prompt_ids, metadata={"role": "prompt"})

    # -- batch ------------------------------------------------------------------------------
    pad_id = _pad_id(tok, model)
    left = loaded.causal_lm
    width = max(len(p) for p in prompt_ids)
    with stage("batch", batch_size=plan.batch, device=dev) as st:
        ids = torch.full((plan.batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((plan.batch, width), dtype=torch.long)
        for row, p in enumerate(prompt_ids):
            sl = slice(width - len(p), width) if left else slice(0, len(p))
            ids[row, sl] = torch.tensor(p, dtype=torch.long)
            mask[row, sl] = 1
        ids, mask = ids.to(device), mask.to(device)
        st.set_counter("token_count", plan.batch * width, provenance="derived")
        st.set_counter("input_bytes", 2 * plan.batch * width * 8, provenance="derived")
        st.set_metadata({"padding_side": "left" if left else "right", "padded_length": width,
                         "padding_tokens": plan.batch * width - n_prompt, "pad_token_id": pad_id})

    for item in plan.resolved:  # patch sources must match this request's hidden-state shape
        if item.source is not None and tuple(item.source.shape[:2]) != (plan.batch, width):
            raise ExecutorError(
                f"patch at layer {item.spec.layer_index}: source shape {list(item.source.shape)} does not match "
                f"this request's hidden state [{plan.batch}, {width}, ...]"
            )

    ivset = InterventionSet(plan.resolved, layers) if (plan.resolved and layers is not None) else None
    capture = None
    if plan.layers_to_collect and layers is not None:
        capture = ActivationCapture(layers, [(i, s) for i in plan.layers_to_collect for s in opts.sites])
    generate = loaded.causal_lm and opts.max_new_tokens > 0
    with contextlib.ExitStack() as hooks, torch.inference_mode():
        if ivset is not None:  # intervention hooks first: observe hooks then see the intervened output
            hooks.enter_context(ivset.installed())
        # -- prefill / forward ------------------------------------------------------------
        with stage("prefill" if loaded.causal_lm else "forward", batch_size=plan.batch, device=dev) as st:
            st.set_counter("token_count", n_prompt, provenance="derived")
            if ivset is not None:
                ivset.phase = "prefill"
            with capture.installed() if capture is not None else contextlib.nullcontext():
                if loaded.causal_lm:
                    logits, cache = _decode.prefill(model, ids, mask, use_cache=generate)
                    hidden_out = logits
                else:
                    out = model(input_ids=ids, attention_mask=mask)
                    logits, cache, hidden_out = None, None, out.last_hidden_state
            st.set_counter("output_bytes", hidden_out.numel() * hidden_out.element_size(), provenance="derived")
            if logits is not None and plan.head and (plan.want_logits or plan.want_logprobs):
                _record_logits(logits, mask, opts, plan)
        # -- observe ----------------------------------------------------------------------
        if capture is not None or plan.weight_names:
            with stage("observe", batch_size=plan.batch, device=dev) as st:
                _observe(capture, plan, model, opts)
        # -- intervene --------------------------------------------------------------------
        if ivset is not None:
            with stage("intervene", batch_size=plan.batch, device=dev) as st:
                _intervene(ivset, model, ids, mask, logits, plan, loaded.causal_lm and plan.head)
        # -- decode -----------------------------------------------------------------------
        decoded = None
        if generate:
            assert logits is not None
            if ivset is not None:
                ivset.phase = "decode"
            params = _decode.DecodeParams(
                max_new_tokens=opts.max_new_tokens, do_sample=opts.do_sample, temperature=opts.temperature,
                top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed, eos_token_ids=frozenset() if opts.ignore_eos else _eos_ids(tok, model),
                pad_token_id=pad_id, stop=opts.stop, return_logprobs=plan.want_logprobs and plan.head,
            )
            with stage("decode", batch_size=plan.batch, device=dev) as st:
                decoded = _decode.decode(model, logits, cache, mask, params, _detokenizer(tok))
                _decode_attrs(st, decoded, ivset)
                if decoded.chosen_logprobs is not None:
                    with _recording():
                        record_artifact("logprobs", decoded.chosen_logprobs, metadata={
                            "positions": "generated", "lengths": [len(t) for t in decoded.tokens]})
            del cache
        elif loaded.causal_lm and "text" in plan.requested:
            record_missing("text", "not_requested", "max_new_tokens is 0: nothing was generated")
        elif not loaded.causal_lm and ("text" in plan.requested or opts.max_new_tokens > 0):
            record_missing("text", "unsupported", loaded.head_note)
        # -- score ------------------------------------------------------------------------
        scores: list[Any] = []
        if opts.score_continuation is not None:
            if ivset is not None:
                ivset.phase = "score"
            scores = _score(model, tok, prompt_ids, opts, plan, pad_id, device, dev)
        elif "metric" in plan.requested:
            record_missing("metric", "not_requested", "no score_continuation was given: nothing was scored")
    # -- emit -------------------------------------------------------------------------------
    texts: list[str] = []
    gen: list[list[int]] = []
    reasons: list[str] = []
    if decoded is not None:
        with stage("emit", batch_size=plan.batch, device="cpu") as st:
            detok = _detokenizer(tok)
            for toks, cut in zip(decoded.tokens, decoded.stop_cut, strict=True):
                text = detok(toks)
                texts.append(text[:cut] if cut is not None else text)
            gen = decoded.tokens
            reasons = [_FINISH[r] for r in decoded.stop_reasons]
            st.set_counter("token_count", sum(len(t) for t in gen), provenance="derived")
            with _recording():
                record_artifact("text", texts[0] if plan.batch == 1 else texts, metadata={"role": "completion"})
                record_artifact("tokens", gen[0] if plan.batch == 1 else gen, metadata={"role": "completion"})
        req.set_finish_reasons(reasons)
    req.set_usage(input_tokens=n_prompt, output_tokens=sum(len(t) for t in gen))
    result: RunResult = result_cls(
        trace_id=req.trace_id, texts=tuple(texts), token_ids=tuple(tuple(t) for t in gen),
        finish_reasons=tuple(reasons), prompt_token_ids=tuple(tuple(p) for p in prompt_ids),
        stop_reasons=tuple(decoded.stop_reasons) if decoded is not None else (), scores=tuple(scores),
    )
    return result


def _pad_id(tok: Any, model: Any) -> int:
    for value in (getattr(tok, "pad_token_id", None), getattr(getattr(model, "generation_config", None), "pad_token_id", None)):
        if isinstance(value, int):
            return value
    eos = _eos_ids(tok, model)
    return min(eos) if eos else 0


def _eos_ids(tok: Any, model: Any) -> frozenset[int]:
    gen_cfg = getattr(model, "generation_config", None)
    value = getattr(gen_cfg, "eos_token_id", None)
    if value is None:
        value = getattr(tok, "eos_token_id", None)
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, int) else [int(v) for v in value])


def _detokenizer(tok: Any) -> Any:
    def detok(ids: Sequence[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=True))

    return detok


def _record_logits(logits: torch.Tensor, mask: torch.Tensor, opts: RunOptions, plan: _Plan) -> None:
    values = logits[:, -1, :] if opts.logits_positions == "last" else logits
    meta = {"positions": opts.logits_positions, "padding": "left"}
    with _recording():
        if plan.want_logits:
            record_artifact("logits", values, metadata={**meta, "source_dtype": str(values.dtype).removeprefix("torch.")}, topk=opts.topk)
        if plan.want_logprobs:
            record_artifact("logprobs", values.float().log_softmax(-1), metadata=meta, topk=opts.topk)


def _observe(capture: ActivationCapture | None, plan: _Plan, model: Any, opts: RunOptions) -> None:
    with _recording():
        if capture is not None:
            for ref, tensor in capture.items():
                if tensor is None:
                    record_missing("activation", "failed", f"{ref.path} did not run during prefill", ref.layer)
                    continue
                record_artifact("activation", tensor, layer=ref.layer, metadata={
                    "site": ref.site, **ref.describe(), "positions": "prompt",
                    "source_dtype": str(tensor.dtype).removeprefix("torch.")})
            for layer, site in capture.absent:
                record_missing("activation", "unsupported", f"layer {layer} has no {site} module", layer)
        params = dict(model.named_parameters())
        for name in plan.weight_names:
            p = params[name].detach()
            record_artifact("weight_snapshot", p, metadata={"parameter": name, "source_dtype": str(p.dtype).removeprefix("torch.")})


def _intervene(ivset: InterventionSet, model: Any, ids: torch.Tensor, mask: torch.Tensor,
               logits: torch.Tensor | None, plan: _Plan, measure_logprobs: bool) -> None:
    lp_effect: dict[str, Any] = {}
    if measure_logprobs and logits is not None:
        with ivset.suspended():
            clean_logits, _ = _decode.prefill(model, ids, mask, use_cache=False)
        clean = clean_logits[:, -1, :].float().log_softmax(-1)
        dirty = logits[:, -1, :].float().log_softmax(-1)
        top = clean.argmax(-1, keepdim=True)
        with _recording():
            lp_clean = clean.gather(-1, top).squeeze(-1).tolist()
            lp_dirty = dirty.gather(-1, top).squeeze(-1).tolist()
            top_dirty = dirty.argmax(-1).tolist()
            top_ids = top.squeeze(-1).tolist()
        lp_effect = {
            "clean_top_token_ids": top_ids, "clean_top_logprobs": lp_clean,
            "intervened_logprobs_of_clean_top": lp_dirty,
            "logprob_change": [d - c for d, c in zip(lp_dirty, lp_clean, strict=True)],
            "intervened_top_token_ids": top_dirty,
            "scope": "all interventions of the request together, last prompt position",
        }
    else:
        lp_effect = {"logprob_change": None, "note": "no language-model head: logprob effect not measured"}
    with _recording():
        for hook in ivset.hooks:
            spec = hook.item.spec
            value = {
                "name": spec.name, "layer": spec.layer_index, "params": dict(spec.params),
                "site_module": hook.item.site_path, "effect": hook.effect(), "logits_effect": lp_effect,
            }
            if hook.item.vector_norm is not None:
                value["vector_input_norm"] = hook.item.vector_norm
            record_artifact("intervention_result", value, layer=spec.layer_index,
                            metadata={"intervention": spec.name, "site": hook.item.site})


def _decode_attrs(st: Any, d: _decode.DecodeResult, ivset: InterventionSet | None) -> None:
    times = d.step_times_s
    st.set_attribute(sc.DECODE_STEPS, d.steps)
    st.set_attribute(sc.DECODE_STEP_P50_S, _percentile(times, 50))
    st.set_attribute(sc.DECODE_STEP_P95_S, _percentile(times, 95))
    st.set_attribute(sc.DECODE_STEP_MAX_S, max(times) if times else 0.0)
    st.set_attribute(sc.DECODE_STEP_MEAN_S, statistics.fmean(times) if times else 0.0)
    st.set_attribute(sc.DECODE_STOP_REASON, d.loop_stop_reason)
    st.set_counter("token_count", sum(len(t) for t in d.tokens), provenance="derived")
    meta: dict[str, Any] = {"stop_reasons": d.stop_reasons, "forward_steps": d.forward_steps,
                            "generated": [len(t) for t in d.tokens]}
    if ivset is not None:  # how often each intervention acted on generated positions
        meta["intervention_calls"] = [h.calls.get("decode", 0) for h in ivset.hooks]
    st.set_metadata(meta)


def _score(model: Any, tok: Any, prompt_ids: list[list[int]], opts: RunOptions, plan: _Plan,
           pad_id: int, device: torch.device, dev: str) -> list[Any]:
    assert opts.score_continuation is not None
    conts = list(opts.score_continuation)
    if len(conts) == 1:
        conts = conts * len(prompt_ids)
    with stage("score", batch_size=plan.batch, device=dev) as st:
        if not plan.head:
            record_missing("metric", "unsupported", "continuation scoring needs a language-model head")
            return []
        cont_ids = [list(tok(c, add_special_tokens=False)["input_ids"]) for c in conts]
        if any(not c for c in cont_ids):
            raise ExecutorError("score_continuation tokenized to zero tokens")
        scores = score_continuations(model, prompt_ids, cont_ids, pad_id, device)
        st.set_counter("token_count", sum(len(p) + len(c) for p, c in zip(prompt_ids, cont_ids, strict=True)), provenance="derived")
        with _recording():
            record_artifact("metric", {
                "metric": "continuation_logprob",
                "sum_logprob": [s.sum_logprob for s in scores],
                "token_logprobs": [list(s.token_logprobs) for s in scores],
                "token_ids": [list(s.token_ids) for s in scores],
            }, metadata={"metric": "continuation_logprob", "continuations": len(set(conts))})
    return scores


__all__ = ["run_request"]
