"""Codecs (canonical JSON, safetensors) and summarize_array."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vauban_trace.artifacts import (
    MEDIA_TYPE_JSON,
    MEDIA_TYPE_SAFETENSORS,
    ArtifactStoreError,
    LocalArtifactStore,
    decode_array,
    decode_json,
    encode_array,
    encode_json,
    summarize_array,
)


def test_media_type_constants() -> None:
    assert MEDIA_TYPE_JSON == "application/json"
    assert MEDIA_TYPE_SAFETENSORS == "application/vnd.safetensors"


def test_encode_json_is_canonical() -> None:
    a = encode_json({"b": [1, 2, 3], "a": {"z": 1, "y": "héllo ✓"}})
    b = encode_json({"a": {"y": "héllo ✓", "z": 1}, "b": [1, 2, 3]})
    assert a == b == '{"a":{"y":"héllo ✓","z":1},"b":[1,2,3]}'.encode()
    assert decode_json(a) == {"a": {"y": "héllo ✓", "z": 1}, "b": [1, 2, 3]}


def test_encode_json_numpy_values_and_refusals() -> None:
    ids = np.array([101, 7592, 102], dtype=np.int64)
    assert encode_json({"ids": ids, "n": np.int32(3), "t": (1, 2)}) == b'{"ids":[101,7592,102],"n":3,"t":[1,2]}'
    with pytest.raises(ValueError, match="encode_json"):
        encode_json({"x": float("nan")})
    with pytest.raises(TypeError, match="object is not JSON"):
        encode_json({"x": object()})
    with pytest.raises(ArtifactStoreError, match="not valid UTF-8 JSON"):
        decode_json(b"\xff{")


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_json_round_trip_property(value: object) -> None:
    data = encode_json(value)
    assert decode_json(data) == value
    assert encode_json(decode_json(data)) == data


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "uint8", "bool", "int8"])
def test_array_round_trip(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((2, 3, 5)) * 10).astype(dtype)
    data = encode_array(arr)
    back = decode_array(data)
    assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
    assert encode_array(arr.copy()) == data  # deterministic bytes
    assert encode_array(np.asfortranarray(arr)) == data  # layout does not change the bytes
    assert decode_array(data, name="data").shape == arr.shape


def test_array_digest_is_stable_through_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    r1 = store.put(encode_array(arr), MEDIA_TYPE_SAFETENSORS)
    r2 = store.put(encode_array(arr[...].copy()), MEDIA_TYPE_SAFETENSORS)
    assert r1 == r2
    assert np.array_equal(decode_array(store.get(r1.digest)), arr)


def test_array_codec_errors() -> None:
    with pytest.raises(TypeError, match="numpy.ndarray"):
        encode_array([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be stored"):
        encode_array(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="cannot be stored"):
        encode_array(np.array([object()]))
    with pytest.raises(ArtifactStoreError, match="not a valid safetensors"):
        decode_array(b"definitely not safetensors")
    data = encode_array(np.zeros(2), name="logits")
    with pytest.raises(ArtifactStoreError, match="no tensor 'data'"):
        decode_array(data, name="data")
    assert decode_array(data).shape == (2,)


def test_no_pickle_in_artifacts_package() -> None:
    import vauban_trace.artifacts as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path


def test_summarize_array_statistics() -> None:
    arr = np.array([[1.0, -2.0, 3.0], [4.0, 0.5, 4.0]], dtype=np.float32)
    s = summarize_array(arr, topk=2)
    vals = arr.astype(np.float64).ravel()
    assert s["mean"] == pytest.approx(vals.mean())
    assert s["std"] == pytest.approx(vals.std())
    assert s["min"] == -2.0 and s["max"] == 4.0
    assert s["l2_norm"] == pytest.approx(math.sqrt(float((vals**2).sum())))
    assert s["topk_ids"] == [0, 2]  # tie on 4.0: lower id first
    assert s["topk_values"] == [4.0, 4.0]
    assert all(type(s[k]) is float for k in ("mean", "std", "min", "max", "l2_norm"))
    json.dumps(s, allow_nan=False)
    assert "topk_ids" not in summarize_array(arr)


def test_summarize_array_float64_accumulation() -> None:
    arr = np.full(1 << 20, 0.1, dtype=np.float16)
    s = summarize_array(arr)
    assert s["mean"] == pytest.approx(float(np.float16(0.1)), rel=1e-12)


def test_summarize_array_edge_cases() -> None:
    s = summarize_array(np.array([1.0, np.nan, np.inf, -1.0]), topk=4)
    assert s["nonfinite_count"] == 2 and s["mean"] == 0.0 and s["max"] == 1.0
    assert s["topk_ids"] == [2, 0, 3, 1]  # inf first, NaN last
    assert s["topk_values"] == [None, 1.0, -1.0, None]
    json.dumps(s, allow_nan=False)
    empty = summarize_array(np.zeros((0, 4)), topk=3)
    assert empty["mean"] is None and empty["topk_ids"] == []
    scalar = summarize_array(np.array(5, dtype=np.int64), topk=3)
    assert scalar["topk_ids"] == [0] and scalar["l2_norm"] == 5.0
    assert summarize_array(np.array([True, False]))["mean"] == 0.5
    with pytest.raises(TypeError):
        summarize_array(np.array(["a"]))
    with pytest.raises(ValueError, match="topk"):
        summarize_array(np.zeros(3), topk=0)


def test_summarize_logits_last_row() -> None:
    logits = np.zeros((1, 3, 10), dtype=np.float32)
    logits[0, -1, 7] = 5.0
    logits[0, -1, 2] = 3.0
    logits[0, 0, 1] = 9.0  # earlier position must not count
    s = summarize_array(logits, topk=2)
    assert s["topk_ids"] == [7, 2] and s["topk_values"] == [5.0, 3.0]
