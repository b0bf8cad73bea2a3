"""Operating a store: full verification, statistics, offline rebuild (a mixin of ``_db``).

``vauban-trace store verify|stats|rebuild|compact`` (``cli/_store``) are thin layers over these.

- :meth:`StoreMaintenance.verify_store` reads everything back: every rebuilt trace's text (length
  and BLAKE3 digest, through ``_segments.read_document``, the read every ``get_trace`` does), every
  segment's bookkeeping (``live_bytes`` = the lengths its rows point to, the committed end covers
  every row, no two rows overlap, the file is as long as the committed end, no row names a
  segment that does not exist), every raw span batch (read from its span segment, length and
  digest checked, then ``_batch.decode_batch`` and its span count) and every span segment's
  bookkeeping (the same checks as the text segments'). A read only checks; ``repair=True`` fixes what the store's own recovery fixes, with the
  store's own code: a broken text's trace is made pending with ``_documents.invalidate`` (the
  collector, or :meth:`rebuild_stored`, rebuilds it from its raw spans), a file shorter than its
  committed end goes through ``_documents.recover`` (what an open after a crash runs), a wrong
  ``live_bytes`` is recounted with ``_documents.recount_live`` (``_rawspans.recount_live`` for a
  span segment). Broken span batches, span segments shorter than their committed end, rows past a
  committed end and overlaps are reported, never "repaired": the raw spans are the truth, and a
  damaged span batch is spans lost (the report names the trace, the batch and the segment file).
- :meth:`StoreMaintenance.store_stats` schema version, trace counts, raw spans, bytes in SQLite
  and per segment, text and span segments (live share).
- :meth:`StoreMaintenance.rebuild_stored` rebuilds traces from their raw spans with this
  vauban-trace's rebuild (:func:`rebuild_document`: ``rebuild.rebuild_documents`` of
  ``spans_for_bytes``, the collector assembler's road) and stores those whose text changed.

Safe beside a running collector (several processes share a store): checks run in short read
transactions (one snapshot for the segment bookkeeping, keyset pages for texts and batches), a
text or file that fails is looked up again before it is reported (a compaction in another process
may have moved it and deleted the file), and nothing takes a segment's ``flock`` (the writers'
lock). A rebuild stores each trace with the version read before its spans were read, so spans
arriving meanwhile keep it pending and the collector rebuilds it again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import TraceNotFoundError, TraceStoreError
from vauban_trace.store._batch import decode_batch
from vauban_trace.store._documents import invalidate, recount_live, recover
from vauban_trace.store._rawspans import RawSpanError, SpanSegments, segment_issues
from vauban_trace.store._rawspans import recount_live as recount_span_live
from vauban_trace.store._records import check_trace_id
from vauban_trace.store._segments import SPANS, DocumentError, read_document, segment_path

if TYPE_CHECKING:
    from vauban_trace.rebuild import TraceDocument
    from vauban_trace.store._documents import TraceDocumentLike

_log = logging.getLogger("vauban_trace.store")
_PAGE = 512


def rebuild_document(trace_id: str, load: Callable[[], bytes]) -> TraceDocument:
    """The rebuilt trace ``trace_id`` from ``load()`` (a serialized ``TracesData``: a snapshot or
    ``spans_for_bytes``), by ``rebuild.rebuild_documents``. Stored data that cannot be rebuilt
    still gives a document: an incomplete trace whose ``problems`` say why (so a bad trace is not
    retried forever). The collector's assembler and :meth:`StoreMaintenance.rebuild_stored` both
    rebuild through here."""
    return _rebuild_one(trace_id, load)[0]


@functools.cache
def _rebuild_module() -> Any:
    """``vauban_trace.rebuild``, imported on first use (not an import statement per trace)."""
    import vauban_trace.rebuild as rebuild

    return rebuild


def _rebuild_one(trace_id: str, load: Callable[[], bytes]) -> tuple[TraceDocument, str | None]:
    rebuild = _rebuild_module()
    try:
        for doc in rebuild.rebuild_documents(load()):
            if doc.trace_id == trace_id:
                return doc, None
        raise ValueError("rebuild produced no trace with this id")
    except Exception as exc:  # bad stored data: keep a record of why instead of retrying forever
        from vauban_trace.contract import Trace

        _log.warning("trace %s could not be rebuilt: %s", trace_id, exc)
        trace = Trace(id=trace_id, complete=False, problems=(f"rebuild failed: {exc}",))
        return rebuild.document_of(trace, None), str(exc)


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """One thing :meth:`StoreMaintenance.verify_store` found wrong."""

    kind: str  # "text" | "segment" | "row" | "span_batch" | "span_segment"
    subject: str  # "trace <id>", "segment 3", "span batch 17 (trace <id>)", "span segment 2"
    detail: str
    repaired: bool = False


@dataclass(slots=True)
class VerifyReport:
    """What :meth:`StoreMaintenance.verify_store` checked and found (``problems``: the first
    ``max_problems``; ``problem_count``: all of them)."""

    texts_checked: int = 0
    texts_broken: int = 0
    segments_checked: int = 0
    segments_bad: int = 0
    rows_bad: int = 0
    span_batches_checked: int = 0
    spans_decoded: int = 0
    span_batches_bad: int = 0  # undecodable, or damaged in their span segment (raw spans lost)
    span_segments_checked: int = 0
    span_segments_bad: int = 0
    repaired: int = 0
    unreferenced_files: int = 0  # segment files no row names (an open deletes them; not a problem)
    problem_count: int = 0
    problems: list[StoreProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


@dataclass(frozen=True, slots=True)
class SegmentStats:
    id: int
    bytes: int  # committed end
    live_bytes: int
    file_bytes: int | None  # None: the file is missing
    live_share: float


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What :meth:`StoreMaintenance.store_stats` reports."""

    schema_version: int
    traces: int  # every trace the store knows (raw spans or a rebuilt text)
    rebuilt: int
    complete: int
    incomplete: int
    pending: int  # raw spans changed since the last rebuild (a rebuilt trace with late spans counts in both)
    raw_spans: int
    span_batches: int
    sqlite_bytes: int  # traces.sqlite + its WAL
    segment_bytes: int  # sum of the committed ends (Trace JSON segments)
    live_bytes: int
    segments: tuple[SegmentStats, ...]
    span_segment_bytes: int = 0  # raw span batches (schema 5)
    span_live_bytes: int = 0
    span_segments: tuple[SegmentStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RebuildReport:
    """What :meth:`StoreMaintenance.rebuild_stored` did."""

    examined: int = 0
    changed: int = 0  # stored again: new text, or none / a broken one before, or pending before
    unchanged: int = 0
    failed: int = 0  # stored as an incomplete trace whose problems say "rebuild failed"
    skipped_no_spans: int = 0  # rows without raw spans (a trace put directly): nothing to rebuild from
    left_pending: int = 0  # pending traces not taken (the collector's; ``pending=True`` takes them)
    changed_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _segment_stats(folder: Path, segs: list[tuple[Any, ...]], spans: bool) -> list[SegmentStats]:
    out = []
    for seg, end, live in segs:
        try:
            size: int | None = os.stat(segment_path(folder, int(seg), *((SPANS,) if spans else ()))).st_size
        except FileNotFoundError:
            size = None
        out.append(SegmentStats(int(seg), int(end), int(live), size, int(live) / int(end) if end else 0.0))
    return out


class StoreMaintenance:
    """Verification, statistics and offline rebuild of a store (see the module docstring)."""

    dir: Path
    db_path: Path
    _folder: Path
    _span_folder: Path
    _spans: SpanSegments

    if TYPE_CHECKING:  # given by TraceStore
        def _conn(self) -> sqlite3.Connection: ...
        def _write_tx(self, what: str, *, durable: bool = True) -> contextlib.AbstractContextManager[
            sqlite3.Connection]: ...
        def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]: ...
        def spans_for_bytes(self, trace_id: str) -> bytes: ...
        def pending_count(self) -> int: ...
        def put_documents(self, items: Iterable[tuple[TraceDocumentLike, int | None]], *,
                          sync_files: bool = True, durable: bool = True) -> int: ...

    # -- verify ----------------------------------------------------------------------------
    def verify_store(self, *, repair: bool = False, max_problems: int = 20) -> VerifyReport:
        """Check every text, every segment's bookkeeping and every span batch (module docstring)."""
        report = VerifyReport()

        def found(problem: StoreProblem) -> None:
            report.problem_count += 1
            report.repaired += int(problem.repaired)
            if len(report.problems) < max_problems:
                report.problems.append(problem)

        self._verify_segments(report, found, repair)
        self._verify_texts(report, found, repair)
        self._verify_span_segments(report, found, repair)
        self._verify_batches(report, found)
        return report

    def _verify_span_segments(self, report: VerifyReport, found: Callable[[StoreProblem], None],
                              repair: bool) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                segs = [(int(a), int(b), int(c)) for a, b, c in
                        conn.execute("SELECT id, bytes, live_bytes FROM span_segments ORDER BY id")]
                extents: dict[int, list[tuple[int, int, int, str]]] = {}
                for seg, off, length, bid, tid in conn.execute("SELECT seg, off, len, id, trace_id FROM span_batches"):
                    extents.setdefault(int(seg), []).append((int(off), int(length), int(bid), str(tid)))
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc
        report.span_segments_checked = len(segs)
        bad: set[int] = set()
        for seg, what, repairable in segment_issues(self._span_folder, segs, extents):
            if "file " in what and not self._read("SELECT 1 FROM span_segments WHERE id = ?", (seg,)):
                continue  # compacted away by another process since the snapshot
            bad.add(seg)
            fixed = False
            if repair and repairable:
                with self._write_tx("verify --repair") as wconn:
                    recount_span_live(wconn, seg)
                fixed = True
            found(StoreProblem("span_segment", f"span segment {seg}", what, fixed))
        report.span_segments_bad = len(bad)

    def _location(self, tid: str) -> tuple[Any, ...] | None:
        rows = self._read("SELECT doc_segment, doc_offset, doc_length, doc_digest FROM traces WHERE trace_id = ?",
                          (tid,))
        return tuple(rows[0]) if rows and rows[0][0] is not None else None

    def _verify_texts(self, report: VerifyReport, found: Callable[[StoreProblem], None], repair: bool) -> None:
        last = ""
        while True:
            rows = self._read("SELECT trace_id, doc_segment, doc_offset, doc_length, doc_digest FROM traces "
                              "WHERE doc_segment IS NOT NULL AND trace_id > ? ORDER BY trace_id LIMIT ?",
                              (last, _PAGE))
            if not rows:
                return
            last = str(rows[-1][0])
            for tid, *where in rows:
                report.texts_checked += 1
                loc: tuple[Any, ...] | None = tuple(where)
                error = None
                for attempt in (0, 1):
                    assert loc is not None
                    try:
                        read_document(self._folder, int(loc[0]), int(loc[1]), int(loc[2]), bytes(loc[3]))
                        error = None
                        break
                    except DocumentError as exc:
                        error = exc
                    now = self._location(str(tid))  # moved by a compaction or rebuilt meanwhile?
                    if now == loc:
                        break  # still there: broken
                    loc = None if now is None or attempt else now  # None: not ours to judge any more
                    if loc is None:
                        break
                if error is None or loc is None:
                    continue
                report.texts_broken += 1
                fixed = False
                if repair:
                    with self._write_tx("verify --repair") as conn:
                        fixed = invalidate(conn, str(tid), int(loc[0]), int(loc[1]), int(loc[2]))
                found(StoreProblem("text", f"trace {tid}", str(error), fixed))

    def _snapshot(self) -> tuple[list[tuple[int, int, int]], dict[int, list[tuple[int, int, str]]]]:
        """(segments rows, extents by segment) read in ONE read transaction."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                segs = [(int(a), int(b), int(c)) for a, b, c in
                        conn.execute("SELECT id, bytes, live_bytes FROM segments ORDER BY id")]
                extents: dict[int, list[tuple[int, int, str]]] = {}
                for seg, off, length, tid in conn.execute(
                        "SELECT doc_segment, doc_offset, doc_length, trace_id FROM traces WHERE doc_segment IS NOT NULL"):
                    extents.setdefault(int(seg), []).append((int(off), int(length), str(tid)))
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc
        return segs, extents

    def _verify_segments(self, report: VerifyReport, found: Callable[[StoreProblem], None], repair: bool) -> None:
        segs, extents = self._snapshot()
        known = {s[0] for s in segs}
        for seg in sorted(set(extents) - known):
            for off, length, tid in extents[seg]:
                report.rows_bad += 1
                fixed = False
                if repair:
                    with self._write_tx("verify --repair") as conn:
                        fixed = invalidate(conn, tid, seg, off, length)
                found(StoreProblem("row", f"trace {tid}", f"its text is said to lie in segment {seg}, which the "
                                   "segments table does not list", fixed))
        for seg, end, live in segs:
            report.segments_checked += 1
            rows = sorted(extents.get(seg, ()))
            issues: list[tuple[str, str]] = []  # (what, repair kind)
            total = sum(length for _o, length, _t in rows)
            if total != live:
                issues.append((f"live_bytes says {live}, its rows point to {total} bytes", "recount"))
            far = max((off + length for off, length, _t in rows), default=0)
            if far > end:
                issues.append((f"a row ends at byte {far}, past the committed end {end}", ""))
            for (o1, l1, t1), (o2, _l2, t2) in zip(rows, rows[1:], strict=False):
                if o1 + l1 > o2:
                    issues.append((f"the texts of traces {t1} and {t2} overlap at byte {o2}", ""))
                    break
            try:
                size: int | None = os.stat(segment_path(self._folder, seg)).st_size
            except FileNotFoundError:
                size = None
            if (size or 0) < end and self._read("SELECT 1 FROM segments WHERE id = ?", (seg,)):
                what = "is missing" if size is None else f"holds {size} bytes"
                issues.append((f"file {segment_path(self._folder, seg).name} {what}, committed end {end}", "recover"))
            if not issues:
                continue
            report.segments_bad += 1
            for what, kind in issues:
                fixed = False
                if repair and kind:
                    with self._write_tx("verify --repair") as conn:
                        if kind == "recover":
                            recover(conn, self._folder)
                        else:
                            recount_live(conn, seg)
                        fixed = True
                found(StoreProblem("segment", f"segment {seg}", what, fixed))
        try:
            names = os.listdir(self._folder)
        except FileNotFoundError:
            names = []
        named = {segment_path(self._folder, s).name for s in known}
        report.unreferenced_files = sum(1 for n in names if n.startswith("seg-") and n not in named)

    def _verify_batches(self, report: VerifyReport, found: Callable[[StoreProblem], None]) -> None:
        last = 0
        while True:
            rows = self._read("SELECT id, trace_id, span_count, seg, off, len, digest FROM span_batches WHERE id > ? "
                              "ORDER BY id LIMIT ?", (last, _PAGE))
            if not rows:
                return
            last = int(rows[-1][0])
            for batch_id, tid, count, *where in rows:
                report.span_batches_checked += 1
                try:
                    try:
                        ((_b, _c, blob),) = self._spans.read(str(tid), [(batch_id, count, *where)])
                    except RawSpanError:  # moved by a compaction meanwhile? read the row again
                        again = self._read("SELECT id, span_count, seg, off, len, digest FROM span_batches "
                                           "WHERE id = ? AND trace_id = ?", (batch_id, tid))
                        if not again:
                            report.span_batches_checked -= 1
                            continue
                        count = again[0][1]  # a merge may have re-used the id: the new row's count
                        ((_b, _c, blob),) = self._spans.read(str(tid), [tuple(again[0])])
                    decoded = len(decode_batch(str(tid), blob))
                except TraceStoreError as exc:
                    error: str | None = str(exc)
                else:
                    report.spans_decoded += decoded
                    error = None if decoded == int(count) else f"span_count says {count}, the blob holds {decoded}"
                if error is not None:
                    report.span_batches_bad += 1
                    found(StoreProblem("span_batch", f"span batch {batch_id} (trace {tid})", error))

    # -- stats -----------------------------------------------------------------------------
    def store_stats(self) -> StoreStats:
        """Counts and sizes (see :class:`StoreStats`); one read transaction for the counts."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                total, rebuilt, complete, raw = conn.execute(
                    "SELECT COUNT(*), COUNT(doc_segment), COALESCE(SUM(doc_segment IS NOT NULL AND complete), 0), "
                    "COALESCE(SUM(raw_span_count), 0) FROM traces").fetchone()
                pending = conn.execute("SELECT COUNT(*) FROM traces WHERE version > 0 AND (rebuilt_version IS NULL "
                                       "OR rebuilt_version < version)").fetchone()[0]
                batches = conn.execute("SELECT COUNT(*) FROM span_batches").fetchone()[0]
                segs = conn.execute("SELECT id, bytes, live_bytes FROM segments ORDER BY id").fetchall()
                span_segs = conn.execute("SELECT id, bytes, live_bytes FROM span_segments ORDER BY id").fetchall()
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc
        sqlite_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                sqlite_bytes += os.stat(f"{self.db_path}{suffix}").st_size
        seg_stats = _segment_stats(self._folder, segs, False)
        span_stats = _segment_stats(self._span_folder, span_segs, True)
        return StoreStats(
            schema_version=version, traces=int(total), rebuilt=int(rebuilt), complete=int(complete),
            incomplete=int(rebuilt) - int(complete), pending=int(pending), raw_spans=int(raw),
            span_batches=int(batches), sqlite_bytes=sqlite_bytes,
            segment_bytes=sum(s.bytes for s in seg_stats), live_bytes=sum(s.live_bytes for s in seg_stats),
            segments=tuple(seg_stats), span_segment_bytes=sum(s.bytes for s in span_stats),
            span_live_bytes=sum(s.live_bytes for s in span_stats), span_segments=tuple(span_stats),
        )

    # -- rebuild ---------------------------------------------------------------------------
    def _rebuild_candidates(self, trace_ids: Iterable[str] | None, pending: bool) -> Iterator[list[tuple[Any, ...]]]:
        cols = "trace_id, version, rebuilt_version, raw_span_count, doc_segment, doc_offset, doc_length, doc_digest"
        if trace_ids is not None:
            wanted = list(dict.fromkeys(check_trace_id(t) for t in trace_ids))
            rows: dict[str, tuple[Any, ...]] = {}
            for k in range(0, len(wanted), 500):
                chunk = wanted[k:k + 500]
                for r in self._read(f"SELECT {cols} FROM traces WHERE trace_id IN ({','.join('?' * len(chunk))})",
                                    tuple(chunk)):
                    rows[str(r[0])] = tuple(r)
            missing = [t for t in wanted if t not in rows]
            if missing:
                raise TraceNotFoundError(f"no trace {missing[0]} in {str(self.dir)!r}"
                                         + (f" (and {len(missing) - 1} more unknown)" if len(missing) > 1 else ""))
            for k in range(0, len(wanted), _PAGE):
                yield [rows[t] for t in wanted[k:k + _PAGE]]
            return
        last = ""
        while True:
            page = self._read(
                f"SELECT {cols} FROM traces WHERE trace_id > ? AND (? OR (rebuilt_version IS NOT NULL AND "
                "rebuilt_version >= version)) ORDER BY trace_id LIMIT ?", (last, int(pending), _PAGE))
            if not page:
                return
            last = str(page[-1][0])
            yield [tuple(r) for r in page]

    def rebuild_stored(self, trace_ids: Iterable[str] | None = None, *, pending: bool = False) -> RebuildReport:
        """Rebuild traces from their raw spans with this vauban-trace's rebuild and store those
        whose Trace JSON changed (durably; one transaction per page of traces).

        ``trace_ids``: those traces (an unknown id raises :class:`TraceNotFoundError` before
        anything is stored; a pending one is rebuilt too); None: every trace whose rebuild is
        current, plus the pending ones with ``pending=True`` (what the collector's final pass
        does; otherwise they are left to the collector and counted in ``left_pending``). Traces
        without raw spans are skipped."""
        report = RebuildReport()
        for page in self._rebuild_candidates(trace_ids, pending):
            todo = []
            for tid, version, rebuilt_version, raw, seg, off, length, expected in page:
                if not raw or not version:
                    report.skipped_no_spans += 1
                    continue
                report.examined += 1
                was_pending = rebuilt_version is None or int(rebuilt_version) < int(version)
                old = None
                if seg is not None:
                    with contextlib.suppress(DocumentError):
                        old = read_document(self._folder, int(seg), int(off), int(length), bytes(expected))
                doc, error = _rebuild_one(str(tid), functools.partial(self.spans_for_bytes, str(tid)))
                report.failed += error is not None
                if not was_pending and old is not None and old == doc.json.encode("utf-8"):
                    report.unchanged += 1
                    continue
                todo.append((doc, int(version)))
            if todo:
                self.put_documents(todo, sync_files=False)
                report.changed += len(todo)
                report.changed_ids.extend(doc.trace_id for doc, _v in todo)
        if trace_ids is None and not pending:
            report.left_pending = self.pending_count()
        return report


__all__ = ["RebuildReport", "SegmentStats", "StoreMaintenance", "StoreProblem", "StoreStats", "VerifyReport",
           "rebuild_document"]
