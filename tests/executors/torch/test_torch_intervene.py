"""Interventions: spec parsing, and each intervention moving activations and logits as it should.

Effects are checked on the evidence the trace itself carries: activation artifacts read back from
the blob store (digest-verified), and the intervention_result artifacts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import vauban_trace as vt
from vauban_trace._exceptions import ExecutorError
from vauban_trace.artifacts import decode_array, decode_json, encode_array, encode_json
from vauban_trace.contract import Intervention, Trace
from vauban_trace.executors.torch import TorchExecutor, format_intervention, parse_intervention
from vauban_trace.executors.torch.tiny import cached_tiny_model

PROMPT = "The quick brown fox jumps over"
OTHER = "The lazy dog jumps over the"  # same token count as PROMPT (checked in the patch test)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("intervene-store"))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def ex() -> TorchExecutor:
    executor = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
    executor.load()
    return executor


def array(session: Any, digest: str | None) -> np.ndarray:
    assert digest is not None
    return decode_array(session.artifact_store.get(digest))


def activation(session: Any, trace: Trace, layer: int, site: str = "residual") -> np.ndarray:
    (art,) = [a for a in trace.artifacts_of_kind("activation") if a.layer == layer and a.metadata["site"] == site]
    return array(session, art.digest)


def result(session: Any, trace: Trace) -> dict[str, Any]:
    (art,) = trace.artifacts_of_kind("intervention_result")
    value: dict[str, Any] = decode_json(session.artifact_store.get(art.digest))
    return value


def unit_random(seed: int, width: int = 64) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(width, generator=gen)
    return (v / v.norm()).numpy()


# -- spec syntax --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "name", "layer", "params"),
    [
        ("ablate:layer=1,direction=random:7", "ablate", 1,
         {"site": "residual", "direction": "random:7", "positions": "all"}),
        ("steer:layer=0,vector=random:1,alpha=4.5,site=mlp,positions=prompt", "steer", 0,
         {"site": "mlp", "vector": "random:1", "positions": "prompt", "alpha": 4.5, "normalize": True}),
        ("steer:layer=1,vector=file:/tmp/v.npy,normalize=false", "steer", 1,
         {"site": "residual", "vector": "file:/tmp/v.npy", "positions": "all", "alpha": 1.0, "normalize": False}),
        ("patch:layer=1,source=sha256:" + "a" * 64, "patch", 1,
         {"site": "residual", "source": "sha256:" + "a" * 64, "positions": "prompt"}),
        (" ABLATE : layer = 0 , direction = blake3:" + "b" * 64, "ablate", 0,
         {"site": "residual", "direction": "blake3:" + "b" * 64, "positions": "all"}),
    ],
)
def test_specs_parse_and_format_round_trip(spec: str, name: str, layer: int, params: dict[str, Any]) -> None:
    iv = parse_intervention(spec)
    assert iv == Intervention(name=name, layer_index=layer, params=params)
    assert parse_intervention(format_intervention(iv)) == iv


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ablate", "expected NAME:key=value"),
        ("rotate:layer=1", "NAME one of ablate, steer, patch"),
        ("ablate:layer=1", "missing parameter"),
        ("ablate:direction=random:1", "missing parameter.*layer"),
        ("ablate:layer=x,direction=random:1", "layer must be an integer"),
        ("ablate:layer=-1,direction=random:1", "layer must be >= 0"),
        ("ablate:layer=1,direction=random:1,alpha=2", "unknown parameter 'alpha' for ablate"),
        ("ablate:layer=1,direction=random:x", r"random:SEED needs an integer seed in 0 \.\. 2\*\*64 - 1"),
        ("steer:layer=0,vector=random:18446744073709551616", r"integer seed in 0 \.\. 2\*\*64 - 1"),
        ("steer:layer=0,vector=random:-1", "integer seed"),
        ("steer:layer=0,vector=random:\u0661", "integer seed"),  # a non-ASCII digit
        ("ablate:layer=1,direction=sha256:abc", "not a vector reference"),
        ("ablate:layer=1,direction=random:1,site=head", "site must be one of"),
        ("steer:layer=1,vector=random:1,alpha=big", "alpha must be a number"),
        ("steer:layer=1,vector=random:1,alpha=inf", "alpha must be finite"),
        ("steer:layer=1,vector=random:1,normalize=maybe", "expected true or false"),
        ("steer:layer=1,layer=2,vector=random:1", "given twice"),
        ("patch:layer=1,source=random:3", "source must be a digest"),
        ("steer:layer=1,vector", "is not key=value"),
        ("ablate:layer=1,direction=random:1,positions=last", "positions must be all or prompt"),
    ],
)
def test_bad_specs_give_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ExecutorError, match=message):
        parse_intervention(spec)


def test_largest_seed_is_accepted_and_an_unparsed_oversized_seed_is_refused_before_the_run(
    session: Any, ex: TorchExecutor,
) -> None:
    """2**64 - 1 is the generator's limit; an Intervention built without the parser (the contract
    type) with a larger seed gets an ExecutorError naming it, not torch's overflow error."""
    assert parse_intervention("steer:layer=0,vector=random:18446744073709551615").params["vector"].endswith("615")
    iv = Intervention(name="steer", layer_index=0,
                      params={"vector": "random:18446744073709551616", "site": "residual", "positions": "all",
                              "alpha": 1.0, "normalize": True})
    with pytest.raises(ExecutorError, match="integer seed in 0"):
        ex.trace(ex.make_request(PROMPT, interventions=[iv]), max_new_tokens=0)
    bare = Intervention(name="steer", layer_index=0, params={"site": "residual"})  # no vector at all
    with pytest.raises(ExecutorError, match="missing parameter vector"):
        ex.trace(ex.make_request(PROMPT, interventions=[bare]), max_new_tokens=0)


