"""vauban_trace.report.content_diff on real traces: a tiny llama baseline against a steered run (steer
at layer 1), measured from the blobs of the embedded store; plus hand-made blobs for the edge cases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vauban_trace as vt
from vauban_trace._exceptions import ReportError
from vauban_trace.artifacts import (
    MEDIA_TYPE_JSON,
    MEDIA_TYPE_SAFETENSORS,
    LocalArtifactStore,
    encode_array,
    encode_json,
    open_store,
)
from vauban_trace.contract import Trace
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.report import ArtifactDiff, ContentDiff, TraceDiff, content_diff, diff_traces

PROMPT = "The quick brown fox jumps over"
STEER = "steer:layer=1,vector=random:7,alpha=4"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trace, Trace, Path]]:
    store_dir = tmp_path_factory.mktemp("content-store")
    session: Any = vt.configure(store_dir=store_dir)
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()
        base = ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True), max_new_tokens=0)
        steer = ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True, interventions=[STEER]),
                         max_new_tokens=0)
    finally:
        session.shutdown()
    yield base, steer, store_dir / "blobs"


def test_identical_upstream_and_changed_downstream(run: tuple[Trace, Trace, Path]) -> None:
    base, steer, blobs = run
    cd = content_diff(diff_traces(base, steer), blobs)
    assert isinstance(cd, ContentDiff) and all(p.measured for p in cd.pairs)
    layer0 = cd.pair("activation", layer=0)  # before the intervention layer: the same bytes
    assert layer0.identical is True and layer0.equal is True and layer0.positions == 9
    assert layer0.cosine_mean == pytest.approx(1.0, abs=1e-12) and layer0.cosine_min == pytest.approx(1.0, abs=1e-12)
    assert layer0.relative_l2 == 0.0 and layer0.kl_max is None
    layer1 = cd.pair("activation", layer=1)
    assert layer1.identical is False and layer1.equal is False
    assert layer1.cosine_mean is not None and layer1.cosine_mean < 0.99
    assert layer1.relative_l2 is not None and layer1.relative_l2 > 0.1
    for kind in ("logits", "logprobs"):
        (p,) = cd.pairs_of_kind(kind)
        assert p.kl_max is not None and p.kl_max > 0 and p.kl_mean == p.kl_max  # one (last) position
        assert p.positions == 1 and p.top1_agreement in (0.0, 1.0)
        assert p.cosine_mean is not None and p.cosine_mean < 1.0
    # KL of softmax(logits) and of exp(logprobs) measure the same distributions
    assert cd.pair("logits").kl_max == pytest.approx(cd.pair("logprobs").kl_max, rel=1e-4)
    (tokens,) = cd.pairs_of_kind("tokens")
    assert tokens.equal is True and tokens.cosine_mean is None
    json.dumps(cd.to_dict(), allow_nan=False)


def test_self_comparison_gives_zero_kl(run: tuple[Trace, Trace, Path]) -> None:
    base, _, blobs = run
    cd = content_diff(base, open_store(blobs), candidate=base)
    logits = cd.pair("logits")
    assert logits.kl_max == 0.0 and logits.kl_mean == 0.0 and logits.top1_agreement == 1.0
    assert all(p.equal is True and p.identical is True for p in cd.pairs)


def test_deleted_blob_gives_a_reason(run: tuple[Trace, Trace, Path], tmp_path: Path) -> None:
    base, steer, blobs = run
    copy = tmp_path / "blobs"
    shutil.copytree(blobs, copy)
    store = LocalArtifactStore(copy)
    (logits,) = steer.artifacts_of_kind("logits")
    assert logits.digest is not None
    store.path_for(logits.digest).unlink()
    layer1 = steer.artifacts_of_kind("activation")[1]
    assert layer1.digest is not None
    store.path_for(layer1.digest).write_bytes(b"tampered")
    cd = content_diff(diff_traces(base, steer), store)
    p = cd.pair("logits")
    assert not p.measured and p.kl_max is None and p.cosine_mean is None and p.equal is None
    assert p.reason is not None and p.reason.startswith("candidate blob unreadable") and "no blob" in p.reason
    bad = cd.pair("activation", layer=1)
    assert not bad.measured and bad.cosine_mean is None and "corrupted" in str(bad.reason)
    assert cd.pair("activation", layer=0).measured
    assert json.loads(json.dumps(cd.to_dict(), allow_nan=False))["pairs"][1]["measured"] is False


class _DictStore:
    """A store that does not verify what it returns (content_diff must)."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    def get(self, digest: str) -> bytes:
        return self.blobs[digest]


def _pair(kind: str, b: str | None, c: str | None) -> TraceDiff:
    pair = ArtifactDiff(kind, None, "s", 0, "b", "c", b, c, b == c if b and c else None, (), (), None, None)
    return TraceDiff("t1", "t2", (pair,))


def test_edge_cases_from_hand_made_blobs(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "b")

    def put(data: bytes) -> str:
        media = MEDIA_TYPE_SAFETENSORS if data[8:9] == b"{" else MEDIA_TYPE_JSON
        return store.put(data, media).digest

    a = put(encode_array(np.arange(12, dtype=np.float32).reshape(3, 4)))
    wider = put(encode_array(np.ones((3, 5), dtype=np.float32)))
    nan = put(encode_array(np.array([[1.0, np.nan]], dtype=np.float32)))
    text = put(encode_json("hello"))
    other = put(encode_json("world"))
    gen = put(encode_array(np.array([[-0.5, -1.5]], dtype=np.float32)))
    gen2 = put(encode_array(np.array([[-0.4, -1.5]], dtype=np.float32)))
    masked = put(encode_array(np.array([[0.0, -np.inf]], dtype=np.float32)))

    def one(kind: str, b: str | None, c: str | None, where: Any = store) -> Any:
        return content_diff(_pair(kind, b, c), where).pairs[0]

    assert "shapes differ ((3, 4) against (3, 5))" in str(one("activation", a, wider).reason)
    assert "NaN or infinite" in str(one("logits", nan, nan).reason)
    assert one("logits", masked, masked).reason is not None
    assert "one side is a tensor" in str(one("text", a, text).reason)
    assert one("text", text, other).equal is False and one("text", text, text).equal is True
    assert "no digest on the baseline" in str(one("tokens", None, text).reason)
    g = one("logprobs", gen, gen2)  # per-token logprobs of generated tokens: not a distribution
    assert g.measured and g.kl_max is None and g.cosine_mean is not None
    assert any("not a distribution" in n for n in g.notes)
    # an unverifying store: tampered bytes are refused, intact ones measured
    raw = {a: store.get(a), wider: store.get(a)}
    assert "corrupted" in str(one("activation", a, wider, _DictStore(raw)).reason)
    assert one("activation", a, a, _DictStore(raw)).relative_l2 == 0.0
    with pytest.raises(ReportError):
        content_diff(_pair("logits", a, a), object())
    with pytest.raises(ReportError):
        content_diff("not a diff", store)  # type: ignore[arg-type]
