"""The on-read ``traces/<id>.json`` mirrors as put_documents keeps them (one listing of the folder
instead of an unlink per trace), trace_json_file under the write lock, pending_versions, and the
batched trace id check of put_documents."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from store_testlib import CHILD, ROOT, TRACE_A, TRACE_B, doc_of, doc_trace, make_request, make_span

from vauban_trace.contract import Trace
from vauban_trace.store import TraceStore, TraceStoreError, _rebuilt


def _tid(i: int) -> str:
    return f"{i:032x}"


def test_a_put_removes_the_mirrors_it_makes_stale_and_leaves_the_others(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    ts.put_documents([(doc_of(doc_trace(_tid(i), note=0)), None) for i in (1, 2, 3)])
    folder = tmp_path / "traces"
    assert sorted(folder.iterdir()) == []  # nothing written by the puts
    shown = [ts.trace_json_file(_tid(i)) for i in (1, 2)]
    (folder / "notes.txt").write_text("not a mirror")
    ts.put_documents([(doc_of(doc_trace(_tid(i), note=1)), None) for i in (2, 3)], durable=False)
    assert shown[0] is not None and shown[0].is_file()  # trace 1 was not put again: its mirror is current
    assert not (folder / f"{_tid(2)}.json").exists() and (folder / "notes.txt").is_file()
    for i, note in ((1, 0), (2, 1), (3, 1)):
        path = ts.trace_json_file(_tid(i))
        assert path is not None and Trace.from_json(path.read_text()) == doc_trace(_tid(i), note=note)
    ts.close()


def test_a_folder_too_long_to_list_falls_back_to_one_unlink_per_trace(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=0)), None)])
    path = ts.trace_json_file(TRACE_A)
    assert path is not None
    for i in range(_rebuilt._LIST_MIRRORS + 8):  # more entries than a put of one trace lists
        (tmp_path / "traces" / f"other-{i}").write_text("")
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=2)), None)])
    assert not path.exists()
    assert Trace.from_json(ts.trace_json_file(TRACE_A).read_text()) == doc_trace(TRACE_A, note=2)  # type: ignore[union-attr]
    ts.close()


def test_a_mirror_that_cannot_be_removed_fails_the_put_and_changes_nothing(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=0)), None)])
    blocker = tmp_path / "traces" / f"{TRACE_A}.json"
    blocker.mkdir()  # unlink fails (EISDIR / EPERM): never commit a text its mirror contradicts
    (blocker / "x").write_text("")
    with pytest.raises(TraceStoreError, match="put_trace: cannot write"):
        ts.put_documents([(doc_of(doc_trace(TRACE_A, note=3)), None)])
    assert ts.get_trace(TRACE_A) == doc_trace(TRACE_A, note=0)
    ts.close()


def test_trace_json_file_writes_the_text_the_row_names_when_it_holds_the_lock(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A put landing between the read of the text and the write of its mirror: the mirror is
    written from the new text, never from the one read before (it would contradict the row)."""
    ts = TraceStore(tmp_path, trace_files="on_read")
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=0)), None)])
    real = ts._checked_document
    raced: list[int] = []

    def read_then_put(tid: str) -> tuple[bytes | None, int, bytes]:
        got = real(tid)
        if not raced:  # another writer puts the trace again right after this read
            raced.append(1)
            with TraceStore(tmp_path, trace_files="on_read") as other:
                other.put_documents([(doc_of(doc_trace(TRACE_A, note=4)), None)])
        return got

    monkeypatch.setattr(ts, "_checked_document", read_then_put)
    path = ts.trace_json_file(TRACE_A)
    assert raced and path is not None and Trace.from_json(path.read_text()) == doc_trace(TRACE_A, note=4)
    ts.close()


