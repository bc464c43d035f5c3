"""Instructions per operation of the micro rows, counted by valgrind (callgrind), for
ferroloop builds side by side: the measure that a shared machine cannot disturb, for
costs of a few percent (e.g. the loop statistics against a build without them).

    benchmarks/instructions.py --variant on=$(benchmarks/variant.sh HEAD 3.13) \\
        --variant off=$(benchmarks/variant.sh HEAD 3.13 nostats)

Each row runs `worker.py ferroloop ROW N` at two sizes under callgrind; the difference
of the two instruction counts over the difference of the sizes is the row's count per
operation (start-up, imports and the warm-up cancel out). The rows with threads
(call_soon_threadsafe, run_in_executor) depend on how valgrind schedules them and vary
by a few percent run to run; the others repeat. Instruction counts are not
time: a cache miss costs more than an instruction, so a change that adds few
instructions can still cost time. The hardware counters (`perf stat`) would give
cycles, but this machine's VM exposes none.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BENCHES  # noqa: E402

COLLECTED = re.compile(r"Collected : (\d+)")


def count(pythonpath: str, row: str, n: int) -> int:
    # Under valgrind every callback runs ~50x longer; the loop statistics would then time
    # each one (they sample one in 64 while callbacks take under 4 us): scale the bar.
    # A fixed hash seed: dict and set layouts, and so the counts, repeat run to run.
    env = dict(
        os.environ,
        PYTHONPATH=pythonpath,
        FERROLOOP_STATS_FULL_TIMING_NS="400000",
        PYTHONHASHSEED="0",
    )
    env.pop("PYTHONASYNCIODEBUG", None)
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(HERE / "worker.py"),
            "ferroloop",
            row,
            str(n),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    m = COLLECTED.search(out.stderr)
    if m is None:
        raise SystemExit(f"no instruction count from callgrind for {row}:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a ferroloop build: DIR holds its ferroloop package (benchmarks/variant.sh)",
    )
    ap.add_argument("--only", help="comma-separated rows: " + ",".join(b[0] for b in BENCHES))
    ap.add_argument(
        "--scale",
        type=float,
        default=0.05,
        help="the smaller size, as a fraction of the row's size in run.py (default 0.05)",
    )
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.variant]
    rows = [b for b in BENCHES if not args.only or b[0] in args.only.split(",")]
    names = [name for name, _ in variants]
    print(
        f"{'row':32s}"
        + "".join(f"{name + ' /op':>14s}" for name in names)
        + "   first vs "
        + ", ".join(names[1:])
    )
    for key, label, size in rows:
        n = max(int(size * args.scale), 1000)
        per_op = []
        for _, path in variants:
            small, large = count(path, key, n), count(path, key, 2 * n)
            per_op.append((large - small) / n)
        ratios = "  ".join(f"{per_op[0] / p - 1:+.2%}" for p in per_op[1:])
        print(f"{label:32s}" + "".join(f"{p:14.0f}" for p in per_op) + f"   {ratios}", flush=True)


if __name__ == "__main__":
    main()
