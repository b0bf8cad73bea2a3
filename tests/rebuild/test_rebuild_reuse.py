"""The C road's reuse shortcuts and number writers, against the Python road.

The reader copies a KeyValue equal (byte for byte) to the one at the same position of the previous
span's or event's list instead of parsing it, reuses that attribute's name id when only the key is
equal, and skips the duplicate-key check for a list with the previous list's keys. These tests
build traces whose consecutive spans and events differ from the previous ones in exactly one
thing (a value's type or value, a key, a position, a duplicate key, the list's length) and check
that the C road either bails or gives the Python road's document. The number writers (integers in
8-digit chunks and digit pairs, short doubles without dtoa, hex ids) are checked on every int64
edge and on many doubles, through attributes that land in the span metadata.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from rebuild_documents_helpers import T0, TraceBuilder, check, kv, native_result, sid

from vauban_trace import semconv as sc
from vauban_trace.rebuild import native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="the _crebuild extension is not built")

SPAN_KEYS = [
    sc.STAGE, sc.DEVICE_KIND, sc.DEVICE_LABEL, sc.usl("input_bytes"), sc.usl_provenance("input_bytes"),
    sc.usl("duration_s"), sc.usl_provenance("duration_s"), sc.usl("sync_points"), sc.usl_provenance("sync_points"),
    sc.MEMORY_METHOD, sc.ERROR_TYPE, sc.COUNTER_MODE, sc.SERVICE_NAME,
    "app.a", "app.b", "x", "", "app.a.name.longer.than.thirty.two.bytes.for.the.word.compare",
]
EVENT_KEYS = [
    sc.ARTIFACT_KIND, sc.ARTIFACT_LAYER, sc.MISSING_REASON, sc.MISSING_DETAIL, "app.e", "step", "",
]
VALUES: list[Any] = [
    "cpu", "cpu:0", "measured", "derived", "unavailable", "prefill", "decode", "activation", "unsupported",
    "a\"b", "\u00e9", "", "x" * 40, "tab\there", 0, 1, -1, 3, 4096, 2**63 - 1, -(2**63), 4096.0, 3.0, -0.0,
    0.0, 1e16, 1e-07, 5e-324, 0.1, 1 / 3, 1e22, 2.5, True, False, None, [1, 2], ["a-0"], [], {"k": 1},
    {"k": "v"}, {"k": 1, "j": [None]},
]
Pairs = list[tuple[str, Any]]
EVENT_NAMES = ["app.ev", "app.other", "app.ev", sc.EVENT_ARTIFACT_MISSING]
MISSING_BASE: Pairs = [(sc.ARTIFACT_KIND, "weight_snapshot"), (sc.MISSING_REASON, "unsupported")]
# values the rebuild accepts for the known names (most lists then rebuild natively)
GOOD: dict[str, list[Any]] = {
    sc.STAGE: ["prefill", "decode"], sc.DEVICE_KIND: ["cpu", "cuda"], sc.DEVICE_LABEL: ["cpu:0", "\u00e9"],
    sc.usl("input_bytes"): [4096, 4096.0, 0, 2**63 - 1, 7], sc.usl_provenance("input_bytes"): ["measured", "derived"],
    sc.usl("duration_s"): [0.0025, 1.0, 3, 1e-07], sc.usl_provenance("duration_s"): ["measured", "derived"],
    sc.usl("sync_points"): [2, 0, 2.0], sc.usl_provenance("sync_points"): ["measured", "unavailable"],
    sc.MEMORY_METHOD: ["cpu.rss_peak_delta"], sc.ERROR_TYPE: ["ValueError"], sc.COUNTER_MODE: ["cheap"],
    sc.SERVICE_NAME: ["svc"], sc.ARTIFACT_KIND: ["weight_snapshot", "activation"],
    sc.ARTIFACT_LAYER: [1, 0], sc.MISSING_REASON: ["unsupported"], sc.MISSING_DETAIL: ["not built", "a\"b"],
}


def _value(key: str, pick: int) -> Any:
    good = GOOD.get(key)
    if good is not None and pick % 8 != 0:
        return good[pick % len(good)]
    return VALUES[pick % len(VALUES)]


# one mutation of the previous list: (op, a, b) with a, b indices into the list / pools
_op = st.tuples(st.sampled_from(["same", "value", "key", "swap", "drop", "add", "dup"]),
                st.integers(0, 63), st.integers(0, 63))


def _mutate(prev: Pairs, op: tuple[str, int, int], keys: list[str]) -> Pairs:
    cur = list(prev)
    kind, a, b = op
    if not cur and kind != "add":
        return cur
    i = a % max(len(cur), 1)
    if kind == "value":
        cur[i] = (cur[i][0], _value(cur[i][0], b))
    elif kind == "key":
        cur[i] = (keys[b % len(keys)], cur[i][1])
    elif kind == "swap":
        j = b % len(cur)
        cur[i], cur[j] = cur[j], cur[i]
    elif kind == "drop":
        del cur[i]
    elif kind == "add":
        cur.insert(b % (len(cur) + 1), (keys[a % len(keys)], _value(keys[a % len(keys)], b)))
    elif kind == "dup":  # a key of the list once more, the value of another position
        j = b % len(cur)
        cur[i] = (cur[j][0], cur[i][1]) if i != j else cur[i]
    return cur


def _attrs(sp: Span, pairs: Pairs) -> None:
    sp.attributes.extend([kv(k, v) for k, v in pairs])


def _base(keys: list[str], picks: list[int]) -> Pairs:
    out: Pairs = []
    seen: set[str] = set()
    for n, p in enumerate(picks):
        k = keys[p % len(keys)]
        if k not in seen:
            seen.add(k)
            out.append((k, _value(k, p * 7 + n)))
    return out


def _trace(tag: str, span_base: Pairs, span_ops: list[tuple[str, int, int]], ev_base: Pairs,
           ev_ops: list[tuple[str, int, int]], root_at: int) -> bytes:
    b = TraceBuilder(tag)
    root_id = sid(tag + "root")
    lists = [span_base]
    for op in span_ops:
        lists.append(_mutate(lists[-1], op, SPAN_KEYS))
    ev_lists = [ev_base]
    for op in ev_ops:
        ev_lists.append(_mutate(ev_lists[-1], op, EVENT_KEYS))
    root_at %= len(lists)
    e = 0
    for n, pairs in enumerate(lists):
        if n == root_at:
            sp = b.span("root", root_id, start=T0, end=T0 + 10**9)
            _attrs(sp, [(sc.TRACE_ROOT, True), *pairs])
        else:
            start = T0 + 1000 * (n + 1)
            sp = b.span(f"s{n}", sid(f"{tag}s{n}"), root_id, start=start, end=start + 777 * n + 1)
            _attrs(sp, pairs)
        for _ in range(n % 3):  # 0 to 2 events per span: the event hints cross span boundaries
            name = EVENT_NAMES[e % len(EVENT_NAMES)]
            ev = sp.events.add(time_unix_nano=T0 + e, name=name)
            pairs = ev_lists[e % len(ev_lists)]
            ev.attributes.extend([kv(k, v) for k, v in (MISSING_BASE + pairs if name == sc.EVENT_ARTIFACT_MISSING else pairs)])
            e += 1
    return b.data()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 63), max_size=8), st.lists(_op, max_size=6), st.lists(st.integers(0, 63), max_size=6),
       st.lists(_op, max_size=6), st.integers(0, 7))
def test_consecutive_lists_differing_in_one_thing_bail_or_match(
        span_picks: list[int], span_ops: list[tuple[str, int, int]], ev_picks: list[int],
        ev_ops: list[tuple[str, int, int]], root_at: int) -> None:
    data = _trace("reuse", _base(SPAN_KEYS, span_picks), span_ops, _base(EVENT_KEYS, ev_picks), ev_ops, root_at)
    check(data, must_be_native=False)


def _stage_attrs(stage: str, dev: str = "cpu") -> Pairs:
    return [(sc.STAGE, stage), (sc.DEVICE_KIND, dev), (sc.DEVICE_LABEL, dev + ":0"),
            (sc.usl("input_bytes"), 4096), (sc.usl_provenance("input_bytes"), "measured"), ("app.note", "n")]


def _clean(mutated: Pairs | None, *, at: int = 2, events: list[Pairs] | None = None) -> bytes:
    """A clean trace of five stage spans with the same list, span ``at`` given ``mutated``."""
    b = TraceBuilder("clean")
    root_id = sid("cleanroot")
    b.span("root", root_id, start=T0, end=T0 + 10**9, attrs={sc.TRACE_ROOT: True})
    for n in range(5):
        start = T0 + 1000 * (n + 1)
        sp = b.span("prefill", sid(f"clean{n}"), root_id, start=start, end=start + 500)
        _attrs(sp, mutated if (n == at and mutated is not None) else _stage_attrs("prefill"))
        for ev in events or []:
            e = sp.events.add(time_unix_nano=start + 1, name="app.ev")
            e.attributes.extend([kv(k, v) for k, v in ev])
    return b.data()


def test_a_clean_trace_with_repeated_lists_is_native() -> None:
    assert check(_clean(None, events=[[("step", 1), ("label", "a")]] * 2), must_be_native=True) is not None


@pytest.mark.parametrize("mutated", [
    # the same keys, one value of another type or value
    [(k, v) if k != sc.usl("input_bytes") else (k, w) for k, v in _stage_attrs("prefill")]
    for w in (4096.0, 4097, "4096", None, True, [4096], {"v": 4096}, -1, 2**63 - 1)
] + [
    _stage_attrs("decode"), _stage_attrs("prefill", "cuda"),
    [(k, v) if k != "app.note" else (k, "n\"") for k, v in _stage_attrs("prefill")],
    # a duplicate key where the previous list had another key (known and unknown names)
    [(k, v) if k != sc.DEVICE_LABEL else (sc.DEVICE_KIND, "cpu") for k, v in _stage_attrs("prefill")],
    [*_stage_attrs("prefill")[:-1], (sc.STAGE, "prefill")],
    [*_stage_attrs("prefill")[:-1], ("app.note", "n")][:-1] + [("app.x", 1)],
    [*_stage_attrs("prefill"), ("app.note", "n")],
    _stage_attrs("prefill")[1:] + _stage_attrs("prefill")[:1],
    _stage_attrs("prefill")[:-1],
    [],
])
def test_one_span_differing_from_its_neighbours_bails_or_matches(mutated: Pairs) -> None:
    for at in (0, 2, 4):
        check(_clean(mutated, at=at), must_be_native=False)


def test_duplicate_unknown_keys_after_an_identical_list_bail() -> None:
    """Two unknown names: the list before has ``x, y``; this one ``x, x`` (same length, the first
    key and value equal to the hint's): Python keeps the last value, the C road must bail."""
    for ev in (False, True):
        b = TraceBuilder("dupx")
        root_id = sid("duproot")
        root = b.span("root", root_id, start=T0, end=T0 + 10**9, attrs={sc.TRACE_ROOT: True})
        lists = [[("app.x", 1), ("app.y", 2)], [("app.x", 1), ("app.x", 3)]]
        for n, pairs in enumerate(lists):
            if ev:
                e = root.events.add(time_unix_nano=T0 + n, name="app.ev")
                e.attributes.extend([kv(k, v) for k, v in pairs])
            else:
                _attrs(b.span(f"s{n}", sid(f"dup{n}"), root_id, start=T0 + n, end=T0 + 10), pairs)
        data = b.data()
        assert native_result(data) is None
        check(data, must_be_native=False)


def test_state_of_a_previous_call_is_not_reused() -> None:
    """A long list in one call, then a trace whose first span repeats part of it: the hints of
    the previous call (their bytes are gone) must not be read."""
    big = _stage_attrs("prefill") + [(f"app.k{i}", i) for i in range(40)]
    for _ in range(3):
        check(_clean(big, at=4), must_be_native=True)
        check(_clean(None), must_be_native=True)
        assert native_result(b"\x0a\x03junk") is None


# --- number writers ---------------------------------------------------------------------------


def _numbers_trace(tag: str, values: list[Any]) -> bytes:
    b = TraceBuilder(tag)
    root = b.span("root", sid(tag), start=T0, end=T0 + 10**9, attrs={sc.TRACE_ROOT: True})
    _attrs(root, [(f"app.n{i}", v) for i, v in enumerate(values)])
    return b.data()


def _int_edges() -> list[int]:
    out = {0, 1, -1, 2**63 - 1, -(2**63), -(2**63) + 1, 2**53, 2**53 + 1, -(2**53) - 1}
    for e in range(19):
        p = 10**e
        out |= {p - 1, p, p + 1, -p + 1, -p, -p - 1}
    for e in range(64):
        out |= {v for v in (2**e - 1, 2**e, -(2**e)) if -(2**63) <= v < 2**63}
    return sorted(out)


def test_int64_edges_are_written_as_python_writes_them() -> None:
    edges = _int_edges()
    for n in range(0, len(edges), 150):
        assert check(_numbers_trace(f"i{n}", edges[n:n + 150]), must_be_native=True) is not None


def _double_edges() -> list[float]:
    out = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308,
           1e-4, 9.999999999999999e-05, 0.0001, 1e-5, 1e15, 1e16, 9999999999999998.0, 1e17, 1e22, 1e23,
           2.0**53, 2.0**53 - 1, 2.0**53 + 2, 0.1, 0.2, 0.30000000000000004, 1 / 3, 2 / 3, 123456789.12345678,
           0.5, 1.5, 100.0, 1234.5, 0.001, 0.0025, 3.141592653589793, 1e-07, 12345678901234567.0]
    for e in range(-30, 30):
        for m in (1.0, 1.5, 9.99, 2.5, 7.0):
            out += [m * 10.0**e, -m * 10.0**e]
    return out


