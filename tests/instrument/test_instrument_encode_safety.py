"""The C span encoder (``_cencode``) under hostile inputs: it runs inside the user's inference
process, so it must never crash, never run user code on attribute values, and never write bytes
the official encoder would not write.

- Memory safety: Python code that runs while the encoder walks a container (a key's ``__str__``, a
  span subclass's property) may mutate that container; the encoder holds its own references and
  never reads past a size it cached. These cases run in a child process, so that a crash is a
  failed test instead of a dead test run.
- No user code on values: attribute values of str/int/float/bytes subclasses (with side-effecting
  ``__eq__``/``__hash__``/``__str__``/``__index__``/``__float__``), numpy scalars, list/tuple/dict
  subclasses: the encoder either reads them at the C level exactly as the official encoder's
  protobuf runtime does, or declines without calling anything on them.
- Exact equivalence: grouping by resource and scope is the official encoder's dict (hash, then
  ``==``); a span subclass's ``attributes``, a mapping's ``items()`` and an id's ``to_bytes`` are
  what the official encoder reads; Ctrl-C raised inside the encoder propagates; a request over
  protobuf's 2 GiB limit is declined.
- Threads: another thread mutating a link's attribute dict and list, or setting keys of a bounded
  ``BoundedAttributes``, while the exporter encodes: each encode is one state they went through.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
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

_PRELUDE = """
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext
from vauban_trace.instrument import _encode
from vauban_trace.instrument._encode import encode_request, encode_request_official
native = _encode.native
assert native is not None

def span(attrs, resource=None, cls=ReadableSpan):
    return cls("s", context=SpanContext(1, 2, False), resource=resource or Resource({}), attributes=attrs)

def check(make):
    expected = encode_request_official(make())
    got = native.encode_spans(make())
    assert got is None or got == expected, (got, expected)
    assert encode_request(make()) == expected
    print("OK", "declined" if got is None else "encoded")