# -- effects -----------------------------------------------------------------------------------
def test_ablation_zeroes_the_projection_at_its_layer(session: Any, ex: TorchExecutor) -> None:
    d = unit_random(11)
    clean = ex.trace(ex.make_request(PROMPT, layers=(1,)), max_new_tokens=0)
    cut = ex.trace(ex.make_request(PROMPT, layers=(1,), interventions=["ablate:layer=1,direction=random:11"]),
                   max_new_tokens=3)
    before = activation(session, clean, 1) @ d
    after = activation(session, cut, 1) @ d
    assert np.abs(before).max() > 1e-2  # there was something to remove
    assert np.abs(after).max() < 1e-5
    value = result(session, cut)
    assert value["name"] == "ablate" and value["layer"] == 1 and value["params"]["direction"] == "random:11"
    assert value["site_module"] == "model.layers.1"
    assert abs(value["effect"]["projection_after"]) < 1e-5
    assert value["effect"]["projection_before"] == pytest.approx(float(before.mean()), abs=1e-4)
    assert value["effect"]["norm_change"] <= 0  # removing a component never grows the norm
    assert value["effect"]["calls"] == {"prefill": 1}  # measured on the prompt pass, in the intervene stage
    assert cut.spans_for_stage("decode")[0].metadata["intervention_calls"] == (2,)  # then 2 forward steps
    lp = value["logits_effect"]
    assert len(lp["logprob_change"]) == 1 and lp["logprob_change"][0] != 0.0
    assert lp["intervened_logprobs_of_clean_top"][0] - lp["clean_top_logprobs"][0] == pytest.approx(
        lp["logprob_change"][0])


def test_steering_raises_the_projection_by_alpha(session: Any, ex: TorchExecutor) -> None:
    v = unit_random(5)
    clean = ex.trace(ex.make_request(PROMPT, layers=(0, 1)), max_new_tokens=0)
    steered = ex.trace(ex.make_request(PROMPT, layers=(0, 1), interventions=["steer:layer=1,vector=random:5,alpha=4"]),
                       max_new_tokens=0)
    np.testing.assert_allclose(activation(session, steered, 0), activation(session, clean, 0))  # upstream untouched
    delta = activation(session, steered, 1) @ v - activation(session, clean, 1) @ v
    np.testing.assert_allclose(delta, 4.0, atol=1e-4)
    value = result(session, steered)
    assert value["effect"]["projection_after"] - value["effect"]["projection_before"] == pytest.approx(4.0, abs=1e-4)
    assert value["logits_effect"]["logprob_change"][0] != 0.0
    logits_clean = ex.trace(ex.make_request(PROMPT, logits=True), max_new_tokens=0)
    logits_steer = ex.trace(ex.make_request(PROMPT, logits=True, interventions=["steer:layer=1,vector=random:5,alpha=4"]),
                            max_new_tokens=0)
    a = array(session, logits_clean.artifacts_of_kind("logits")[0].digest)
    b = array(session, logits_steer.artifacts_of_kind("logits")[0].digest)
    assert np.abs(a - b).max() > 1e-3


