"""Sampling and stop strings in the MLX executor, against the torch executor on the same weights.

The MLX executor never imports torch; its sampler ports torch's CPU draw (``_torchrand``,
``_sample``). Here torch is the reference: its generator's exponential draws and multinomial
picks are compared bit for bit, its ``_select`` probabilities against the port's on the same
logits, and whole sampled runs (one prompt and left-padded batches, Llama / Qwen2 / Mistral)
token for token, with the rebuilt traces' stages, artifacts, span attribute names and sampling
attributes compared. A chi-square test checks the draws follow the probabilities (fixed seed, so
deterministic). Stop strings: same cut text, stop reasons, finish reasons and decode metadata.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import mlx.core  # noqa: F401  (the mlx extra is part of `make test`: a missing mlx fails, never skips)
import numpy as np
import pytest
import torch
from mlx_helpers import child_stages, executors, rebuilt

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Trace, TraceRequest, validate_trace
from vauban_trace.executors.mlx import MlxExecutor
from vauban_trace.executors.mlx._sample import Sampler, probabilities
from vauban_trace.executors.mlx._torchrand import TorchCpuGenerator
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch import _decode as torch_decode

PROMPTS = ["Paris is the capital", "The quick brown fox jumps over", "Hello"]
SETTINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 20},
    {"temperature": 1.3, "top_p": 0.9},
    {"temperature": 0.8, "top_k": 50, "top_p": 0.95},
]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-sampling-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    return executors("llama")


def both(ex: tuple[MlxExecutor, TorchExecutor], session: Any, req: TraceRequest,
         **kw: Any) -> tuple[Trace, Trace, Any, Any]:
    mr, tr = ex[0].run(req, **kw), ex[1].run(req, **kw)
    return rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id), mr, tr


def merged(span: Any) -> dict[str, Any]:
    """A rebuilt span's attributes: its metadata and its profile's, less torch's probe mode (``usl.``)."""
    both_ = {**(span.profile.metadata if span.profile is not None else {}), **span.metadata}
    return {k: v for k, v in both_.items() if not k.startswith("usl.")}


def span_attribute_names(trace: Trace) -> dict[str | None, set[str]]:
    """Per stage (None: the root), the names of the rebuilt span's attributes."""
    return {s.stage if s.parent_id is not None else None: set(merged(s)) for s in trace.spans}


def sampling_attributes(trace: Trace) -> dict[str, Any]:
    assert trace.root is not None
    names = (sc.GEN_AI_REQUEST_SEED, sc.GEN_AI_REQUEST_TEMPERATURE, sc.GEN_AI_REQUEST_TOP_K,
             sc.GEN_AI_REQUEST_TOP_P, sc.GEN_AI_REQUEST_MAX_TOKENS, sc.GEN_AI_RESPONSE_FINISH_REASONS)
    return {n: trace.root.metadata.get(n) for n in names}


def decode_metadata(trace: Trace) -> dict[str, Any]:
    """The decode span's attributes less timings."""
    span = trace.spans_for_stage("decode")[0]
    return {k: v for k, v in merged(span).items() if not k.startswith("decode.step_")}


def assert_same_trace_shape(m: Trace, t: Trace) -> None:
    for trace in (m, t):
        validate_trace(trace)
        assert trace.complete, trace.problems
    assert child_stages(m) == child_stages(t)
    assert span_attribute_names(m) == span_attribute_names(t)
    assert sampling_attributes(m) == sampling_attributes(t)
    assert decode_metadata(m) == decode_metadata(t)
    assert sorted((a.kind, a.shape, a.metadata.get("role"), a.metadata.get("positions")) for a in m.artifacts) == \
        sorted((a.kind, a.shape, a.metadata.get("role"), a.metadata.get("positions")) for a in t.artifacts)


# -- the draw itself -----------------------------------------------------------------------------
def test_exponential_draws_equal_torch() -> None:
    for seed in (0, 1, 7, 12345, 2**40 + 3):
        gen, ref = TorchCpuGenerator(seed), torch.Generator().manual_seed(seed)
        for shape in ((7,), (3, 577), (2, 50257), (1, 1)):  # consecutive calls on one generator
            expected = torch.empty(shape).exponential_(1, generator=ref).numpy()
            assert np.array_equal(gen.exponential(shape), expected), (seed, shape)


def test_multinomial_picks_equal_torch() -> None:
    """200 seeds x 3 consecutive draws of 4 rows, probabilities with zeros (filtered tokens)."""
    rng = np.random.default_rng(0)
    for seed in range(200):
        sampler, ref = Sampler(seed=seed), torch.Generator().manual_seed(seed)
        for _ in range(3):
            logits = rng.normal(size=(4, 300)).astype(np.float32) * 3
            logits[:, rng.integers(0, 300, 40)] = -np.inf
            probs = torch.from_numpy(logits).softmax(-1)
            expected = torch.multinomial(probs, 1, generator=ref).squeeze(-1).numpy()
            assert np.array_equal(sampler.draw(probs.numpy()), expected), seed