"""


def _isolated(body: str) -> str:
    """Runs ``body`` after the prelude in a child Python; a crash fails the test with its stderr."""
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("OK"), proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def _span(attrs: Any, resource: Resource | None = None, cls: type[ReadableSpan] = ReadableSpan,
          **kwargs: Any) -> ReadableSpan:
    return cls("s", context=SpanContext(1, 2, False), resource=resource or Resource({}), attributes=attrs, **kwargs)


def _same(batch: list[ReadableSpan]) -> bytes | None:
    """The C bytes (None when declined), after checking they and encode_request equal the official."""
    expected = encode_request_official(batch)
    assert _encode.native is not None
    got: bytes | None = _encode.native.encode_spans(batch)
    assert got is None or got == expected
    assert encode_request(batch) == expected
    return got


# --- memory safety: containers mutated by code that runs while the encoder walks them ------------

def test_a_nested_key_whose_str_empties_its_dict_does_not_crash() -> None:
    _isolated("""
        def make():
            d = {}
            class K:
                def __str__(self):
                    d.clear()
                    return "k"
            d[K()] = [object() for _ in range(3)] + ["x" * 100]
            d["z"] = 1
            return [span({"a": d})]
        check(make)
    """)


def test_a_nested_key_whose_str_empties_the_enclosing_list_does_not_crash() -> None:
    _isolated("""
        def make():
            outer = []
            class K:
                def __str__(self):
                    outer.clear()
                    return "k"
            outer.extend([{K(): 1}, "a" * 50, ["b"] * 3, "c"])
            return [span({"a": outer})]
        check(make)
    """)


def test_a_span_property_that_empties_the_batch_does_not_crash() -> None:
    _isolated("""
        def make():
            batch = []
            class S(ReadableSpan):
                @property
                def resource(self):
                    batch.clear()
                    return Resource({})
            batch.extend([span({"a": 1}, cls=S), span({"b": [1, 2]}), span({"c": "x"})])
            return batch
        try:
            check(make)
        except AssertionError:  # the official encoder sees the emptied list: it may differ, never crash
            got = native.encode_spans(make())
            print("OK", got is None)
    """)


def test_an_events_list_emptied_by_an_event_property_does_not_crash() -> None:
    _isolated("""
        from opentelemetry.sdk.trace import Event
        def make():
            events = []
            class E(Event):
                @property
                def name(self):
                    events.clear()
                    return "e"
            events.extend([E("e", {"a": 1}), Event("f", {"b": "x" * 64}), Event("g")])
            class S(ReadableSpan):
                @property
                def events(self):
                    return events
            return [span({}, cls=S)]
        got = native.encode_spans(make())
        print("OK", got is None)
    """)


# --- exact equivalence -------------------------------------------------------------------------

@pytest.mark.parametrize("other", [True, 1.0], ids=["bool", "float"])
def test_resources_equal_but_hashing_differently_are_two_groups(other: Any) -> None:
    """Resource({"n": 1}) == Resource({"n": True}) but their hashes differ: the official encoder's
    dict keeps two ResourceSpans; so must the C."""
    a, b = _span({"x": 1}, Resource({"n": 1})), _span({"y": 2}, Resource({"n": other}))
    assert a.resource == b.resource and hash(a.resource) != hash(b.resource)
    assert _same([a, b]) is not None


def test_equal_resources_and_scopes_of_distinct_objects_are_one_group() -> None:
    scope1, scope2 = InstrumentationScope("x", "1", None, {"k": "v"}), InstrumentationScope("x", "1", None, {"k": "v"})
    batch = [_span({"i": i}, Resource({"service.name": "a"}), instrumentation_scope=s)
             for i, s in enumerate([scope1, scope2, None, scope1])]
    assert _same(batch) is not None


def test_a_mapping_is_read_through_its_items_not_a_private_dict() -> None:
    class M(Mapping[str, Any]):
        def __init__(self) -> None:
            self._dict = {"x": 1}

        def __getitem__(self, key: str) -> Any:
            return {"y": 2}[key]

        def __iter__(self) -> Iterator[str]:
            return iter(["y"])

        def __len__(self) -> int:
            return 1

    _same([_span(M())])
    _same([_span({}, events=[Event("e", M())])])


def test_a_span_subclass_overriding_attributes_is_read_through_the_property() -> None:
    class S(ReadableSpan):
        @property
        def attributes(self) -> Any:
            return {"other": 1}

    _same([_span({"x": 1}, cls=S)])


def test_int_subclass_ids_are_what_to_bytes_gives() -> None:
    class I(int):  # noqa: E742
        def to_bytes(self, length: Any = 1, byteorder: Any = "big", *, signed: bool = False) -> bytes:
            return b"\x01" * int(length)

        def __rshift__(self, other: Any) -> int:
            return 5

    ctx = SpanContext(I(7), I(9), False)
    _same([ReadableSpan("s", context=ctx, resource=Resource({}))])
    _same([ReadableSpan("s", context=SpanContext(1, 2, False), resource=Resource({}), links=[Link(ctx)])])


def test_a_kind_that_is_not_a_span_kind_is_declined() -> None:
    class K:
        value = 1

    span = ReadableSpan("s", context=SpanContext(1, 2, False), resource=Resource({}), kind=K())  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        encode_request_official([span])
    assert _encode.native is not None and _encode.native.encode_spans([span]) is None


def test_keyboard_interrupt_inside_the_encoder_propagates() -> None:
    calls = [0]

    class S(ReadableSpan):
        @property
        def name(self) -> str:
            calls[0] += 1
            if calls[0] == 1:
                raise KeyboardInterrupt
            return "s"

    with pytest.raises(KeyboardInterrupt):
        encode_request([_span({}, cls=S)])
    assert calls[0] == 1  # not swallowed and retried by the official encoder


def test_a_request_over_the_size_limit_is_declined() -> None:
    """Protobuf refuses messages over 2 GiB (the official encoder drops the attribute or raises):
    the C declines past its limit. Shown here with the limit lowered to a few hundred bytes."""
    native = _encode.native
    assert native is not None
    small, big = [_span({"a": "x" * 40})], [_span({"a": "x" * 400})]
    size = len(encode_request_official(small))
    old = native._set_max_size(size)
    try:
        assert native.encode_spans(small) == encode_request_official(small)  # exactly at the limit
        assert native.encode_spans(big) is None
        assert native.encode_spans(small + small) is None
    finally:
        assert native._set_max_size(old) == size
    assert old == 2**31 - 1


def test_no_reference_is_leaked_when_encoding_declining_or_raising() -> None:
    native = _encode.native
    assert native is not None
    text, items, blob = "v" * 30, ["a", 1, 2.5, (True, None)], b"\x00\x01"
    nested: dict[str, Any] = {"k": items, "t": text}
    resource, scope = Resource({"service.name": "r"}), InstrumentationScope("x", "1", None, {"s": text})
    ctx = SpanContext(2**100 + 7, 2**63 + 1, False)

    class Raising(ReadableSpan):
        @property
        def name(self) -> str:
            raise KeyboardInterrupt

    def batch(extra: Any, cls: type[ReadableSpan] = ReadableSpan) -> list[ReadableSpan]:
        attrs: dict[str, Any] = {"t": text, "l": items, "b": blob, "n": nested, "x": extra}
        event_attrs: dict[str, Any] = {"t": text, "l": items}
        return [cls("s", context=ctx, resource=resource, attributes=attrs, instrumentation_scope=scope,
                    events=[Event("e", event_attrs)], links=[Link(ctx, {"n": nested})])]

    watched = [text, items, blob, nested, resource, scope, ctx]
    ok, declined, raising = batch(1), batch(2**70), batch(1, Raising)
    assert native.encode_spans(ok) is not None and native.encode_spans(declined) is None
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(500):
        native.encode_spans(ok)
        native.encode_spans(declined)
        with pytest.raises(KeyboardInterrupt):
            native.encode_spans(raising)
    assert [sys.getrefcount(o) for o in watched] == before


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
