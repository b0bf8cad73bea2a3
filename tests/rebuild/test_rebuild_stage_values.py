"""group_stage_values: the C grouping of stage observations equals the Python reference byte for
byte (the doubles appended per stage), and declines without appending anything when it cannot."""

from __future__ import annotations

import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from rebuild_documents_helpers import rich_trace, split_per_trace

from vauban_trace.rebuild import StageObservation, StageValues, native_available, rebuild_documents
from vauban_trace.rebuild import _documents as documents

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from collector_payloads import make_batch  # noqa: E402

needs_native = pytest.mark.skipif(not native_available(), reason="the _crebuild extension is not built")
OBSERVABLE = ("measured", "derived")


def _native(seqs: list[Any], observable: tuple[str, ...] = OBSERVABLE) -> tuple[int | None, dict[str, StageValues]]:
    per_stage: dict[str, StageValues] = {}
    got = documents._NATIVE.group_stages(per_stage, seqs, observable)
    return got, per_stage


def _python(seqs: list[Any], observable: tuple[str, ...] = OBSERVABLE) -> tuple[int, dict[str, StageValues]]:
    per_stage: dict[str, StageValues] = {}
    return documents.python_group_stage_values(per_stage, seqs, observable), per_stage


def _same(a: dict[str, StageValues], b: dict[str, StageValues]) -> bool:
    return list(a) == list(b) and all(tuple(map(bytes, a[k])) == tuple(map(bytes, b[k])) for k in a)


def _obs(stage: Any = "forward", duration: Any = 0.5, nin: Any = 10, nout: Any = 20, sync: Any = 3,
         prov: Any = "measured", span: str = "00" * 8) -> StageObservation:
    return StageObservation(span, stage, duration, nin, nout, sync, prov)


@needs_native
def test_documents_of_the_benchmark_and_rich_traces() -> None:
    docs = [rebuild_documents(part)[0] for part in split_per_trace(make_batch(7))]
    docs += [rebuild_documents(rich_trace(f"r{i}", n_stages=i + 1).data())[0] for i in range(5)]
    seqs = [d.stages for d in docs]
    (n_c, c), (n_py, py) = _native(seqs), _python(seqs)
    assert n_c == n_py > 0 and _same(c, py)
    durations = struct.unpack(f"{len(c['forward'][0]) // 8}d", bytes(c["forward"][0]))
    assert list(durations) == [o.duration_s for d in docs for o in d.stages if o.stage == "forward"]


@needs_native
def test_edge_values_match_the_reference() -> None:
    rng = random.Random(5)
    pool: list[Any] = [None, 0, 1, -1, 2**53 + 1, 2**63 - 1, 0.0, -0.0, 1e-300, 1e300, math.inf, math.nan, 0.1]
    seqs: list[Any] = []
    for _ in range(200):
        seq = [_obs(rng.choice(["a", "b", "", None, "é"]), rng.choice(pool), rng.choice(pool), rng.choice(pool),
                    rng.choice(pool), rng.choice(["measured", "derived", "declared", "unavailable", None]))
               for _ in range(rng.randrange(0, 6))]
        seqs.append(tuple(seq) if rng.random() < 0.5 else seq)
    (n_c, c), (n_py, py) = _native(seqs), _python(seqs)
    assert n_c == n_py and _same(c, py)
    assert "" not in c and None not in c


@needs_native
@pytest.mark.parametrize("bad", [
    [(_obs(),), ("not an observation",)],
    [(_obs(duration=True),)],  # bool: the reference's float() is the one to run
    [(_obs(stage=b"bytes"),)],
    [iter([_obs()])],
])
def test_declines_without_appending(bad: list[Any]) -> None:
    if not isinstance(bad[0], tuple | list):
        per_stage: dict[str, StageValues] = {}
        with pytest.raises(TypeError):
            documents._NATIVE.group_stages(per_stage, tuple(bad), OBSERVABLE)
        return
    got, per_stage = _native(bad)
    assert got is None and per_stage == {}


def test_switch_off_gives_the_same_bytes() -> None:
    docs = [rebuild_documents(part)[0] for part in split_per_trace(make_batch(8))[:4]]
    seqs: list[Any] = [d.stages for d in docs]
    on: dict[str, StageValues] = {}
    off: dict[str, StageValues] = {}
    n_on = documents.group_stage_values(on, seqs, OBSERVABLE)
    previous = documents.set_native(False)
    try:
        n_off = documents.group_stage_values(off, seqs, OBSERVABLE)
    finally:
        documents.set_native(previous)
    assert n_on == n_off and _same(on, off)


@needs_native
def test_c_made_documents_equal_the_tuple_road_and_stay_out_of_the_gc() -> None:
    """rebuild_document (the TraceDocument made in C, what rebuild_documents returns) holds exactly
    rebuild_one's values; neither it nor its StageObservations are tracked by the garbage
    collector (frozen records of atomic values: never part of a cycle)."""
    import gc

    from vauban_trace.rebuild import TraceDocument

    for part in split_per_trace(make_batch(9))[:4]:
        doc = documents._NATIVE.rebuild_document(part)
        assert isinstance(doc, TraceDocument) and doc.native
        assert doc == TraceDocument(*documents._NATIVE.rebuild_one(part), True)
        assert rebuild_documents(part) == [doc]
        assert not gc.is_tracked(doc) and not any(gc.is_tracked(s) for s in doc.stages)
    assert documents._NATIVE.rebuild_document(b"\xff\xff") is None


@needs_native
def test_python_code_cannot_run_while_the_c_loop_walks_the_sequences() -> None:
    """A provenance (or an observable word) that is not a plain str would be compared with ``==``, which
    can run Python code: here an ``__eq__`` that empties the caller's list frees the sequences the C
    loop is walking (a segfault before). C declines such input without appending; the reference runs."""
    seqs: list[Any] = []

    class Clears:
        def __eq__(self, other: object) -> bool:
            seqs.clear()
            return False

        __hash__ = object.__hash__

    seqs += [[_obs(prov=Clears()) for _ in range(50)] for _ in range(3)]
    got, per_stage = _native(seqs)
    assert got is None and per_stage == {} and len(seqs) == 3
    seqs[:] = [[_obs() for _ in range(5)]]
    got, per_stage = _native(seqs, (Clears(), "measured"))  # type: ignore[arg-type]
    assert got is None and per_stage == {} and len(seqs) == 1
    assert documents.group_stage_values(per_stage, [[_obs(prov="measured")]], OBSERVABLE) == 4
