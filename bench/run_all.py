"""Run every CPU benchmark in turn and refresh its section of docs/benchmarks.md.

Usage: ``python bench/run_all.py [--only NAME ...]`` (``make bench``). Each benchmark script is
run in its own process with ``--write-docs``; they are run one after another so that none loads
the machine while another measures. GPU validation (``bench/gpu_validate.py``) needs a CUDA
machine and is not run here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_stage_overhead", "bench_hashing", "bench_rebuild", "bench_rebuild_native", "bench_collector",
           "bench_torch_generate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these benchmarks")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py"), "--write-docs"])
        if rc != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
