"""``vauban-trace demo``: one traced inference on a tiny offline model, end to end.

::

    vauban-trace demo [--store DIR] [--cache DIR] [--prompt TEXT]

1. Builds, once and offline, a tiny random-initialised Llama and a byte-level BPE tokenizer
   (:mod:`vauban_trace.executors.torch.tiny`) under ``--cache`` (default
   ``$VAUBAN_TRACE_CACHE/models`` or ``~/.cache/vauban-trace/models``). Nothing is downloaded.
2. Calls :func:`vauban_trace.configure` (embedded store in ``--store``, default ``.vauban``; OTLP
   export as well when the standard ``OTEL_EXPORTER_OTLP_*`` variables are set).
3. Runs one request through transformers with the instrumentation API, directly in this module:
   ``load`` → ``tokenize`` (tokens artifact) → ``forward`` (logits artifact with top-k, one layer's
   activation from ``output_hidden_states``) → ``score`` (logprobs artifact) → ``decode`` (the
   greedy next token, as text). The request also asks for a ``weight_snapshot``, which the demo
   cannot produce: it is recorded missing with reason ``unsupported``.
4. Flushes, reads the rebuilt Trace back from the embedded store, and prints a summary (spans with
   durations and counters with provenance marks, artifacts with shapes and digests, missing
   artifacts with reasons, the trace JSON file) and where the trace was exported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "The quick brown fox jumps over the lazy dog."
MODEL_NAME = "vauban-tiny-llama"
LAYER = 1
TOPK = 5


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="trace one inference on a tiny offline model and print the trace",
        description="Build a tiny random-init Llama offline, run one traced inference, print the trace.",
    )
    p.add_argument("--store", default=".vauban", metavar="DIR", help="trace store directory (default .vauban)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="model cache directory (default $VAUBAN_TRACE_CACHE/models or ~/.cache/vauban-trace/models)")
    p.add_argument("--prompt", default=PROMPT, help="input text")
    p.set_defaults(func=run)


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _capabilities() -> Any:
    from vauban_trace.contract import Capabilities

    return Capabilities(
        executor="vauban-demo",
        device_kinds=("cpu",),
        levels={
            "can_emit_text": "full",
            "can_emit_tokens": "full",
            "can_emit_logits": "full",
            "can_emit_logprobs": "full",
            "can_emit_activations": "partial",
            "can_profile_device_memory": "partial",
        },
        notes={
            "can_emit_activations": "hidden states of the requested layers only (output_hidden_states)",
            "can_inspect_weights": "the demo does not capture weights",
            "can_profile_device_memory": "CPU only: the process's peak resident set per stage (cpu.rss_peak)",
        },
    )


def traced_inference(model_dir: Path, prompt: str) -> str:
    """Run the demo request with the instrumentation API; returns the trace id (hex)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import vauban_trace as vt
    from vauban_trace.executors.torch import make_probes

    request = vt.TraceRequest(
        input_text=prompt,
        requested_artifacts=("tokens", "logits", "logprobs", "activation", "text", "weight_snapshot"),
        collect_layers=(LAYER,),
        return_logits=True,
        return_logprobs=True,
        metadata={"demo": True},
    )
    with vt.traced_request(
        request, model=MODEL_NAME, capabilities=_capabilities(), executor="vauban-demo",
        executor_version=vt.__version__, device="cpu", seed=0, max_tokens=1,
    ) as req, vt.probes(*make_probes("cpu")):  # measured memory; copies derived for the host
        with vt.stage("load", device="cpu") as st:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            model.eval()  # type: ignore[no-untyped-call]
            tok = AutoTokenizer.from_pretrained(model_dir)
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            st.set_counter("output_bytes", weights, provenance="derived")

        with vt.stage("tokenize", batch_size=1, device="cpu") as st:
            enc = tok(prompt, return_tensors="pt")
            ids = [int(i) for i in enc["input_ids"][0]]
            st.set_counter("token_count", len(ids), provenance="derived")
            vt.record_artifact("tokens", ids)

        @vt.stage("forward", batch_size=1, token_count=len(ids))
        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            with torch.no_grad():
                out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            vt.record_artifact("logits", out.logits, topk=TOPK)
            # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
            vt.record_artifact("activation", out.hidden_states[LAYER + 1], layer=LAYER,
                               metadata={"source": "output_hidden_states", "site": "block_output"})
            return out

        out = forward(enc["input_ids"], enc["attention_mask"])

        with vt.stage("score", batch_size=1, token_count=len(ids)) as st:
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            vt.record_artifact("logprobs", logprobs, topk=TOPK)
            vt.record_missing("weight_snapshot", "unsupported", detail="the demo does not capture weights")

        with vt.stage("decode", batch_size=1, token_count=1):
            next_id = int(out.logits[0, -1].argmax())
            vt.record_artifact("text", tok.decode([next_id]), metadata={"token_id": next_id, "strategy": "greedy"})
        req.set_usage(input_tokens=len(ids), output_tokens=1)
        req.set_finish_reasons("length")
    if req.trace_id is None:  # pragma: no cover - configure() always installs the SDK
        raise RuntimeError("no trace was recorded")
    return req.trace_id


def run(args: argparse.Namespace) -> int:
    import vauban_trace as vt
    from vauban_trace.cli._render import render_trace_summary
    from vauban_trace.executors.torch.tiny import cached_tiny_model

    t0 = time.perf_counter()
    _quiet_transformers()
    model_dir = cached_tiny_model("llama", cache_dir=args.cache)
    built = time.perf_counter() - t0
    session = vt.configure(store_dir=args.store, service_name="vauban-trace-demo")
    try:
        trace_id = traced_inference(model_dir, args.prompt)
        session.force_flush()
        if session.store is None:
            print(f"trace {trace_id} exported to: {', '.join(session.exporters)}")
            return 0
        trace = session.store.get_trace(trace_id)
        json_path = session.store.trace_json_file(trace_id)  # written now (trace_files="on_read")
    finally:
        session.shutdown()
    print(f"model: {model_dir} (tiny random-init Llama, built offline; ready in {built:.1f} s)")
    print(render_trace_summary(trace, trace_json_path=json_path))
    print()
    print("exported to:")
    for where in session.exporters:
        print(f"  {where}")
    store_arg = "" if Path(args.store).resolve() == Path(".vauban").resolve() else f" --source store:{args.store}"
    print()
    print(f"next: vauban-trace show --last --json{store_arg}")
    sys.stdout.flush()
    return 0
