"""The shared request builder and trace reader, and the MLX executor's host/device copy counters.

``make_request`` / ``read_trace`` / ``trace()`` are framework-free (``executors._requests``):
``MlxExecutor.make_request`` must build the request ``TorchExecutor.make_request`` builds (equal
records, a batch stored under the same ``input_ref``), with the same errors, and an MLX process
that cannot import torch must build, run and read back a batch with interventions. Copy counters:
on this machine MLX runs on the CPU, so every stage must carry what the torch executor carries on
the CPU (``0``, ``derived``), and the instrumentation's numpy conversions are no device-to-host
copies (``0``, measured, as torch's CPU tensors); the other devices' rules are checked on the
decision function, the probe and the value adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_helpers import blob, child_stages, executors, rebuilt

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import Intervention
from vauban_trace.executors import make_request, parse_intervention, read_trace
from vauban_trace.executors.mlx import MlxExecutor, _values
from vauban_trace.executors.mlx._counters import COPY_COUNTERS, MlxCopyProbe, copy_facts
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch import parse_intervention as torch_parse_intervention

PROMPTS = ["Paris is the capital", "The quick brown fox jumps over", "Hello"]
STEER = "steer:layer=1,vector=random:5,alpha=4"
INSTRUMENTATION = ("instrumentation_d2h_copies", "instrumentation_d2h_bytes")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("mlx-requests-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def pair(session: Any) -> tuple[MlxExecutor, TorchExecutor]:
    return executors("llama")


# -- the request builder ---------------------------------------------------------------------------
CASES: list[tuple[Any, dict[str, Any]]] = [
    ("Paris is", {}),
    ("Paris is", {"layers": (0, 1), "logprobs": True}),
    ("Paris is", {"logits": True, "artifacts": ["metric", "weight_snapshot", "logits"], "chat": True}),
    (PROMPTS, {"layers": (1,), "logprobs": True, "metadata": {"prompt_id": "p7"},
               "interventions": [STEER, Intervention(name="ablate", layer_index=0,
                                                     params={"direction": "random:11", "site": "mlp"})]}),
    (PROMPTS[:2], {"interventions": ["ablate:layer=0,direction=random:4,site=attn,positions=prompt"]}),
]


@pytest.mark.parametrize(("prompts", "kw"), CASES)
def test_make_request_equals_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any, prompts: Any,
                                   kw: dict[str, Any]) -> None:
    mex, tex = pair
    lazy = MlxExecutor.from_pretrained(mex.path)
    m, t, shared, unloaded = (mex.make_request(prompts, **kw), tex.make_request(prompts, **kw),
                              make_request(prompts, **kw), lazy.make_request(prompts, **kw))
    assert m == t == shared == unloaded
    assert not lazy.loaded  # building a request reads nothing of the model
    if isinstance(prompts, str):
        assert m.input_text == prompts and m.input_ref is None and "batch_size" not in m.metadata
    else:  # a batch: the prompts are a JSON list in the store, named by digest
        assert m.input_text is None and m.metadata["batch_size"] == len(prompts)
        assert blob(session, m.input_ref) == prompts
    kinds = ["tokens", "text"] + (["logits"] if kw.get("logits") or kw.get("logprobs") else [])
    kinds += (["logprobs"] if kw.get("logprobs") else []) + (["activation"] if kw.get("layers") else [])
    kinds += ["intervention_result"] if kw.get("interventions") else []
    assert m.requested_artifacts == tuple(dict.fromkeys(kinds + list(kw.get("artifacts", ()))))
    assert [iv.name for iv in m.interventions] == [
        (parse_intervention(i) if isinstance(i, str) else i).name for i in kw.get("interventions", ())]


def test_shared_parser_is_the_torch_executors() -> None:
    assert torch_parse_intervention is parse_intervention
    iv = parse_intervention(STEER)  # defaults filled in
    assert (iv.name, iv.layer_index) == ("steer", 1)
    assert dict(iv.params) == {"site": "residual", "vector": "random:5", "positions": "all", "alpha": 4.0,
                               "normalize": True}


def test_request_errors_match_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    bad: list[tuple[Any, dict[str, Any]]] = [
        ([], {}), ([1, 2], {}), ("x", {"interventions": ["steer:layer=1"]}),
        ("x", {"interventions": ["warp:layer=1,vector=random:1"]}), ("x", {"layers": (-1,)}),
    ]
    first = []
    for prompts, kw in bad:
        messages = []
        for build in (mex.make_request, tex.make_request, make_request):
            with pytest.raises(ExecutorError) as info:
                build(prompts, **kw)
            messages.append(str(info.value))
        assert messages[0] == messages[1] == messages[2], messages
        first.append(messages[0])
    assert first[0] == first[1] == "prompts must be a string or a non-empty list of strings"
    assert first[4].startswith("invalid request: ")


def test_mlx_runs_its_own_batch_request_like_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    mex, tex = pair
    req = mex.make_request(PROMPTS, layers=(1,), logprobs=True, interventions=[STEER])
    mr, tr = mex.run(req, max_new_tokens=4, ignore_eos=True), tex.run(req, max_new_tokens=4, ignore_eos=True)
    assert len(mr.texts) == 3 and mr.token_ids == tr.token_ids and mr.texts == tr.texts
    assert mr.prompt_token_ids == tr.prompt_token_ids
    m, t = rebuilt(session, mr.trace_id), rebuilt(session, tr.trace_id)
    assert child_stages(m) == child_stages(t)
    assert m.spans_for_stage("batch")[0].profile.batch_size == 3  # type: ignore[union-attr]
    traced = mex.trace(req, max_new_tokens=2, ignore_eos=True)  # run + flush + rebuild, in one call
    assert traced == read_trace(session, traced.id) and child_stages(traced) == child_stages(m)


# -- never torch ---------------------------------------------------------------------------------
_NO_TORCH = """
import json, sys
sys.modules['torch'] = None            # `import torch` raises ImportError from here on
import vauban_trace as vt
from vauban_trace._exceptions import ConfigurationError
from vauban_trace.executors import make_request, parse_intervention, read_trace
from vauban_trace.executors.mlx import MlxExecutor

