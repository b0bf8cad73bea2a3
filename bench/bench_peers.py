"""Peers: vauban-trace's overhead and output against OpenLLMetry, torch.profiler and nnsight, one run.

Every tool runs on the same random-initialised Llama built offline by
``vauban_trace.executors.torch.tiny`` (no weights are downloaded), CPU, float32, a fixed prompt of
``--prompt-tokens`` tokens, greedy generation of exactly ``--new-tokens`` tokens
(``min_new_tokens`` = ``max_new_tokens``). Two model sizes: the demo's tiny Llama (hidden 64,
2 layers) and a larger one (``--hidden`` / ``--layers``, default 512 / 8) where per-token work
dominates.

Modes (each compared with its own plain baseline, measured in the same process and the same run):

=====================  ==========================================================================
``plain``              ``model.generate(...)``, nothing attached (baseline of the rows below)
``vt_traced``          ``instrument_model(model)``: root span, prefill/decode stages, cheap counters;
                       ``vauban_trace.configure()`` with the embedded exporter (what ``make demo``
                       uses: batch processor, SQLite trace store)
``vt_capture``         ``instrument_model(model, capture_artifacts=("logits", "activation"),
                       layers=(0, 1))``: residual stream after layers 0 and 1 for the prompt
                       positions + last-position logits, hashed and stored as artifacts
``profiler``           ``torch.profiler.profile(activities=[CPU], record_shapes=False)`` around
                       each generate (profiler start and stop inside the timed region)
``nnsight``            ``nnsight.LanguageModel(<second instance of the model>, tokenizer=tok)``;
                       each request is ``with lm.generate(inputs, ...)`` saving the outputs of
                       layers 0 and 1 and of ``lm_head`` (the prefill pass: prompt positions and
                       last-position logits, as ``vt_capture``)
``pipe_plain``         ``pipeline("text-generation", model=model, tokenizer=tok)(text)``, no
                       instrumentation (baseline of the two rows below)
``pipe_openllmetry``   the same pipeline with OpenLLMetry's ``TransformersInstrumentor``
                       (``opentelemetry-instrumentation-transformers``), which wraps only
                       ``TextGenerationPipeline.__call__``; its own ``TracerProvider`` with a
                       ``SimpleSpanProcessor(InMemorySpanExporter)``
``pipe_vt_traced``     the same pipeline with ``instrument_model(model)`` (vauban-trace seen
                       through the same harness as OpenLLMetry)
=====================  ==========================================================================

Installing instrumentation (``instrument_model``, ``instrument()``, building the nnsight wrapper)
happens outside the timed region, once per call for the per-call installs; what is timed is the
request. Repeats are interleaved (the order rotates every repeat), after one warm-up of every mode;
after every request vauban-trace's session is flushed outside the wall-time window (so the spans and
blobs one request hands to background threads never slow the next mode's request down). Reported:
median wall time, ratio of medians to the baseline, median of the per-repeat ratios; per-repeat
differences to the baseline of wall time, calling-thread CPU and all-thread CPU during the request;
and the ratio of all-thread CPU over request + flush (the exporter's and artifact writer's work).

After the timed repeats, one more request per mode is observed (untimed): spans each exporter
received (an ``InMemorySpanExporter`` is added to vauban-trace's provider only then), stage spans,
token counts on spans, saved tensors, artifacts and their digests, and whether the trace reads
back from the embedded store. The capability table is built from those observations only
(``bench/peers_observe.py``, with the per-thread CPU breakdown of ``vt_capture`` and the cProfile of
one OpenLLMetry request). Unless ``--no-blas-check`` (or ``OPENBLAS_NUM_THREADS`` is already set),
``plain`` and ``vt_capture`` are then rerun in a child process with ``OPENBLAS_NUM_THREADS=1``.

Environment (peers are not installed in the project venv; they live in their own venv)::

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /work/peers-venv/bin/pip install -r bench/peers-requirements.txt
    # vauban-trace from this checkout without rebuilding its C extensions in the shared tree:
    echo "$PWD/src" > /work/peers-venv/lib/python3.11/site-packages/vauban-trace-src.pth
    /work/peers-venv/bin/python bench/bench_peers.py                  # print the tables
    /work/peers-venv/bin/python bench/bench_peers.py --write-docs     # also replace "## Peers"
                                                                      # in docs/benchmarks.md

A mode whose package is missing stops the script with a message naming the package (no number is
ever made up); ``--modes`` selects a subset (e.g. ``plain,vt_traced,vt_capture,profiler`` runs
with the project venv alone).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub

import torch  # noqa: E402
from benchdoc import cpu_model, replace_section  # noqa: E402
from peers_observe import CAPTURE_LAYERS, blas_name, capture_threads, dot_check, observe  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import vauban_trace as vt  # noqa: E402
from vauban_trace.executors.torch import instrument_model  # noqa: E402
from vauban_trace.executors.torch.tiny import SENTENCES, cached_tiny_model  # noqa: E402

SECTION = "Peers"
MODES = ("plain", "vt_traced", "vt_capture", "profiler", "nnsight", "pipe_plain", "pipe_openllmetry", "pipe_vt_traced")
BASELINE = {m: ("pipe_plain" if m.startswith("pipe_") else "plain") for m in MODES}
NEEDS = {"nnsight": "nnsight", "pipe_openllmetry": "opentelemetry.instrumentation.transformers"}
PYPI = {"nnsight": "nnsight", "opentelemetry.instrumentation.transformers": "opentelemetry-instrumentation-transformers"}


def _missing(modes: tuple[str, ...]) -> list[str]:
    return sorted({NEEDS[m] for m in modes if m in NEEDS and importlib.util.find_spec(NEEDS[m]) is None})


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


class Bench:
    """One model size: the model, its inputs, and what every mode needs."""

    def __init__(self, args: argparse.Namespace, hidden: int, layers: int, session: Any) -> None:
        self.args, self.session, self.layers = args, session, layers
        self.dir = cached_tiny_model("llama", hidden_size=hidden, num_layers=layers, max_position_embeddings=1024)
        self.model = AutoModelForCausalLM.from_pretrained(self.dir)
        self.model.eval()  # type: ignore[no-untyped-call]
        self.tok = AutoTokenizer.from_pretrained(self.dir)
        ids = self.tok(" ".join(SENTENCES), return_tensors="pt")["input_ids"][:, : args.prompt_tokens]
        if ids.shape[1] != args.prompt_tokens:
            raise SystemExit(f"the built-in sentences give only {ids.shape[1]} tokens (< --prompt-tokens)")
        self.inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        self.text = self.tok.decode(ids[0], skip_special_tokens=True)
        if len(self.tok(self.text)["input_ids"]) != args.prompt_tokens:  # the pipeline re-tokenizes this text
            raise SystemExit("the prompt text does not re-tokenize to --prompt-tokens tokens")
        self.gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
        self.params = sum(p.numel() for p in self.model.parameters())
        self.pipe: Any = None
        self.lm: Any = None
        self.ol: Any = None  # (instrumentor, exporter, provider)
        self.last: dict[str, Any] = {}  # what the last request of each mode produced
        self.ol_profile: dict[str, float] | None = None
        modes = args.modes
        if any(m.startswith("pipe_") for m in modes):
            from transformers import pipeline

            self.pipe = pipeline("text-generation", model=self.model, tokenizer=self.tok)
        if "nnsight" in modes:
            from nnsight import LanguageModel

            with warnings.catch_warnings():  # 0.8 calls LanguageModel deprecated; it still wraps a built model
                warnings.simplefilter("ignore")
                second = AutoModelForCausalLM.from_pretrained(self.dir)  # plain stays untouched
                second.eval()  # type: ignore[no-untyped-call]
                self.lm = LanguageModel(second, tokenizer=self.tok)
        if "pipe_openllmetry" in modes:
            from opentelemetry.instrumentation.transformers import TransformersInstrumentor
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            self.ol = (TransformersInstrumentor(), exporter, provider)

    @contextlib.contextmanager
    def installed(self, mode: str) -> Iterator[None]:
        """Attach the mode's instrumentation (outside the timed region)."""
        handle: Any = None
        if mode in ("vt_traced", "pipe_vt_traced"):
            handle = instrument_model(self.model)
        elif mode == "vt_capture":
            handle = instrument_model(self.model, capture_artifacts=("logits", "activation"), layers=CAPTURE_LAYERS)
        elif mode == "pipe_openllmetry":
            self.ol[0].instrument(tracer_provider=self.ol[2])
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
            if mode == "pipe_openllmetry":
                self.ol[0].uninstrument()

    def request(self, mode: str) -> None:
        """One request in ``mode`` (the timed part)."""
        n_out = self.args.prompt_tokens + self.args.new_tokens
        if mode.startswith("pipe_"):
            got = self.pipe(self.text, return_full_text=False, **self.gen)
            self.last[mode] = got
            return
        if mode == "nnsight":
            with self.lm.generate(dict(self.inputs), **self.gen) as tracer:
                layer0 = self.lm.model.layers[CAPTURE_LAYERS[0]].output.save()
                layer1 = self.lm.model.layers[CAPTURE_LAYERS[1]].output.save()
                logits = self.lm.lm_head.output.save()
                result = tracer.result.save()
            self.last[mode] = ([layer0, layer1], logits, result)
            assert result.shape[1] == n_out, result.shape
            return
        with torch.inference_mode():
            if mode == "profiler":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                    out = self.model.generate(**self.inputs, **self.gen)
                self.last[mode] = prof
            else:
                out = self.model.generate(**self.inputs, **self.gen)
        assert out.shape[1] == n_out, out.shape

    def timed(self, mode: str) -> tuple[float, ...]:
        """(wall, main-thread CPU, process CPU) of the request, process CPU of request + flush."""
        with self.installed(mode):
            p0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            self.request(mode)
            wall, main, proc = time.perf_counter() - t0, time.thread_time() - m0, time.process_time() - p0
            # untimed for wall, counted for CPU: the spans and blobs this request left to the
            # background threads are written now, so they neither bleed into the next mode's
            # timing nor escape this mode's CPU figure
            self.session.force_flush()
            total = time.process_time() - p0
        return wall, main, proc, total

    def measure(self) -> dict[str, Any]:
        modes = [m for m in MODES if m in self.args.modes]
        for m in modes:  # warm-up
            self.timed(m)
        got: dict[str, list[tuple[float, ...]]] = {m: [] for m in modes}
        for r in range(self.args.repeat):
            for m in modes[r % len(modes):] + modes[: r % len(modes)]:
                got[m].append(self.timed(m))
        rows = []
        for m in modes:
            mine, base = got[m], got[BASELINE[m]]

            def col(i: int, mine: list[tuple[float, ...]] = mine) -> list[float]:
                return [x[i] for x in mine]

            def diff(i: int, mine: list[tuple[float, ...]] = mine, base: list[tuple[float, ...]] = base) -> float:
                return statistics.median(a[i] - b[i] for a, b in zip(mine, base, strict=True)) * 1000

            med, bmed = statistics.median(col(0)), statistics.median(x[0] for x in base)
            pair = statistics.median(a[0] / b[0] for a, b in zip(mine, base, strict=True))
            cpu_ratio = statistics.median(col(3)) / statistics.median(x[3] for x in base)
            rows.append((m, BASELINE[m], med * 1000, med / bmed, pair, diff(0), diff(1), diff(2), cpu_ratio))
        return {"rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    torch.set_num_threads(args.threads)
    load_start = _loadavg()
    session = vt.configure(store_dir=tempfile.mkdtemp(prefix="vauban-peers-"), exporter="embedded")
    sizes = [(64, 2)] + ([(args.hidden, args.layers)] if args.hidden else [])
    results = []
    benches = []
    for hidden, layers in sizes:
        b = Bench(args, hidden, layers, session)
        benches.append(b)
        t0 = time.perf_counter()
        with torch.inference_mode():
            b.model.generate(**b.inputs, **b.gen)
        results.append({"hidden": hidden, "layers": layers, "params": b.params, **b.measure()})
        print(f"hidden {hidden}, {layers} layers: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    threads = capture_threads(benches[-1]) if "vt_capture" in args.modes else {}
    dot = dot_check(args.prompt_tokens * sizes[-1][0]) if threads else {}
    memory = InMemorySpanExporter()  # only now: it must not weigh on the timed requests
    session.provider.add_span_processor(SimpleSpanProcessor(memory))
    obs = observe(benches[0], memory)
    session.shutdown()
    return {
        "sizes": results, "obs": obs, "load": _loadavg(), "load_start": load_start, "threads": threads, "dot": dot,
        "prompt_tokens": args.prompt_tokens, "ol_profile": getattr(benches[0], "ol_profile", None),
    }


def _blas_rerun(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """``plain`` and ``vt_capture`` again, in a child process with ``OPENBLAS_NUM_THREADS=1``."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "blas1.json"
        cmd = [sys.executable, __file__, "--modes", "plain,vt_capture", "--repeat", str(args.repeat),
               "--hidden", str(args.hidden), "--layers", str(args.layers), "--prompt-tokens",
               str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
               "--no-blas-check", "--json-out", str(out)]
        done = subprocess.run(cmd, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            print("OPENBLAS_NUM_THREADS=1 rerun failed:", done.stderr[-2000:], file=sys.stderr)
            return None
        sizes: list[dict[str, Any]] = json.loads(out.read_text())
        return sizes


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _table(size: dict[str, Any]) -> str:
    lines = [
        "| mode | baseline | median ms / request | ratio of medians | median of paired ratios "
        "| Δ wall, ms | Δ main-thread CPU, ms | Δ all-thread CPU, ms | all-thread CPU ratio, request + flush |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, base, ms, ratio, pair, dwall, dmain, dproc, cpu_ratio in size["rows"]:
        lines.append(f"| {mode} | {base} | {ms:.1f} | {ratio:.3f} | {pair:.3f} | {dwall:+.1f} | {dmain:+.1f} "
                     f"| {dproc:+.1f} | {cpu_ratio:.3f} |")
    return "\n".join(lines)


TOOLS = {
    "vt_traced": "vauban-trace `instrument_model`", "vt_capture": "vauban-trace, capture L0, L1 + logits",
    "pipe_vt_traced": "vauban-trace under the pipeline", "pipe_openllmetry": "OpenLLMetry (transformers)",
    "profiler": "torch.profiler (CPU)", "nnsight": "nnsight `generate` + `.save()`",
}
COLUMNS = (("spans", "spans per request"), ("stages", "per-stage spans"), ("tokens", "token counts on spans"),
           ("tensors", "activations / logits"), ("pointers", "content-addressed pointers"),
           ("readback", "read back from a trace store"))


def _capabilities(obs: dict[str, dict[str, str]]) -> str:
    lines = ["| tool | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for mode, cells in obs.items():
        lines.append(f"| {TOOLS[mode]} | " + " | ".join(cells.get(c[0], "?") for c in COLUMNS) + " |")
    return "\n".join(lines)


def _ol_note(result: dict[str, Any]) -> str:
    p = result.get("ol_profile")
    if not p:
        return ""
    pairs = [(size["hidden"], row[5]) for size in result["sizes"] for row in size["rows"] if row[0] == "pipe_openllmetry"]
    deltas = ", ".join(f"hidden {h}: {d:+.0f} ms" for h, d in pairs)
    values = [d for _h, d in pairs]
    fixed = len(values) > 1 and max(values) - min(values) <= 0.1 * statistics.mean(values)
    ending = (f"The Δ wall of `pipe_openllmetry` is about the same for both models ({deltas}): a fixed cost "
              "per request." if fixed else f"Δ wall of `pipe_openllmetry`: {deltas}.")
    callers = ", ".join(f"`{c}`" for c in p["dir_callers"]) or "unknown"
    return (
        f"Where OpenLLMetry's time goes (cProfile of one more instrumented request, hidden-64 model): "
        f"{p['dir_ms']:.0f} ms of the {p['total_ms']:.0f} ms request are inside `__dir__`, reached through "
        f"`dir()` called from {callers} (its source tests `\"TextGenerationPipeline\" not in dir(transformers)` "
        f"on every call); `dir(transformers)` alone took {p['dir_alone_ms']:.0f} ms in this process "
        f"(transformers {_version('transformers')}'s lazy module builds that list with a `not in` test on "
        f"a list per name). {ending}\n"
    )


def _summary(result: dict[str, Any]) -> str:
    """Headline figures, computed from the largest model's rows (nothing typed in by hand)."""
    size = result["sizes"][-1]
    rows = {r[0]: r for r in size["rows"]}
    parts = [f"{TOOLS[m]} {rows[m][4]:.2f}x" for m in TOOLS if m in rows]
    text = (f"Summary, hidden {size['hidden']} / {size['layers']} layers, median of paired ratios: "
            + "; ".join(parts) + ".")
    cap = rows.get("vt_capture")
    if cap:
        text += (f" `vt_capture`'s Δ wall {cap[5]:+.1f} ms splits into {cap[6]:+.1f} ms on the calling thread "
                 f"and {cap[7] - cap[6]:+.1f} ms of CPU on other threads during the request (by thread below).")
    threads = result.get("threads")
    if threads:
        blas = os.environ.get("OPENBLAS_NUM_THREADS")
        text += ("\n\nCPU per `vt_capture` request (request + flush) by thread, hidden "
                 f"{size['hidden']} model, 8 more requests after the timed ones (`/proc/self/task`; "
                 f"`OPENBLAS_NUM_THREADS` {'= ' + blas if blas else 'unset'}): "
                 + "; ".join(f"{k} {v:.0f} ms" for k, v in threads.items()) + ".")
    dot = result.get("dot")
    if threads and not dot:
        text += " One `np.dot` on an activation-sized vector used under 1 ms of CPU on every thread."
    if dot:
        n = result["prompt_tokens"] * size["hidden"]
        text += (f" One `np.dot(v, v)` on {n:,} float64 values (what `artifacts.summarize_array` computed "
                 f"for `l2_norm` of one (1, {result['prompt_tokens']}, {size['hidden']}) activation until "
                 "commit c20acd4, which moved it to `np.einsum`), alone, 50 ms apart, costs per call: "
                 + "; ".join(f"{k} {v:.1f} ms" for k, v in dot.items())
                 + f" of CPU (numpy's BLAS: {blas_name()}).")
        woken = [k for k in dot if k in (threads or {}) and k != "MainThread"]
        text += (f" The thread {woken[0]} appears in both lines: the capture's extra CPU is the BLAS worker "
                 "pool woken by `np.dot`." if woken else
                 " No thread of that BLAS pool appears in the capture's per-thread CPU: the capture no "
                 "longer wakes it.")
    blas1 = result.get("blas1")
    if blas1:
        rows1 = {r[0]: r for r in blas1[-1]["rows"]}
        text += (f"\n\nThe same comparison rerun in a child process with `OPENBLAS_NUM_THREADS=1` (plain and "
                 f"vt_capture only, {blas1[-1]['hidden']}-hidden model, same repeats): `vt_capture` paired ratio "
                 f"{rows1['vt_capture'][4]:.3f}, Δ wall {rows1['vt_capture'][5]:+.1f} ms, Δ all-thread CPU "
                 f"{rows1['vt_capture'][7]:+.1f} ms (against {cap[4] if cap else float('nan'):.3f} above).")
    return text + "\n"


def _doc_section(result: dict[str, Any], args: argparse.Namespace) -> str:
    cmd = " ".join(["/work/peers-venv/bin/python", "bench/bench_peers.py", *args.argv])
    versions = ", ".join(f"{d} {_version(d)}" for d in (
        "transformers", "opentelemetry-sdk", "opentelemetry-instrumentation-transformers", "nnsight"))
    tables = "\n\n".join(
        f"Hidden {s['hidden']}, {s['layers']} layers ({s['params'] / 1e6:.2f} M parameters):\n\n{_table(s)}"
        for s in result["sizes"])
    return f"""## {SECTION}

Command: `{cmd}` (run in the separate peers venv: the script's docstring and
`bench/peers-requirements.txt` say how to build it; peers are not installed in the project venv).

Machine: `uname -m` = {platform.machine()}, `nproc` = {os.cpu_count()}, CPU: {cpu_model()}; Python {platform.python_version()}, torch {torch.__version__}, {args.threads} torch thread(s); {versions}.

Workload: random-initialised Llama built offline by `executors/torch/tiny.py`, float32, CPU; prompt
{args.prompt_tokens} tokens (the pipeline re-tokenizes the same text to the same {args.prompt_tokens} tokens); greedy
generation of exactly {args.new_tokens} new tokens. Every row is compared with its own baseline
(`plain` = bare `model.generate`, `pipe_plain` = the bare `text-generation` pipeline) measured in the
same process, in the same run, interleaved: {args.repeat} repeats, the order rotated each repeat, after
one warm-up of every mode; medians. Installing instrumentation is outside the timed region; the
profiler's start/stop and nnsight's per-request tracing context are inside it.
Load average (1/5/15 min) at the start: {result['load_start']}, at the end: {result['load']} (shared 2-core machine: other engineers' jobs
run beside it, so wall times are noisy; the paired ratios and the CPU ratio are the steadier
figures). Wall time is the request as its caller waits for it; after each request, outside that
window, vauban-trace's session is flushed (no background work bleeds into the next request). Δ
columns: median over repeats of (mode − baseline) within the same repeat: wall time, CPU time of the
calling thread, CPU time of all threads during the request; the last column is the ratio of
all-thread CPU over request + flush, i.e. with the exporter's and the artifact writer's work.

{tables}

{_summary(result)}
What each tool produced for one more request on the hidden-64 model (observed by the script:
spans counted in each tool's exporter, attribute keys inspected, saved tensors' shapes,
vauban-trace's trace read back from its embedded store; "no" means that tool's output for this
request held no such thing):

{_capabilities(result['obs'])}

{_ol_note(result)}
- `vt_traced` / `pipe_vt_traced`: `instrument_model(model)` with `vauban_trace.configure()`'s
  embedded exporter (batch processor, SQLite store), as `make demo`.
- `vt_capture`: `capture_artifacts=("logits", "activation")`, `layers=(0, 1)`: residual stream after
  layers 0 and 1 (prompt positions) and the last-position logits as artifacts (summary statistics
  and blake3 digest on the calling thread, the blob written by the background writer).
- `profiler`: `torch.profiler.profile(activities=[CPU], record_shapes=False)` per request.
- `nnsight`: `LanguageModel(model, tokenizer=tok)` over a second instance loaded from the same
  directory (nnsight {_version('nnsight')} marks `LanguageModel` deprecated but wraps a built model
  offline); each request `with lm.generate(...)` saves `model.layers[0/1].output` and
  `lm_head.output` of the prefill pass and `tracer.result`.
- `pipe_openllmetry`: traceloop's `TransformersInstrumentor().instrument(tracer_provider=...)`, an
  own `TracerProvider` with `SimpleSpanProcessor(InMemorySpanExporter)`; content capture left at its
  default. The reference notes (`/work/shared/reference/ecosystem.md`) say it wraps only
  `TextGenerationPipeline.__call__`, so a bare `model.generate()` produces no span with it: it is
  measured through the pipeline only.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=31)
    parser.add_argument("--hidden", type=int, default=512, help="larger model's hidden size (0: tiny model only)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the shared machine usable)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--no-blas-check", action="store_true",
                        help="skip the plain/vt_capture rerun in a child process with OPENBLAS_NUM_THREADS=1")
    parser.add_argument("--json-out", default=None, help="also write the timing rows as JSON to this path")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    args.modes = tuple(m for m in MODES if m in args.modes or m in {BASELINE[x] for x in args.modes})
    missing = _missing(args.modes)
    if missing:
        names = ", ".join(PYPI[m] for m in missing)
        print(f"bench_peers: not installed here: {names}. Build the peers venv (see the docstring of "
              f"bench/bench_peers.py and bench/peers-requirements.txt), or leave those modes out with "
              f"--modes. No number is reported for a tool that is not installed.", file=sys.stderr)
        return 2
    result = run(args)
    if args.json_out:
        import json

        Path(args.json_out).write_text(json.dumps(result["sizes"]))
    check = "vt_capture" in args.modes and not args.no_blas_check and "OPENBLAS_NUM_THREADS" not in os.environ
    result["blas1"] = _blas_rerun(args) if check else None
    for size in result["sizes"]:
        print(f"hidden {size['hidden']}, {size['layers']} layers")
        print(_table(size))
    print(_capabilities(result["obs"]))
    print(_summary(result))
    print(_ol_note(result))
    print("load average:", result["load"])
    if args.write_docs:
        replace_section(f"## {SECTION}", _doc_section(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
