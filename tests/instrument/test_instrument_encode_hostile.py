"""The C span encoder (``_cencode``) against hostile values and threads (the crash cases and
exact reads: ``test_instrument_encode_safety.py``).

- No user code on values: attribute values of str/int/float/bytes subclasses (with side-effecting
  ``__eq__``/``__hash__``/``__str__``/``__index__``/``__float__``), numpy scalars, list/tuple/dict
  subclasses: the encoder either reads them at the C level exactly as the official encoder's
  protobuf runtime does, or declines without calling anything on them (hypothesis).
- Threads: another thread mutating a link's attribute dict and list, or setting keys of a bounded
  ``BoundedAttributes``, while the exporter encodes: each encode is one state they went through.
- Nesting: values deeper than protobuf's parser accepts are declined (the official encoder raises).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind

from vauban_trace.instrument import _encode
from vauban_trace.instrument._encode import encode_request, encode_request_official

pytestmark = pytest.mark.skipif(_encode.native is None, reason="the _cencode extension is not built")


# --- user code on values: never called, or read as the official encoder's runtime reads it -------

CALLS: list[str] = []


def _record(name: str) -> None:
    CALLS.append(name)


class S(str):
    def __eq__(self, other: object) -> bool:
        _record("S.__eq__")
        return str.__eq__(self, other)

    def __hash__(self) -> int:
        _record("S.__hash__")
        return str.__hash__(self)

    def __str__(self) -> str:
        _record("S.__str__")
        return "S:" + str.__str__(self)

    def __format__(self, spec: str) -> str:
        _record("S.__format__")
        return "F:" + str.__str__(self)


class I(int):  # noqa: E742
    def __index__(self) -> int:
        _record("I.__index__")
        return 42

    def __int__(self) -> int:
        _record("I.__int__")
        return 43

    def __eq__(self, other: object) -> bool:
        _record("I.__eq__")
        return int.__eq__(self, other)

    def __hash__(self) -> int:
        _record("I.__hash__")
        return int.__hash__(self)


class F(float):
    def __float__(self) -> float:
        _record("F.__float__")
        return 1.5

    def __eq__(self, other: object) -> bool:
        _record("F.__eq__")
        return float.__eq__(self, other)

    def __hash__(self) -> int:
        _record("F.__hash__")
        return float.__hash__(self)


class B(bytes):
    def __bytes__(self) -> bytes:
        _record("B.__bytes__")
        return b"other"


class L(list[Any]):
    def __iter__(self) -> Iterator[Any]:
        _record("L.__iter__")
        return iter(list(super().__iter__())[::-1])

    def __len__(self) -> int:
        _record("L.__len__")
        return super().__len__()


class T(tuple[Any, ...]):
    def __iter__(self) -> Iterator[Any]:
        _record("T.__iter__")
        return iter(tuple(super().__iter__())[::-1])


class D(dict[Any, Any]):
    def items(self) -> Any:
        _record("D.items")
        return list(super().items())[::-1]


INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
PLAIN = st.one_of(st.none(), st.booleans(), st.text(max_size=6), INT64, st.floats(), st.binary(max_size=6))
HOSTILE = st.one_of(
    st.text(max_size=6).map(S), INT64.map(I), st.floats().map(F), st.binary(max_size=6).map(B),
    st.floats().map(np.float64), INT64.map(np.int64), st.booleans().map(np.bool_), st.text(max_size=6).map(np.str_),
    st.integers(2**63, 2**70), st.text(max_size=3).map(lambda s: s + "\udc80"),
)
VALUES = st.recursive(
    st.one_of(PLAIN, HOSTILE),
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.lists(kids, max_size=3).map(tuple),
        st.lists(kids, max_size=3).map(L), st.lists(kids, max_size=3).map(T),
        st.dictionaries(st.one_of(st.text(max_size=4), st.text(max_size=4).map(S), st.integers(0, 3)), kids, max_size=3),
        st.dictionaries(st.text(max_size=4), kids, max_size=2).map(D),
        st.dictionaries(st.text(max_size=4), kids, max_size=2).map(OrderedDict),
        st.dictionaries(st.text(max_size=4), kids, max_size=2).map(MappingProxyType),
    ),
    max_leaves=6,
)
KEYS = st.one_of(st.text(max_size=6), st.text(max_size=6).map(S))


@st.composite
def hostile_spans(draw: Any) -> ReadableSpan:
    def attrs() -> Any:
        items = draw(st.dictionaries(KEYS, VALUES, max_size=4))
        return items if draw(st.booleans()) else BoundedAttributes(attributes=items, immutable=False)

    return ReadableSpan(
        name=draw(st.one_of(st.text(max_size=6), st.text(max_size=6).map(S))),
        context=SpanContext(draw(st.integers(0, 2**128 - 1)), draw(st.integers(0, 2**64 - 1)), False),
        resource=Resource({"service.name": "h"}), attributes=attrs(),
        events=[Event(draw(st.text(max_size=4)), attrs(), timestamp=draw(st.integers(0, 2**64 - 1)))
                for _ in range(draw(st.integers(0, 2)))],
        links=[Link(SpanContext(1, 2, draw(st.booleans())), attrs()) for _ in range(draw(st.integers(0, 1)))],
        kind=draw(st.sampled_from(list(SpanKind))),
        start_time=draw(st.integers(0, 2**64 - 1)), end_time=draw(st.integers(0, 2**64 - 1)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_spans(), min_size=1, max_size=3))
def test_hostile_values_run_no_user_code_and_never_change_the_bytes(batch: list[ReadableSpan]) -> None:
    native = _encode.native
    assert native is not None
    CALLS.clear()
    got = native.encode_spans(batch)
    assert CALLS == []  # the C called nothing on the values (it read them, or declined)
    try:
        expected = encode_request_official(batch)
    except Exception as exc:  # the official encoder refuses the batch: so does encode_request
        assert got is None
        with pytest.raises(type(exc)):
            encode_request(batch)
        return
    assert got is None or got == expected
    assert encode_request(batch) == expected


# --- threads -----------------------------------------------------------------------------------

def test_another_thread_mutating_link_attributes_gives_one_of_its_states() -> None:
    """A Link keeps the dict it was given: an application thread may still be changing it (a
    value, a key, a list inside) while the exporter encodes. Each encode must be the official
    bytes of one state the dict went through, and never crash."""
    native = _encode.native
    assert native is not None
    inner: list[Any] = [1]
    d: dict[str, Any] = {"a": 1, "l": inner}
    span = ReadableSpan("s", context=SpanContext(1, 2, False), resource=Resource({}),
                        links=[Link(SpanContext(3, 4, False), d)], attributes={"n": 1})
    ops: list[Callable[[], object]] = [lambda: d.__setitem__("b", "x"), lambda: inner.append(2),
                                       lambda: d.__delitem__("b"), inner.pop]
    states = set()
    for op in ops:  # the four states, in the order the thread goes through them
        states.add(encode_request_official([span]))
        op()
    stop = threading.Event()

    def mutate() -> None:
        while not stop.is_set():
            for op in ops:
                op()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=mutate)
    thread.start()
    try:
        seen = set()
        for _ in range(3000):
            got = native.encode_spans([span])
            if got is not None:
                seen.add(got)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert seen and seen <= states


def _span_attributes(data: bytes) -> tuple[bytes, ...]:
    """The one span's attributes (the dropped count, read separately, moves on meanwhile)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    span = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
    return tuple(kv.SerializeToString() for kv in span.attributes)


