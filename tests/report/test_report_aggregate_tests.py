"""Paired tests over real traces: a tiny llama run through the torch executor on seven prompts stamped with a
prompt id, baseline against a steered run (steer at layer 1), both read back from the store and paired by the
request metadata. The steer raises the layer-1 activation norm in every pair (sign-flip p = 2/2^7) and leaves
layer 0 untouched (every delta 0, p = 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import vauban_trace as vt
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.report import Claim, ClaimTest, aggregate_report, pair_traces
from vauban_trace.sources import open_source

PROMPTS = ("The quick brown fox jumps over", "hello world", "a cat sat on the mat", "lazy dogs sleep",
           "seven prompts make a set", "the rain in spain", "one more for luck")
STEER = "steer:layer=1,vector=random:7,alpha=4"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store_dir = tmp_path_factory.mktemp("tests-store")
    session: Any = vt.configure(store_dir=store_dir)
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()

        def run(i: int, prompt: str, **kw: Any) -> str:
            req = ex.make_request(prompt, layers=(0, 1), logprobs=True, metadata={"prompt_id": f"p{i}"}, **kw)
            return ex.trace(req, max_new_tokens=0).id

        base = [run(i, p) for i, p in enumerate(PROMPTS)]
        cand = [run(i, p, interventions=[STEER]) for i, p in reversed(list(enumerate(PROMPTS)))]
        rerun = [run(i, p) for i, p in enumerate(PROMPTS)]  # the baseline again: the noise floor
    finally:
        session.shutdown()
    with open_source(f"store:{store_dir}") as src:
        yield {"base": [src.get_trace(t) for t in base], "cand": [src.get_trace(t) for t in cand],
               "rerun": [src.get_trace(t) for t in rerun], "blobs": store_dir / "blobs"}


def test_steering_differs_at_layer_1_not_at_layer_0(stored: dict[str, Any]) -> None:
    base, cand = stored["base"], stored["cand"]
    assert base[0].request.metadata == {"prompt_id": "p0"}  # stamped metadata survives the store
    pairing = pair_traces(base, cand, by="metadata.prompt_id")
    assert pairing.unpaired == () and pairing.notes == ()
    assert [p.candidate.request.metadata["prompt_id"] for p in pairing.pairs  # type: ignore[union-attr]
            ] == [f"p{i}" for i in range(7)]
    claims = [
        Claim("the steer moves the layer-1 norm", "activation_diagnostic", ("activation[1]",),
              ClaimTest("activation[1]:l2_norm", "differs")),
        Claim("layer 0 is untouched", "activation_diagnostic", ("activation[0]",),
              ClaimTest("activation[0]:l2_norm", "does_not_differ", margin=1e-6)),
        Claim("layer 0 moves", "activation_diagnostic", ("activation[0]",), ClaimTest("activation[0]:l2_norm", "differs")),
    ]
    agg = aggregate_report(pairing, claims,
                           family=["activation[0]:l2_norm", "activation[1]:l2_norm"])
    assert agg.tests is not None and agg.tests.m == 2
    layer1, layer0 = agg.test("activation[1]:l2_norm"), agg.test("activation[0]:l2_norm")
    deltas = [v[3] for v in agg.summary("activation", "l2_norm", 1).values]
    assert len(deltas) == 7 and all(d > 0 for d in deltas)
    assert layer1.test is not None and layer1.test.p == 2 / 128 and layer1.p_holm == 2 * 2 / 128
    assert layer1.differs is True and layer1.effect is not None and layer1.effect.ci_low is not None
    assert layer1.effect.ci_low > 0
    assert layer0.test is not None and layer0.test.p == 1.0 and layer0.differs is False
    assert [c.accepted for c in agg.claims] == [True, True, False]
    assert agg.claims[2].problems[0].startswith("test: activation[0]@observe#0:l2_norm does not differ")
    doc = json.loads(json.dumps(agg.to_dict(), allow_nan=False))
    assert doc["pairing"]["by"] == ["metadata.prompt_id"] and doc["tests"]["family"] == [
        "activation[0]:l2_norm", "activation[1]:l2_norm"]
    # every measure at once: the family is large, and Holm says what 7 pairs can and cannot show
    everything = aggregate_report(pairing)  # summaries and counters need no blobs
    assert everything.tests is not None and everything.tests.m > 10
    wide = everything.test("activation[1]:l2_norm")
    assert wide.test is not None and wide.test.p == layer1.test.p
    assert wide.p_holm == pytest.approx(min(1.0, everything.tests.m * 2 / 128))


def test_content_measures_against_reruns_of_the_baseline(stored: dict[str, Any]) -> None:
    base, cand, rerun = stored["base"], stored["cand"], stored["rerun"]
    by = "metadata.prompt_id"
    pairing, reference = pair_traces(base, cand, by=by), pair_traces(base[:6], rerun, by=by)
    family = ["logits:kl_max", "logits:top1_agreement", "activation[1]:relative_l2"]
    agg = aggregate_report(pairing, blobs=stored["blobs"], reference=reference, family=family)
    assert agg.tests is not None and agg.tests.m == 3 and agg.tests.untested[0].startswith(
        "content measures are tested against the reference pairs")
    assert agg.notes == (f"reference: unpaired candidate {rerun[6].id}: no baseline trace carries this metadata",)
    kl = agg.test("logits:kl_max")
    assert kl.ref == "logits@prefill#0:kl_max" and kl.n == 6  # pair 6 has no rerun: said, not imputed
    assert [(g.reason, g.pairs) for g in kl.not_computed] == [
        ("reference: no reference pair for this pair's baseline trace or key", (6,))]
    measured = dict(agg.measure("logits", "kl_max").values)
    assert kl.effect is not None and kl.effect.mean == pytest.approx(sum(measured[i] for i in range(6)) / 6)
    assert kl.test is not None and kl.test.p == 2 / 64 and kl.p_holm is not None  # reruns are bit-identical here
    top1 = agg.test("logits:top1_agreement")
    assert top1.effect is not None and top1.effect.mean < 0  # agreement drops below the rerun's 1
    # the null: the rerun against itself as reference gives deltas of 0 and p = 1
    same = aggregate_report(pair_traces(base, rerun, by=by), blobs=stored["blobs"],
                            reference=pair_traces(base, rerun, by=by), family=family)
    null = same.test("logits:kl_max")
    assert null.test is not None and null.test.p == 1.0 and null.differs is False and null.n == 7
    assert aggregate_report(pairing, blobs=stored["blobs"]).tests.untested[0].startswith(  # type: ignore[union-attr]
        "content measures (kl_max")