ex = MlxExecutor.from_pretrained(sys.argv[1])
refused = []
try:
    ex.make_request(['a', 'b'])        # a batch is stored as a blob: it needs a session
except ConfigurationError as exc:
    refused.append(str(exc))
try:
    ex.trace(ex.make_request('a'))     # trace() reads the store back: refused before running
except ConfigurationError as exc:
    refused.append(str(exc))
loaded_before = ex.loaded
session = vt.configure(store_dir=sys.argv[2])
prompts = json.loads(sys.argv[3])
req = ex.make_request(prompts, layers=(1,), logprobs=True, interventions=[parse_intervention(sys.argv[4])])
trace = ex.trace(req, max_new_tokens=4, ignore_eos=True)
result = ex.run(req, max_new_tokens=4, ignore_eos=True)
again = read_trace(session, result.trace_id)
print(json.dumps({
    "refused": refused, "loaded_before": loaded_before, "equal_request": req == make_request(
        prompts, layers=(1,), logprobs=True, interventions=[sys.argv[4]]),
    "tokens": [list(t) for t in result.token_ids], "stages": [s.stage for s in again.spans],
    "kinds": sorted({a.kind for a in trace.artifacts}), "torch": sys.modules.get('torch') is not None,
}))
session.shutdown()
"""


def test_requests_and_traces_never_import_torch(pair: tuple[MlxExecutor, TorchExecutor], session: Any,
                                                tmp_path: Any) -> None:
    """In a process where ``import torch`` fails: build a batch request, run it, trace it, read it."""
    mex, tex = pair
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(mex.path), str(tmp_path / "store"), json.dumps(PROMPTS), STEER],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["refused"] == [
        "a batch request needs vauban_trace.configure() (its prompts are stored as a blob)",
        "trace() reads the rebuilt trace from the embedded store: call vauban_trace.configure(store_dir=...) first",
    ]
    assert got["loaded_before"] is False and got["equal_request"] is True and got["torch"] is False
    expected = tex.run(tex.make_request(PROMPTS, layers=(1,), logprobs=True, interventions=[STEER]),
                       max_new_tokens=4, ignore_eos=True)
    assert got["tokens"] == [list(t) for t in expected.token_ids]
    assert {"tokenize", "batch", "prefill", "observe", "intervene", "decode", "emit"} <= set(got["stages"])
    assert got["kinds"] == ["activation", "intervention_result", "logits", "logprobs", "text", "tokens"]


# -- copy counters --------------------------------------------------------------------------------
def _copies(trace: Any) -> dict[str | None, dict[str, tuple[Any, str]]]:
    out = {}
    for span in trace.spans:
        prof = span.profile
        assert prof is not None
        out[span.stage] = {c: (getattr(prof, c), prof.provenance_of(c).value) for c in COPY_COUNTERS + INSTRUMENTATION}
    return out


def test_copy_counters_equal_torch_on_the_cpu(pair: tuple[MlxExecutor, TorchExecutor], session: Any) -> None:
    """Every stage (load included) carries the torch CPU executor's copy counters: 0, derived."""
    mex, tex = pair
    lazy_m, lazy_t = MlxExecutor.from_pretrained(mex.path), TorchExecutor.from_pretrained(mex.path)
    req = tex.make_request(PROMPTS, layers=(0, 1), logprobs=True, interventions=[STEER], artifacts=["metric"])
    kw: dict[str, Any] = {"max_new_tokens": 3, "ignore_eos": True, "score_continuation": " the lazy dog"}
    m = rebuilt(session, lazy_m.run(req, **kw).trace_id)
    t = rebuilt(session, lazy_t.run(req, **kw).trace_id)
    mc, tc = _copies(m), _copies(t)
    assert list(mc) == list(tc) and {"load", "prefill", "intervene", "decode", "score", "emit"} <= set(mc)
    assert mc == tc
    for stage, counters in mc.items():
        for c in COPY_COUNTERS:
            assert counters[c] == ((None, "unavailable") if stage is None else (0, "derived")), (stage, c)
    for stage in ("prefill", "observe", "emit"):  # stages that record artifacts: conversions, no d2h copy
        assert mc[stage]["instrumentation_d2h_copies"] == (0, "measured")
        span = m.spans_for_stage(stage)[0]
        assert any(a.producer_span_id == span.id for a in m.artifacts), stage