def test_vectors_come_from_the_blob_store_by_digest_and_are_verified(session: Any, ex: TorchExecutor, tmp_path: Any) -> None:
    raw = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    ref = session.artifact_store.put(encode_array(raw), "application/vnd.safetensors")
    json_ref = session.artifact_store.put(encode_json(raw.tolist()), "application/json")
    np.save(tmp_path / "v.npy", raw)
    deltas = []
    for source in (ref.digest, json_ref.digest, f"file:{tmp_path / 'v.npy'}"):
        trace = ex.trace(ex.make_request(PROMPT, layers=(0,),
                                         interventions=[f"steer:layer=0,vector={source},alpha=2,normalize=false"]))
        deltas.append(result(session, trace)["effect"]["projection_after"] - result(session, trace)["effect"]["projection_before"])
        assert result(session, trace)["vector_input_norm"] == pytest.approx(float(np.linalg.norm(raw)), rel=1e-5)
    # un-normalised: the projection onto the unit direction grows by alpha * |v|
    np.testing.assert_allclose(deltas, 2.0 * np.linalg.norm(raw), rtol=1e-4)
    with pytest.raises(ExecutorError, match="cannot read sha256:|cannot read blake3:"):
        ex.run(ex.make_request(PROMPT, interventions=["steer:layer=0,vector=blake3:" + "0" * 64]))
    path = session.artifact_store.path_for(ref.digest)
    path.chmod(0o644)
    path.write_bytes(encode_array(raw * 2))  # tampered: the bytes no longer hash to the digest
    with pytest.raises(ExecutorError, match="cannot read"):
        ex.run(ex.make_request(PROMPT, interventions=[f"ablate:layer=0,direction={ref.digest}"]))
    wrong = session.artifact_store.put(encode_array(np.ones(10, dtype=np.float32)), "application/vnd.safetensors")
    with pytest.raises(ExecutorError, match="model width 64, got shape \\[10\\]"):
        ex.run(ex.make_request(PROMPT, interventions=[f"ablate:layer=0,direction={wrong.digest}"]))


def test_patching_replaces_the_hidden_state_with_the_source(session: Any, ex: TorchExecutor) -> None:
    tok = ex.tokenizer
    assert len(tok(PROMPT)["input_ids"]) == len(tok(OTHER)["input_ids"]), "prompts must have equal length"
    source_trace = ex.trace(ex.make_request(PROMPT, layers=(0,), logits=True), max_new_tokens=0)
    (src,) = source_trace.artifacts_of_kind("activation")
    patched = ex.trace(ex.make_request(OTHER, layers=(0, 1), logits=True,
                                       interventions=[f"patch:layer=0,source={src.digest}"]), max_new_tokens=2)
    np.testing.assert_array_equal(activation(session, patched, 0), array(session, src.digest))
    # everything downstream of a fully patched layer 0 is the source run's: same logits
    np.testing.assert_allclose(
        array(session, patched.artifacts_of_kind("logits")[0].digest),
        array(session, source_trace.artifacts_of_kind("logits")[0].digest), rtol=1e-5, atol=1e-5)
    value = result(session, patched)
    assert value["params"]["source"] == src.digest
    assert value["effect"]["calls"] == {"prefill": 1}  # patching targets the prompt pass only
    with pytest.raises(ExecutorError, match="does not match"):
        ex.run(ex.make_request("Hi", interventions=[f"patch:layer=0,source={src.digest}"]))


def test_interventions_apply_to_attn_and_mlp_sites_and_together(session: Any, ex: TorchExecutor) -> None:
    v = unit_random(2)
    trace = ex.trace(ex.make_request(PROMPT, layers=(0,), interventions=[
        "steer:layer=0,vector=random:2,alpha=3,site=mlp", "ablate:layer=1,direction=random:4"]),
        sites=("mlp",), max_new_tokens=0)
    clean = ex.trace(ex.make_request(PROMPT, layers=(0,)), sites=("mlp",), max_new_tokens=0)
    delta = activation(session, trace, 0, "mlp") @ v - activation(session, clean, 0, "mlp") @ v
    np.testing.assert_allclose(delta, 3.0, atol=1e-4)
    results = [decode_json(session.artifact_store.get(a.digest)) for a in trace.artifacts_of_kind("intervention_result")]
    assert [(r["name"], r["layer"], r["site_module"]) for r in results] == [
        ("steer", 0, "model.layers.0.mlp"), ("ablate", 1, "model.layers.1")]


def test_intervention_layer_out_of_range_and_absent_site(ex: TorchExecutor) -> None:
    with pytest.raises(ExecutorError, match="layer 5 is out of range"):
        ex.run(ex.make_request(PROMPT, interventions=["ablate:layer=5,direction=random:1"]))
    with pytest.raises(ExecutorError, match="zero or non-finite norm"):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            np.save(f"{d}/z.npy", np.zeros(64, dtype=np.float32))
            ex.run(ex.make_request(PROMPT, interventions=[f"ablate:layer=0,direction=file:{d}/z.npy"]))