def test_trace_json_file_waits_for_a_writer_of_another_process(tmp_path: Path) -> None:
    """The mirror is written under the store's write lock: while another connection (another
    process) holds it, trace_json_file waits, then writes the text committed by then."""
    ts = TraceStore(tmp_path, trace_files="on_read", busy_timeout_s=10)
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=0)), None)])
    ts.close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_AND_PUT, str(tmp_path), str(Path(__file__).parent)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    reader = TraceStore(tmp_path, trace_files="on_read", busy_timeout_s=10)
    got: list[Path | None] = []
    thread = threading.Thread(target=lambda: got.append(reader.trace_json_file(TRACE_A)))
    thread.start()
    thread.join(30)
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == 0, err
    assert got and got[0] is not None  # the text committed under the lock it waited for (never note=0)
    text = got[0].read_text()
    assert Trace.from_json(text) == doc_trace(TRACE_A, note=5) and reader.get_trace(TRACE_A) == doc_trace(TRACE_A, note=5)
    reader.close()


_HOLD_AND_PUT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from store_testlib import TRACE_A, doc_of, doc_trace
from vauban_trace.store import TraceStore
ts = TraceStore(sys.argv[1], trace_files="on_read")
with ts._write_tx("test") as conn:  # the lock a put holds; the put itself comes at its end
    print("locked", flush=True)
    time.sleep(0.5)
    doc = doc_of(doc_trace(TRACE_A, note=5))
    seg, refs = ts._segments.append_texts(conn, [doc.json], sync=True)
    (off, length, dig), = refs
    conn.execute("UPDATE traces SET doc_segment = ?, doc_offset = ?, doc_length = ?, doc_digest = ? "
                 "WHERE trace_id = ?", (seg, off, length, dig, TRACE_A))
ts.close()
"""


def test_pending_versions_lists_what_pending_traces_lists(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    ts.add_spans(make_request(make_span(TRACE_B, CHILD, "orphan", parent=ROOT)))
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "late", parent=ROOT)))
    now = time.time_ns()
    for kwargs in ({}, {"limit": 1}, {"received_by": now}, {"received_by": 0},
                   {"received_by": now, "rootless_received_by": 0}, {"limit": 5, "rootless_received_by": now}):
        expected = [(p.trace_id, p.version) for p in ts.pending_traces(**kwargs)]
        assert ts.pending_versions(**kwargs) == expected, kwargs
    assert ts.pending_versions() == [(TRACE_B, 1), (TRACE_A, 2)]
    ts.put_documents([(doc_of(doc_trace(TRACE_A, note=0)), 2)])
    assert ts.pending_versions() == [(TRACE_B, 1)]
    ts.close()


def test_put_documents_checks_every_trace_id_as_check_trace_id_does(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    upper = TRACE_A.upper()
    assert ts.put_documents([(doc_of(doc_trace(TRACE_B, note=0)), None), (doc_of(doc_trace(TRACE_A, note=0), tid=f" {upper} "), None)]) == 2
    assert ts.get_trace(TRACE_A) == doc_trace(TRACE_A, note=0)  # stored under the canonical id
    for bad, match in (("0" * 32, "all-zero"), ("abc", "has 3 characters"), ("g" * 32, "not hexadecimal"),
                       (7, "expected a string")):
        with pytest.raises(TraceStoreError, match=match):
            ts.put_documents([(doc_of(doc_trace(TRACE_B, note=0)), None), (doc_of(doc_trace(TRACE_A, note=0), tid=bad), None)])  # type: ignore[arg-type]
    assert ts.get_trace(TRACE_A) == doc_trace(TRACE_A, note=0) and ts.trace_count() == 2
    # an id holding a newline between two id-like halves (the batched check joins ids by newlines)
    for bad in (f"{TRACE_A}\n{TRACE_B}", f"{TRACE_A}\n{TRACE_B}\n{TRACE_A}"):
        with pytest.raises(TraceStoreError, match="characters; a trace id is 32 hex digits"):
            ts.put_documents([(doc_of(doc_trace(TRACE_B, note=0)), None), (doc_of(doc_trace(TRACE_A, note=0), tid=bad), None)])
    assert ts.trace_count() == 2
    assert ts.put_documents([]) == 0 and ts.put_documents(iter([(doc_of(doc_trace(TRACE_B, note=0)), None)])) == 1
    ts.close()