def test_copy_facts_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule for each MLX device: CPU and Metal (shared storage) have no copies, others are unseen."""
    cpu = copy_facts("cpu")
    assert (cpu.memory, cpu.value, cpu.provenance, cpu.boundary) == ("host", 0, "derived", False)
    copy_facts.cache_clear()
    try:
        monkeypatch.setattr(mx.metal, "is_available", lambda: False)
        other = copy_facts("gpu")
        assert (other.memory, other.value, other.provenance, other.boundary) == ("managed", None, "unavailable", True)
        copy_facts.cache_clear()
        monkeypatch.setattr(mx.metal, "is_available", lambda: True)
        metal = copy_facts("gpu")
        assert (metal.memory, metal.value, metal.provenance, metal.boundary) == ("unified", 0, "derived", False)
        assert "shared storage" in metal.note and "unavailable" in other.note
        probe = MlxCopyProbe("gpu")
        assert probe.stop(probe.start()) == {c: (0, "derived") for c in COPY_COUNTERS}
        copy_facts.cache_clear()
        monkeypatch.setattr(mx.metal, "is_available", lambda: False)
        unseen = MlxCopyProbe("gpu")
        assert unseen.stop(unseen.start()) == {c: (None, "unavailable") for c in COPY_COUNTERS}
        # the instrumentation's conversion: one d2h copy of its bytes only where a boundary exists
        value = mx.arange(12, dtype=mx.float32).reshape(3, 4)
        assert (_values.to_host(value).d2h_copies, _values.to_host(value).d2h_bytes) == (0, 0)  # cpu here
        monkeypatch.setattr(_values, "device_label", lambda: "gpu")
        host = _values.to_host(value)
        assert (host.d2h_copies, host.d2h_bytes) == (1, 48)
        np.testing.assert_array_equal(host.array, np.arange(12, dtype=np.float32).reshape(3, 4))
    finally:
        copy_facts.cache_clear()


def test_capabilities_state_the_copy_facts(pair: tuple[MlxExecutor, TorchExecutor]) -> None:
    caps = pair[0].capabilities
    assert caps.levels["can_profile_device_memory"] == "full"
    note = caps.notes["can_profile_device_memory"]
    assert note.startswith("MLX allocator peak") and copy_facts("cpu").note in note
    assert "copy counters 0, derived" in note and caps.device_kinds == ("cpu",)