def test_double_edges_are_written_as_repr() -> None:
    edges = _double_edges()
    for n in range(0, len(edges), 150):
        assert check(_numbers_trace(f"d{n}", edges[n:n + 150]), must_be_native=True) is not None


def test_random_doubles_are_written_as_repr() -> None:
    rng = random.Random(11)
    values: list[float] = []
    while len(values) < 3000:
        r = rng.random()
        if r < 0.4:  # any finite bit pattern
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        elif r < 0.8:  # short decimals: the fast writer's cases
            x = round(rng.uniform(-1e6, 1e6), rng.randrange(0, 10))
        else:  # near powers of ten and 2**53
            x = rng.choice([10.0, 2.0**53, 1e-4, 1e16]) * (1 + rng.randrange(-5, 6) * 2**-52)
        if math.isfinite(x):
            values.append(x)
    for n in range(0, len(values), 300):
        assert check(_numbers_trace(f"r{n}", values[n:n + 300]), must_be_native=True) is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=20))
def test_numbers_hypothesis(values: list[Any]) -> None:
    check(_numbers_trace("h", values), must_be_native=True)


def test_timestamps_of_every_digit_count_and_durations() -> None:
    """Start and end times (the u64 writer) at every power of ten and near 2**53, 2**63, 2**64, and
    the durations made from them (the double writer); the trace spans less than 2**53 ns, as the
    native road requires."""
    root_id = sid("tsroot")
    vals = sorted({v for e in range(20) for v in (10**e - 1, 10**e, 10**e + 1) if 0 < v < 2**64 - 10**7}
                  | {2**64 - 10**7, 2**63, 2**63 - 1, 2**53, 2**53 + 1})
    for i, v in enumerate(vals):
        b = TraceBuilder(f"ts{i}")
        b.span("root", root_id, start=v, end=v + 10**6 + i, attrs={sc.TRACE_ROOT: True})
        b.span("s", sid(f"ts{i}a"), root_id, start=v + i, end=v + (i * 7919) % 10**6)
        b.span("s", sid(f"ts{i}b"), root_id, start=v + 10**6 + i, end=v + 10**6 + i + (i * 104729) % 10**7)
        assert check(b.data(), must_be_native=True) is not None
