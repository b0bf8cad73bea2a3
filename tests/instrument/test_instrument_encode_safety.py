"""The C span encoder (``_cencode``) under hostile inputs: it runs inside the user's inference
process, so it must never crash, never run user code on attribute values, and never write bytes
the official encoder would not write.

- Memory safety: Python code that runs while the encoder walks a container (a key's ``__str__``, a
  span subclass's property) may mutate that container; the encoder holds its own references and
  never reads past a size it cached. These cases run in a child process, so that a crash is a
  failed test instead of a dead test run.
- Exact equivalence: grouping by resource and scope is the official encoder's dict (hash, then
  ``==``); a span subclass's ``attributes``, a mapping's ``items()`` and an id's ``to_bytes`` are
  what the official encoder reads; Ctrl-C raised inside the encoder propagates; a request over
  protobuf's 2 GiB limit is declined.
- No reference leaks on the encode, decline and raise paths.

Hostile values, threads and nesting: ``test_instrument_encode_hostile.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext

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
