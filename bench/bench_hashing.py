"""Artifact hashing benchmark: which digest algorithm, and does the background writer help?

Measures, on random buffers of 16, 64 and 256 MiB:

- ``hashlib.sha256`` (single thread; OpenSSL, SHA-NI when the CPU has it);
- ``blake3`` single thread;
- ``blake3`` with ``max_threads=blake3.AUTO`` (all cores).

and, for a 64 MiB blob, the caller-visible time of ``LocalArtifactStore.put`` (hash + write +
fsync) against ``BackgroundWriter.submit`` (hash + enqueue), plus the time the worker needs to
finish (``flush``). Hashing figures are the median (and best) of ``--repeat`` runs after a warm-up; write figures
are the best of ``--repeat`` runs (fresh bytes per run so no write is skipped as already
present).

Usage::

    python bench/bench_hashing.py                 # print the tables
    python bench/bench_hashing.py --write-docs    # also replace the "Artifact hashing" section of
                                                  # docs/benchmarks.md
    python bench/bench_hashing.py --write-docs --reference bench/results/hashing_16core_xeon.md
                                                  # ... and append a run saved on another machine
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from benchdoc import cpu_model, replace_section

from vauban_trace.artifacts import BackgroundWriter, LocalArtifactStore

MiB = 1 << 20
SECTION = "## Artifact hashing"
REPO = Path(__file__).resolve().parent.parent


def _runs(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up (thread pools, page faults)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _sha256(buf: bytes) -> bytes:
    return hashlib.sha256(buf).digest()


def _blake3(buf: bytes, max_threads: int) -> bytes:
    return bytes(blake3.blake3(buf, max_threads=max_threads).digest())


def hashing_table(sizes_mib: list[int], repeat: int) -> list[list[str]]:
    rows = []
    for size in sizes_mib:
        buf = os.urandom(size * MiB)
        algos: list[Callable[[], object]] = [
            functools.partial(_sha256, buf),
            functools.partial(_blake3, buf, 1),
            functools.partial(_blake3, buf, blake3.blake3.AUTO),
        ]
        cells = [f"{size} MiB"]
        for fn in algos:
            times = _runs(fn, repeat)
            median, best = statistics.median(times), min(times)
            cells.append(f"{size * MiB / median / 1e9:.2f} ({size * MiB / best / 1e9:.2f})")
        rows.append(cells)
    return rows


def writer_table(size_mib: int, repeat: int, directory: Path) -> list[list[str]]:
    rows = []
    for algorithm in ("blake3", "sha256"):
        put_times, submit_times, flush_times = [], [], []
        for i in range(repeat + 1):
            blobs = [os.urandom(size_mib * MiB) for _ in range(2)]
            root = directory / f"run-{algorithm}-{i}"
            store = LocalArtifactStore(root, algorithm=algorithm)
            t0 = time.perf_counter()
            store.put(blobs[0], "application/vnd.safetensors")
            put_times.append(time.perf_counter() - t0)
            writer = BackgroundWriter(store)
            t0 = time.perf_counter()
            writer.submit(blobs[1], "application/vnd.safetensors")
            t1 = time.perf_counter()
            writer.flush()
            t2 = time.perf_counter()
            writer.close()
            submit_times.append(t1 - t0)
            flush_times.append(t2 - t1)
            shutil.rmtree(root)
        # drop the warm-up run
        put_s, submit_s, flush_s = min(put_times[1:]), min(submit_times[1:]), min(flush_times[1:])
        rows.append([
            algorithm, f"{put_s * 1e3:.1f}", f"{submit_s * 1e3:.1f}", f"{flush_s * 1e3:.1f}",
            f"{put_s / submit_s:.1f}x",
        ])
    return rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    model = cpu_model()
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = [f for f in ("sha_ni", "avx2", "avx512f") if re.search(rf"\b{f}\b", text)]
        flags = ", ".join(have) or "none of sha_ni/avx2/avx512f"
    except OSError:
        pass
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() or platform.machine()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"`uname -m` = {arch}, `nproc` = {nproc}, CPU: {model} (flags: {flags}); "
        f"Python {platform.python_version()}, blake3 {blake3.__version__}; "
        f"load average when the run started: {load}; process niceness {os.nice(0)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256", help="buffer sizes in MiB (default 16,64,256)")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per figure")
    parser.add_argument("--writer-mib", type=int, default=64, help="blob size for put vs submit")
    parser.add_argument("--dir", type=Path, default=None, help="where the write test writes (default: a temp dir)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--reference", type=Path, action="append", default=[],
        help="output of this script saved from another machine, appended to the section as is",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    where = machine()
    hash_rows = hashing_table(sizes, args.repeat)
    hash_md = _markdown(["buffer", "sha256 GB/s", "blake3 1-thread GB/s", "blake3 AUTO GB/s"], hash_rows)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        writer_rows = writer_table(args.writer_mib, args.repeat, Path(tmp))
    writer_md = _markdown(
        ["algorithm", "put() ms", "submit() ms", "flush() after submit ms", "put / submit"], writer_rows
    )
    command = "python bench/bench_hashing.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if os.nice(0) != 0:
        command = f"nice -n {os.nice(0)} {command}"
    body = (
        f"Command: `{command.strip()}`\n\n"
        f"Machine: {where}\n\n"
        f"Throughput in GB/s (10^9 bytes/s): median of {args.repeat} runs, best in parentheses; random bytes:\n\n{hash_md}\n\n"
        f"Caller-visible time to store one {args.writer_mib} MiB blob on a local disk (best of "
        f"{args.repeat}): `LocalArtifactStore.put` hashes, writes and fsyncs; "
        f"`BackgroundWriter.submit` hashes and enqueues; the worker's write is the `flush()` column.\n\n"
        f"{writer_md}\n"
    )
    print(body)
    for ref in args.reference:
        text = ref.read_text().strip()
        body += f"\n### Same script on another machine (saved output: `{ref.as_posix()}`)\n\n{text}\n"
    if args.write_docs:
        replace_section(SECTION, f"{SECTION}\n\n{body}")
        print(f"updated {REPO / 'docs' / 'benchmarks.md'} ({SECTION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
