"""``vauban-trace store``: check, inspect, compact and rebuild a trace store offline.

::

    vauban-trace store verify  [--store DIR] [--repair] [--max-problems N] [--json]
    vauban-trace store stats   [--store DIR] [--json]
    vauban-trace store compact [--store DIR] [--threshold 0.5] [--json]
    vauban-trace store rebuild [--store DIR] (--all [--pending] | TRACE_ID...) [--json]

``--store`` defaults to ``.vauban`` (the collector's default) and must hold a ``traces.sqlite``:
these commands never create a store. All four are safe while a collector runs on the same store
(they use the store's multi-process paths: SQLite transactions, digest-checked reads that look a
moved text up again, and they never take a segment's writer lock); see ``docs/collector.md``,
"Operating the store".

- ``verify`` reads back every rebuilt trace's text (length + BLAKE3 digest), checks every
  segment's bookkeeping (Trace JSON and span segments) and reads back every raw span batch
  (length + BLAKE3 digest in its span segment, then decoded)
  (:meth:`~vauban_trace.store.TraceStore.verify_store`). A damaged span batch is raw spans lost:
  it is listed with its trace and segment file, and never repaired. Exit 0 when all is well, 1 when
  anything is wrong (the first ``--max-problems`` problems are listed); ``--repair`` sends traces
  with broken texts back to pending (the collector, or ``store rebuild``, rebuilds them) and
  fixes segment bookkeeping the store's recovery can fix; what it cannot repair is said so.
- ``stats`` schema version, traces (rebuilt complete / incomplete, pending), raw spans, bytes in
  SQLite, in Trace JSON segment files and in span segment files, and each segment's live share.
- ``compact`` runs :meth:`~vauban_trace.store.TraceStore.compact_documents` and
  :meth:`~vauban_trace.store.TraceStore.compact_spans`: segments of either kind whose live share
  is under ``--threshold`` are rewritten; prints segment bytes before and after and the segments
  removed (segments a running collector writes, and span segments holding a damaged batch, are
  skipped).
- ``rebuild`` rebuilds traces from their raw spans with this vauban-trace's rebuild (after an
  upgrade that changed it) and stores those whose text changed
  (:meth:`~vauban_trace.store.TraceStore.rebuild_stored`); ``--all`` takes every trace whose
  rebuild is current, ``--pending`` also the pending ones (otherwise left to the collector).

Bad flags, a missing store, an unknown trace id: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli._args import positive_int

if TYPE_CHECKING:
    from vauban_trace.store import TraceStore

_SUBCOMMANDS = "verify, stats, compact, rebuild"


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "store",
        help="verify, inspect, compact or rebuild a trace store",
        description="Operate a trace store directory (safe while a collector runs on it).",
    )
    p.set_defaults(func=_no_subcommand)
    sub = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND", parser_class=type(p))

    def with_store(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", default=".vauban", metavar="DIR", help="trace store directory (default .vauban)")
        q.add_argument("--json", action="store_true", help="print one JSON object")

    v = sub.add_parser("verify", help="check every text, segment and raw span batch",
                       description="Read back every rebuilt trace's text and every raw span batch (length and "
                                   "digest), check segment bookkeeping, decode every span batch. Exit 1 when "
                                   "anything is wrong.")
    with_store(v)
    v.add_argument("--repair", action="store_true", help="send traces with broken texts back to pending "
                   "and fix segment bookkeeping the store's recovery can fix")
    v.add_argument("--max-problems", type=positive_int, default=20, metavar="N", help="list at most N problems "
                   "(default 20)")
    v.set_defaults(func=_verify)

    s = sub.add_parser("stats", help="counts and sizes of a store", description="Schema, trace counts, raw "
                       "spans, bytes in SQLite and segment files, live share per segment.")
    with_store(s)
    s.set_defaults(func=_stats)

    c = sub.add_parser("compact", help="rewrite segments mostly made of replaced texts or merged span batches",
                       description="Compact the segment files (Trace JSON and raw spans) whose live share is under "
                                   "--threshold.")
    with_store(c)
    c.add_argument("--threshold", type=_share, default=0.5, metavar="SHARE",
                   help="compact segments whose live share is below this (0 < SHARE <= 1, default 0.5)")
    c.set_defaults(func=_compact)

    r = sub.add_parser("rebuild", help="rebuild traces from their raw spans with this version",
                       description="Rebuild traces from their stored raw spans with this vauban-trace's "
                                   "rebuild and store those whose Trace JSON changed.")
    with_store(r)
    r.add_argument("trace_ids", nargs="*", metavar="TRACE_ID", help="trace ids (32 hex digits)")
    r.add_argument("--all", action="store_true", help="every trace whose rebuild is current")
    r.add_argument("--pending", action="store_true", help="with --all: the pending traces too")
    r.set_defaults(func=_rebuild)


def _no_subcommand(args: argparse.Namespace) -> int:
    raise ConfigurationError(f"store: give a subcommand: {_SUBCOMMANDS}")


def _open(args: argparse.Namespace) -> TraceStore:
    from vauban_trace.store import TraceStore

    directory = Path(args.store).expanduser()
    if not (directory / "traces.sqlite").is_file():
        raise ConfigurationError(f"--store: no trace store in {str(directory)!r} (traces.sqlite is missing)")
    # on_read: a stored text replaces a stale traces/<id>.json by removing it; `show` writes it again
    return TraceStore(directory, trace_files="on_read")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _verify(args: argparse.Namespace) -> int:
    with _open(args) as ts:
        recovered = ts.recovered_at_open
        report = ts.verify_store(repair=args.repair, max_problems=args.max_problems)
    if args.json:
        print(json.dumps({**report.to_dict(), "recovered_at_open": recovered}))
        return 0 if report.ok else 1
    if recovered:
        print(f"opening the store made {recovered} trace(s) whose text a crash lost pending again")
    print(f"texts: {report.texts_checked} checked, {report.texts_broken} broken")
    print(f"segments: {report.segments_checked} checked, {report.segments_bad} with bad bookkeeping"
          + (f", {report.rows_bad} row(s) naming unknown segments" if report.rows_bad else "")
          + (f" ({report.unreferenced_files} unreferenced file(s), removed at the next open)"
             if report.unreferenced_files else ""))
    print(f"span segments: {report.span_segments_checked} checked, {report.span_segments_bad} with bad bookkeeping")
    print(f"span batches: {report.span_batches_checked} checked ({report.spans_decoded} spans), "
          f"{report.span_batches_bad} damaged or undecodable")
    if report.ok:
        print("verify: OK")
        return 0
    shown = len(report.problems)
    print(f"problems ({shown} of {report.problem_count}):" if shown < report.problem_count else "problems:")
    for p in report.problems:
        mark = "  [repaired]" if p.repaired else ("  [not repaired]" if args.repair else "")
        print(f"  {p.kind}  {p.subject}: {p.detail}{mark}")
    hint = "" if args.repair else "; --repair sends broken traces back to pending"
    print(f"verify: FAILED ({report.problem_count} problem(s), {report.repaired} repaired){hint}")
    return 1


def _stats(args: argparse.Namespace) -> int:
    with _open(args) as ts:
        stats = ts.store_stats()
    if args.json:
        print(json.dumps(stats.to_dict()))
        return 0
    print(f"store: {args.store} (schema {stats.schema_version})")
    print(f"traces: {stats.traces} ({stats.rebuilt} rebuilt: {stats.complete} complete, {stats.incomplete} "
          f"incomplete; {stats.pending} pending)")
    print(f"raw spans: {stats.raw_spans} in {stats.span_batches} span batch(es)")
    print(f"sqlite: {_size(stats.sqlite_bytes)} (traces.sqlite + WAL)")
    share = stats.live_bytes / stats.segment_bytes if stats.segment_bytes else 0.0
    print(f"segments: {len(stats.segments)}, {_size(stats.segment_bytes)}, live {_size(stats.live_bytes)} "
          f"({share:.0%})")
    for seg in stats.segments:
        missing = "  FILE MISSING" if seg.file_bytes is None else ""
        print(f"  seg-{seg.id:06d}.jsonl  {_size(seg.bytes):>10}  live {seg.live_share:6.1%}{missing}")
    share = stats.span_live_bytes / stats.span_segment_bytes if stats.span_segment_bytes else 0.0
    print(f"span segments: {len(stats.span_segments)}, {_size(stats.span_segment_bytes)}, live "
          f"{_size(stats.span_live_bytes)} ({share:.0%})")
    for seg in stats.span_segments:
        missing = "  FILE MISSING" if seg.file_bytes is None else ""
        print(f"  spans/seg-{seg.id:06d}.spans  {_size(seg.bytes):>10}  live {seg.live_share:6.1%}{missing}")
    return 0


def _compact(args: argparse.Namespace) -> int:
    with _open(args) as ts:
        before = ts.store_stats()
        removed = ts.compact_documents(args.threshold)
        spans_removed = ts.compact_spans(args.threshold)
        after = ts.store_stats()
    out = {"segments_before": len(before.segments), "segments_after": len(after.segments),
           "segments_removed": removed, "bytes_before": before.segment_bytes, "bytes_after": after.segment_bytes,
           "span_segments_before": len(before.span_segments), "span_segments_after": len(after.span_segments),
           "span_segments_removed": spans_removed, "span_bytes_before": before.span_segment_bytes,
           "span_bytes_after": after.span_segment_bytes, "threshold": args.threshold}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"segments: {len(before.segments)} -> {len(after.segments)} ({removed} removed)")
    print(f"segment bytes: {_size(before.segment_bytes)} -> {_size(after.segment_bytes)}")
    print(f"span segments: {len(before.span_segments)} -> {len(after.span_segments)} ({spans_removed} removed)")
    print(f"span segment bytes: {_size(before.span_segment_bytes)} -> {_size(after.span_segment_bytes)}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    if args.all == bool(args.trace_ids):
        raise ConfigurationError("store rebuild: give TRACE_IDs or --all (not both)")
    if args.pending and not args.all:
        raise ConfigurationError("store rebuild: --pending goes with --all")
    with _open(args) as ts:
        report = ts.rebuild_stored(None if args.all else args.trace_ids, pending=args.pending)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(f"rebuilt {report.examined} trace(s): {report.changed} changed, {report.unchanged} unchanged"
          + (f", {report.failed} could not be rebuilt (stored incomplete, see their problems)" if report.failed else ""))
    if report.skipped_no_spans:
        print(f"skipped {report.skipped_no_spans} trace(s) without raw spans")
    if report.left_pending:
        print(f"{report.left_pending} pending trace(s) left to the collector (--pending takes them)")
    return 0
