"""The load drivers' read-back: stored traces by id, a note naming the ones never stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.store import TraceStore
from vauban_trace.sweep._readback import read_back


def _trace(n: int) -> Trace:
    return Trace(id=f"{n + 1:032x}", spans=(TraceSpan(id=f"{n + 1:016x}", name="root", start_unix_nano=10**12,
                                                      end_unix_nano=10**12 + 10**6),))


def test_traces_never_stored_are_named_and_left_out(tmp_path: Path) -> None:
    with TraceStore(tmp_path) as ts:
        for n in range(2):
            ts.put_trace(_trace(n))
        ids = [f"{n + 1:032x}" for n in range(6)]
        stored, note = read_back(ts, ids, "run_x")
        assert sorted(stored) == ids[:2] and all(stored[t].id == t for t in stored)
        assert note is not None and note.startswith("4 of 6 traces were not stored")
        assert ", ".join(ids[2:5]) + " ..." in note
        assert read_back(ts, ids[:2], "run_x")[1] is None
        with pytest.raises(ConfigurationError, match="run_x: none of the 4 traced requests reached the store"):
            read_back(ts, ids[2:], "run_x")
