"""``_cwire`` stays memory-safe when user code runs inside one of its calls.

A garbage collection can start at any allocation of a GC-tracked object (a list, a dict, a
tuple) and run finalizers (``__del__``), which can change or drop the objects the C code was
handed. Each case arms such a finalizer so that it runs at the call's first tracked
allocation, drops the last reference to the rows or span ids it was given, reuses the freed
memory, and checks the answer against the one computed undisturbed (or, where the call reads
its input only after that allocation, the one for the emptied input). Each runs in a child
process, since a use after free crashes it (or returns garbage).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from vauban_trace.store._native import cwire

pytestmark = pytest.mark.skipif(cwire is None, reason="the _cwire extension is not built (or disabled)")

_ARM = """
class Bomb:
    def __del__(self) -> None:
        TARGET.clear()  # drops the last reference to what the call was given
        junk = [str(i) * 3 for i in range(3000)]  # reuse the freed memory
# empty the free lists of the objects the calls allocate, so that they are tracked allocations
drained = ([[] for _ in range(500)], [{} for _ in range(500)], [tuple(range(i, i + 11)) for i in range(3000)])
gc.disable()
b = Bomb(); b.me = b; del b  # cyclic garbage: freed by the next collection
gc.set_threshold(1)
gc.enable()
"""


def _child(setup: str, target: str, call: str) -> str:
    code = "\n".join((
        "import gc",
        "from vauban_trace.store._native import cwire",
        "from vauban_trace.store._rows import SpanRow",
        "from vauban_trace.store._batch import encode_batch",
        'ENV = (b"", b"", b"", b"")',
        textwrap.dedent(setup),
        f"TARGET = {target}",
        _ARM,
        f"out = {call}",
        "gc.set_threshold(700)",
        "ok = out == expected or out == globals().get('cleared', expected)",
        "print('same' if ok else f'differs: {out!r:.200} vs {expected!r:.200}')",
    ))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout.strip()


def test_group_rows_survives_a_finalizer_that_clears_its_rows() -> None:
    setup = """
    def make():
        return [SpanRow(f"{t:032x}", f"{i:016x}", None, "n", None, 1, 2, b"p%d" % i, ENV)
                for t in range(1, 400) for i in range(1, 3)]
    expected = cwire.group_rows(make())
    rows = make()
    """
    assert _child(setup, "rows", "cwire.group_rows(rows)") == "same"


def test_bookkeeping_survives_a_finalizer_that_clears_its_rows() -> None:
    setup = """
    def make():
        return [SpanRow("ab" * 16, f"{i:016x}", None, "root%d" % i, "svc%d" % i, 10**12 + i, 10**13 + i, b"p", ENV)
                for i in range(1, 200)]
    expected = cwire.bookkeeping("ab" * 16, make(), 5)
    rows = make()
    """
    assert _child(setup, "rows", 'cwire.bookkeeping("ab" * 16, rows, 5)') == "same"


def test_match_batch_survives_a_finalizer_that_clears_the_incoming_spans() -> None:
    setup = r"""
    def make():
        return [SpanRow("ab" * 16, "%016x" % i, None, "n", None, 1, 2, b"\x12\x04\x12\x02\x0a\x00", ENV)
                for i in range(1, 300)]
    blob = encode_batch(make())
    expected = cwire.match_batch("ab" * 16, blob, {r[1]: r for r in make()})
    assert expected is not None and len(expected[1]) == 299
    incoming = {r[1]: r for r in make()}
    cleared = cwire.match_batch("ab" * 16, blob, {})  # the finalizer ran before the call read incoming
    """
    assert _child(setup, "incoming", 'cwire.match_batch("ab" * 16, blob, incoming)') == "same"