def test_a_bounded_attributes_being_set_in_another_thread_gives_whole_states() -> None:
    """A bounded ``BoundedAttributes`` sets a key in steps under its lock (delete the old entry,
    check the length, maybe evict, insert), a lock the official encoder's iteration takes and the
    C walk does not. The walk runs no Python code and CPython 3.11 does not switch threads between
    those steps, so every encode is a whole state (this checks it; it does not prove it)."""
    native = _encode.native
    assert native is not None
    attrs = BoundedAttributes(maxlen=2, attributes={"a": 1, "b": "x"}, immutable=False)
    span = ReadableSpan("s", context=SpanContext(1, 2, False), resource=Resource({}), attributes=attrs)
    ops: list[tuple[str, Any]] = [("a", 2), ("a", 1), ("c", 3.5), ("a", 1), ("b", "x")]  # replace, evict
    logger = logging.getLogger("opentelemetry.attributes")
    logger.disabled = True  # the eviction's warning, silenced
    states = set()
    for key, value in ops:
        states.add(_span_attributes(encode_request_official([span])))
        attrs[key] = value
    stop = threading.Event()

    def mutate() -> None:
        while not stop.is_set():
            for key, value in ops:
                attrs[key] = value

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=mutate)
    thread.start()
    try:
        seen, declined = set(), 0
        for _ in range(5000):
            got = native.encode_spans([span])
            if got is None:
                declined += 1
            else:
                seen.add(_span_attributes(got))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
        logger.disabled = False
    assert seen and seen <= states, (len(seen - states), declined)
    assert declined == 0


def _nested(dicts: int, lists: int) -> Any:
    value: Any = 1
    for _ in range(lists):
        value = [value]
    for _ in range(dicts):
        value = {"k": value}
    return value


@pytest.mark.parametrize("where", ["span", "event", "link", "scope", "resource"])
@pytest.mark.parametrize(("dicts", "lists"), [(31, 0), (32, 0), (31, 1), (30, 2), (0, 32), (16, 16)])
def test_nesting_protobuf_cannot_parse_back_is_declined(where: str, dicts: int, lists: int) -> None:
    """The official encoder builds its messages by copying them through upb's parser, whose depth
    limit (100 messages below a ResourceSpans) it then hits: 32 nested dicts in an event's or a
    link's attributes raise DecodeError there, one level less deep than the span's own. The C
    declines past the same depth instead of writing bytes nobody can parse back."""
    attrs = {"a": _nested(dicts, lists)}
    ctx = SpanContext(1, 2, False)
    kw: dict[str, Any] = {"context": ctx, "resource": Resource(attrs) if where == "resource" else Resource({})}
    if where == "span":
        kw["attributes"] = attrs
    elif where == "event":
        kw["events"] = [Event("e", attrs)]
    elif where == "link":
        kw["links"] = [Link(ctx, attrs)]
    elif where == "scope":
        kw["instrumentation_scope"] = InstrumentationScope("x", attributes=attrs)
    batch = [ReadableSpan("s", **kw)]
    native = _encode.native
    assert native is not None
    got = native.encode_spans(batch)
    try:
        expected = encode_request_official(batch)
    except Exception as exc:
        assert got is None
        with pytest.raises(type(exc)):
            encode_request(batch)
        return
    assert got == expected  # all of these are within the C's limits when the official accepts them