@pytest.mark.parametrize("setting", SETTINGS + [{"temperature": 0.5, "top_k": 1}, {"top_p": 0.3}])
def test_filters_and_picks_equal_torch_select(setting: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's own ``_select``: the probabilities it passes to multinomial and the ids it returns."""
    seen: list[torch.Tensor] = []
    real = torch.multinomial

    def spy(probs: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        seen.append(probs.clone())
        return real(probs, *args, **kw)

    monkeypatch.setattr(torch, "multinomial", spy)
    rng = np.random.default_rng(1)
    for seed in range(20):
        logits = (rng.normal(size=(3, 1000)) * 4).astype(np.float32)
        params = torch_decode.DecodeParams(max_new_tokens=1, do_sample=True, seed=seed, **setting)
        gen = torch.Generator().manual_seed(seed)
        picked = torch_decode._select(torch.from_numpy(logits), params, gen).numpy()
        mine = probabilities(logits, params.temperature, params.top_k, params.top_p)
        ref = seen[-1].numpy()
        assert np.array_equal(mine == 0, ref == 0)  # the same tokens filtered out
        np.testing.assert_allclose(mine, ref, atol=1e-6)
        assert np.array_equal(Sampler(seed=seed, **setting).select(logits), picked)


def test_draws_follow_the_probabilities() -> None:
    """Chi-square on 20,000 draws from fixed logits (df 9; 27.88 is the 0.001 critical value)."""
    logits = np.log(np.array([[0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01]], dtype=np.float32))
    draws = 20_000
    sampler = Sampler(seed=2024)
    counts = np.bincount(sampler.select(np.repeat(logits, draws, axis=0)), minlength=10)
    expected = probabilities(logits, 1.0, None, None)[0] * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88, (chi2, counts.tolist())
    top3 = np.bincount(Sampler(seed=5, top_k=3).select(np.repeat(logits, draws, axis=0)), minlength=10)
    assert top3[3:].sum() == 0
    renorm = np.exp(logits[0, :3]) / np.exp(logits[0, :3]).sum() * draws
    assert float(((top3[:3] - renorm) ** 2 / renorm).sum()) < 13.82  # df 2, 0.001


def test_sampler_refuses_nan_probabilities() -> None:
    with pytest.raises(ExecutorError, match="probability tensor contains"):
        Sampler(seed=0).draw(np.array([[np.nan, 1.0]], dtype=np.float32))


# -- whole runs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_sampled_runs_equal_torch(family: str, session: Any) -> None:
    """Same seed, same settings: identical tokens, one prompt and a left-padded batch."""
    ex = executors(family)
    one = TraceRequest(input_text=PROMPTS[1], requested_artifacts=("tokens", "text", "logprobs"),
                      return_logits=True, return_logprobs=True)
    batch = ex[1].make_request(PROMPTS, logprobs=True)
    for i, setting in enumerate(SETTINGS):
        for req in (one, batch):
            m, t, mr, tr = both(ex, session, req, max_new_tokens=10, do_sample=True, seed=11 + i,
                                ignore_eos=True, **setting)
            assert mr.token_ids == tr.token_ids, (family, setting)
            assert mr.stop_reasons == tr.stop_reasons and mr.texts == tr.texts
            assert_same_trace_shape(m, t)
    assert sampling_attributes(m)[sc.GEN_AI_REQUEST_SEED] == 14
    assert sampling_attributes(m)[sc.GEN_AI_REQUEST_TOP_P] == pytest.approx(0.95)


def test_seeded_runs_repeat_and_seeds_differ(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, _ = pair
    req = TraceRequest(input_text=PROMPTS[0], requested_artifacts=("tokens", "text"))
    runs = [mex.run(req, max_new_tokens=12, do_sample=True, seed=s, ignore_eos=True) for s in (3, 3, 4)]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].token_ids != runs[2].token_ids
    greedy = mex.run(req, max_new_tokens=12, ignore_eos=True)
    assert runs[0].token_ids != greedy.token_ids  # a near-uniform random model: sampling is not argmax
    unseeded = mex.run(req, max_new_tokens=12, do_sample=True, ignore_eos=True)
    assert len(unseeded.token_ids[0]) == 12
    trace = rebuilt(session, unseeded.trace_id)
    assert trace.root is not None and sc.GEN_AI_REQUEST_SEED not in trace.root.metadata


def test_sampled_decode_counts_its_reads(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """4 tokens: 4 host reads of the logits, 3 forward steps, 1 evaluation of the chosen logprobs."""
    req = TraceRequest(input_text=PROMPTS[2], requested_artifacts=("tokens", "logprobs"),
                       return_logits=True, return_logprobs=True)
    trace = rebuilt(session, pair[0].run(req, max_new_tokens=4, do_sample=True, seed=1, ignore_eos=True).trace_id)
    decode = trace.spans_for_stage("decode")[0].profile
    assert decode is not None and decode.sync_points == 4 + 3 + 1


def test_sampling_never_imports_torch(pair: tuple[MlxExecutor, TorchExecutor]) -> None:
    """In a process where ``import torch`` fails, the MLX executor samples the tokens torch samples."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from vauban_trace.contract import TraceRequest\n"
        "from vauban_trace.executors.mlx import MlxExecutor\n"
        "ex = MlxExecutor.from_pretrained(sys.argv[1])\n"
        "r = ex.run(TraceRequest(input_text=sys.argv[2], requested_artifacts=('text',)), max_new_tokens=6,\n"
        "           do_sample=True, seed=9, top_k=40, ignore_eos=True)\n"
        "print(list(r.token_ids[0]))\n"
    )
    mex, tex = pair
    out = subprocess.run([sys.executable, "-c", code, str(mex.path), PROMPTS[0]], capture_output=True, text=True,
                         check=True)
    expected = tex.run(TraceRequest(input_text=PROMPTS[0], requested_artifacts=("text",)), max_new_tokens=6,
                       do_sample=True, seed=9, top_k=40, ignore_eos=True)
    assert out.stdout.strip() == str(list(expected.token_ids[0]))


# -- stop strings --------------------------------------------------------------------------------
def test_stop_strings_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = TraceRequest(input_text=PROMPTS[1], requested_artifacts=("tokens", "text"))
    free = tex.run(req, max_new_tokens=12, ignore_eos=True)
    text = free.texts[0]
    stop = text[len(text) // 2: len(text) // 2 + 2]  # two characters from the middle of the output
    assert stop.strip(), text
    m, t, mr, tr = both(pair, session, req, max_new_tokens=12, ignore_eos=True, stop=[stop, "never seen"])
    assert mr.stop_reasons == tr.stop_reasons == ("stop_string",)
    assert mr.finish_reasons == tr.finish_reasons == ("stop",)
    assert mr.texts == tr.texts == (text[: text.find(stop)],)
    assert mr.token_ids == tr.token_ids and len(mr.token_ids[0]) < 12
    assert_same_trace_shape(m, t)
    assert decode_metadata(m)["decode.stop_reason"] == "stop_string"


def test_stop_strings_in_a_sampled_batch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Rows stop on their own (stop string or length); sampling goes on for the others, as in torch."""
    mex, tex = pair
    req = tex.make_request(PROMPTS)
    kw: dict[str, Any] = {"max_new_tokens": 12, "do_sample": True, "seed": 21, "temperature": 0.9, "ignore_eos": True}
    free = tex.run(req, **kw)
    row0 = free.texts[0]
    stop = row0[len(row0) // 3: len(row0) // 3 + 2]
    assert stop.strip() and all(stop not in r for r in free.texts[1:]), free.texts
    m, t, mr, tr = both(pair, session, req, stop=stop, **kw)
    assert mr.token_ids == tr.token_ids and mr.texts == tr.texts
    assert mr.stop_reasons == tr.stop_reasons and mr.stop_reasons[0] == "stop_string"
    assert "max_new_tokens" in mr.stop_reasons and mr.finish_reasons == tr.finish_reasons
    assert decode_metadata(m)["decode.stop_reason"] == "mixed"
    assert_same_trace_shape(m, t)


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"temperature": 0}, {"temperature": -1.0}, {"temperature": True}, {"top_p": 0}, {"top_p": 1.5},
    {"top_k": 0}, {"top_k": 2.5}, {"seed": -1}, {"seed": "7"}, {"stop": ""}, {"stop": ["ok", ""]}, {"stop": [3]},
])
def test_bad_settings_raise_torch_messages(bad: dict[str, Any], pair: tuple[MlxExecutor, TorchExecutor],
                                           session: Any) -> None:
    req = TraceRequest(input_text=PROMPTS[0], requested_artifacts=("text",))
    messages = []
    for ex in pair:
        with pytest.raises(ExecutorError) as info:
            ex.run(req, max_new_tokens=2, do_sample=True, **bad)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    with pytest.raises(ExecutorError, match="seed must be below 2"):
        pair[0].run(req, max_new_tokens=2, do_sample=True, seed=2**64)


def test_capabilities_declare_sampling(pair: tuple[MlxExecutor, TorchExecutor]) -> None:
    caps = pair[0].capabilities
    assert caps.levels["can_emit_text"] == "full"
    note = caps.notes["can_emit_text"]
    assert "sampled" in note and "stop strings" in note and "not built" not in note
