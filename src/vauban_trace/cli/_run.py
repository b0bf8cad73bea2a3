"""``vauban-trace run``: one fully traced inference request over a local transformers model.

::

    vauban-trace run --model DIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N]
                     [--layers 0,3] [--sites residual,attn,mlp] [--logprobs] [--logits-all]
                     [--intervene SPEC ...] [--score TEXT] [--weights NAME ...]
                     [--device cpu|cuda|mps] [--dtype float32|float16|bfloat16|auto]
                     [--sample] [--seed N] [--temperature T] [--top-k K] [--top-p P] [--stop S ...] [--ignore-eos]
                     [--chat] [--deep-counters] [--store DIR] [--json]

Several ``--prompt`` make one batched request (one trace, batch size N). ``--intervene`` takes
the spec syntax of docs/torch-executor.md (``ablate:layer=1,direction=random:7``,
``steer:layer=1,vector=sha256:...,alpha=4``, ``patch:layer=1,source=blake3:...``); vector and
source digests are read from the artifact store of ``--store``.

Output: the trace id and a summary of the rebuilt trace (spans with counters, artifacts, missing
artifacts), followed by the generated text; with ``--json`` the rebuilt Trace as JSON. Either way
the trace is read back from the embedded store after a flush: it comes through the one rebuild
path. Bad flags, a missing model directory, an out-of-range layer or a bad intervention spec exit
with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vauban_trace._exceptions import ConfigurationError


def _layers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ConfigurationError(f"--layers: {part!r} is not a layer index (expected e.g. 0,3)")
        out.append(int(part))
    return tuple(dict.fromkeys(out))


def _sites(text: str) -> tuple[str, ...]:
    from vauban_trace.executors.torch._layers import SITES

    sites = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ConfigurationError(f"--sites: expected a comma list of {', '.join(SITES)}, got {text!r}")
    return sites


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run one traced inference request over a local transformers model",
        description="Trace one request (a prompt or a batch) end to end: load, tokenize, batch, prefill, "
                    "observe, intervene, decode, score, emit.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json, weights, tokenizer)")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="prompt text; repeat for a batch (one trace)")
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    p.add_argument("--layers", default=None, metavar="LIST", help="layers whose activations to record, e.g. 0,3")
    p.add_argument("--sites", default="residual", metavar="LIST",
                   help="sites to record in each layer: residual, attn, mlp (default residual)")
    p.add_argument("--logprobs", action="store_true", help="record logits and logprobs (last position, and chosen tokens)")
    p.add_argument("--logits-all", action="store_true", help="record logits/logprobs of every prompt position")
    p.add_argument("--intervene", action="append", default=[], metavar="SPEC",
                   help="intervention spec (repeatable), see docs/torch-executor.md")
    p.add_argument("--score", default=None, metavar="TEXT", help="score the log-likelihood of this continuation")
    p.add_argument("--weights", action="append", default=[], metavar="NAME",
                   help="record a weight snapshot of this parameter (repeatable)")
    p.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--dtype", default=None, metavar="DTYPE", help="float32, float16, bfloat16 or auto")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling mass")
    p.add_argument("--stop", action="append", default=[], metavar="S", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating through end-of-sequence tokens")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--deep-counters", action="store_true", help="count copies and syncs per operation (slower)")
    p.add_argument("--store", default=".vauban", metavar="DIR", help="trace store directory (default .vauban)")
    p.add_argument("--json", action="store_true", help="print the rebuilt Trace as JSON")
    p.set_defaults(func=run)


def _quiet() -> None:
    import logging
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        tf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except Exception:
        pass


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 0:
        raise ConfigurationError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.seed is not None and args.seed < 0:
        raise ConfigurationError(f"--seed must be >= 0, got {args.seed}")
    layers = _layers(args.layers)
    sites = _sites(args.sites)
    from vauban_trace.executors.torch._intervene import parse_intervention

    interventions = [parse_intervention(s) for s in args.intervene]
    _quiet()
    import vauban_trace as vt
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch._executor import read_trace

    executor = TorchExecutor.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    owned = vt.current_session() is None
    session = vt.configure(store_dir=args.store)
    try:
        request = executor.make_request(
            args.prompt, layers=layers, interventions=interventions, logprobs=args.logprobs,
            artifacts=(["weight_snapshot"] if args.weights else []) + (["metric"] if args.score else []),
            chat=args.chat,
        )
        result = executor.run(
            request, max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=args.stop or None,
            score_continuation=args.score, deep_counters=args.deep_counters, sites=sites,
            logits_positions="all" if args.logits_all else "last", weights=args.weights,
            ignore_eos=args.ignore_eos,
        )
        if session.store is None:
            session.force_flush()
            print(f"trace {result.trace_id} exported to: {', '.join(session.exporters)}")
            return 0
        trace = read_trace(session, result.trace_id)
        json_path = session.store.trace_json_file(result.trace_id)  # written now (trace_files="on_read")
    finally:
        if owned:
            session.shutdown()
    if args.json:
        print(trace.to_json(indent=2))
        return 0
    from vauban_trace.cli._render import render_trace_summary

    print(render_trace_summary(trace, trace_json_path=json_path))
    if result.texts:
        print()
        print("output")
        for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons, strict=True)):
            print(f"  [{i}] ({reason}) {text!r}")
    for score in result.scores:
        print(f"  score: sum logprob {score.sum_logprob:.4f} over {len(score.token_ids)} tokens")
    sys.stdout.flush()
    return 0
