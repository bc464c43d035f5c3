"""Run every tutorial program on the stock asyncio loop and on ferroloop, and compare.

    python examples/run_all.py [--jobs N] [--stagger S] [--timeout S] [NAME ...]

Each program `examples/NN_*.py` runs twice, in its own interpreter: as `python NN_x.py`
(the stock loop) and as `python -m ferroloop NN_x.py` (ferroloop, through its CLI). The
two outputs (stdout, stderr and exit code) must be identical. One line per program shows
the wall time of each of the two subprocesses, interpreter start-up included, and OK,
SKIP (both runs printed the same "SKIP: ..." line: the program needs a newer Python),
DIFF, FAIL (same output, non-zero exit) or TIMEOUT. The exit status is non-zero unless
every program is OK or SKIP.

Outputs are compared exactly, not as sorted lines: asyncio's scheduling is deterministic
for these programs (a FIFO ready queue, timers run in deadline order), so a loop that
schedules as asyncio does prints the same lines in the same order. The candidates for
nondeterminism are deterministic in fact: in 14_queue each consumer prints only after the
producer's put that it depends on, whichever timer fires first; 18_to_thread prints only
the results of the worker threads, never the order they ran in; in 12_semaphore "Task 0/1/2
done" all come before "Task 3 starting" because the three sleep(1) deadlines lie ~10 us
apart and both loops wake >100 us after the first one, so one iteration collects all three
timers (30 of 30 runs alike under full CPU load). Under PYTHONASYNCIODEBUG=1 that margin
shrinks (debug mode slows each task step) and that one interleaving can change, on either
loop. The aiohttp programs (20_, 21_; they need requirements/net.txt) fetch from a local
server that they start on an ephemeral port, and 20_aiohttp_fetch prints that port as
<port>; gather returns their concurrent requests' results in argument order, so their
output is fixed too.

The programs mostly sleep, so they run in parallel: up to --jobs programs at once (default
16), each one's stock run started together with its ferroloop run, so both see the same
machine load. Program launches are --stagger seconds apart (default 0.1) so that the
interpreters' CPU-bound start-ups do not pile up and inflate each other's times (all 38 at
once add about half a second to every line on a 2-core machine). Each time is one
subprocess's own wall time, from its start to its exit, never a share of a batch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
LOOPS = ("stock", "ferroloop")

# Printed by a program inside asyncio.run(): proves which loop each command really gets.
_WHICH_LOOP = """\
import asyncio

async def main():
    loop = asyncio.get_running_loop()
    print(f"{type(loop).__module__}.{type(loop).__qualname__}")

asyncio.run(main())
"""


@dataclass
class Run:
    stdout: str
    stderr: str
    returncode: int | None  # None: timed out
    seconds: float

    def key(self) -> tuple[str, str, int | None]:
        return (self.stdout, self.stderr, self.returncode)


def command(loop: str, script: Path) -> list[str]:
    if loop == "stock":
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "ferroloop", str(script)]


def run(loop: str, script: Path, timeout: float) -> Run:
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command(loop, script),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=EXAMPLES.parent,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Run(out, err, None, time.perf_counter() - start)
    return Run(proc.stdout, proc.stderr, proc.returncode, time.perf_counter() - start)


def programs(names: list[str]) -> list[Path]:
    found = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
    if not names:
        return found
    chosen = [p for p in found if any(p.stem.startswith(n) or p.stem == n for n in names)]
    if not chosen:
        raise SystemExit(f"no example matches {' '.join(names)}")
    return chosen


def verdict(stock: Run, ferro: Run) -> str:
    if stock.returncode is None or ferro.returncode is None:
        return "TIMEOUT"
    if stock.key() != ferro.key():
        return "DIFF"
    if stock.returncode != 0:
        return "FAIL"
    if stock.stdout.startswith("SKIP:"):
        return "SKIP"
    return "OK"


def explain(name: str, stock: Run, ferro: Run) -> str:
    lines = [f"--- {name}"]
    for label, r in (("stock", stock), ("ferroloop", ferro)):
        status = "timed out" if r.returncode is None else f"exit code {r.returncode}"
        lines.append(f"  {label}: {status}")
    for stream in ("stdout", "stderr"):
        a, b = getattr(stock, stream), getattr(ferro, stream)
        if a != b:
            diff = difflib.unified_diff(
                a.splitlines(), b.splitlines(), f"{stream} (stock)", f"{stream} (ferroloop)",
                lineterm="",
            )
            lines.extend("  " + d for d in diff)
        elif a and stock.returncode != 0:
            lines.extend("  " + d for d in a.splitlines()[-15:])
    return "\n".join(lines)


class Gate:
    """Lets callers through one at a time, at least `stagger` seconds apart."""

    def __init__(self, stagger: float) -> None:
        self.stagger = stagger
        self.lock = threading.Lock()
        self.next = 0.0

    def wait(self) -> None:
        with self.lock:
            time.sleep(max(0.0, self.next - time.perf_counter()))
            self.next = time.perf_counter() + self.stagger


def run_pair(script: Path, gate: Gate, timeout: float) -> tuple[Run, Run]:
    """Run a program on both loops at the same time; each run is timed on its own."""
    gate.wait()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(LOOPS)) as both:
        stock, ferro = (both.submit(run, loop, script, timeout) for loop in LOOPS)
        return stock.result(), ferro.result()


def check_loops(timeout: float) -> dict[str, str]:
    """Which loop class each of the two commands really runs a program on."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "which_loop.py")
        script.write_text(_WHICH_LOOP)
        result = {}
        for loop in LOOPS:
            r = run(loop, script, timeout)
            if r.returncode != 0:
                raise SystemExit(f"`{' '.join(command(loop, script))}` failed:\n{r.stderr}")
            result[loop] = r.stdout.strip()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these programs (name or prefix)")
    parser.add_argument("-j", "--jobs", type=int, default=16,
                        help="programs at once, two subprocesses each (default 16)")
    parser.add_argument("--stagger", type=float, default=0.1,
                        help="seconds between two program launches (default 0.1)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before a run counts as hung (default 60)")
    args = parser.parse_args(argv)

    loops = check_loops(args.timeout)
    if not loops["ferroloop"].startswith("ferroloop."):
        print(f"`python -m ferroloop` ran on {loops['ferroloop']}, not ferroloop", file=sys.stderr)
        return 1
    scripts = programs(args.names)
    print(f"Python {sys.version.split()[0]}; stock loop: {loops['stock']}; "
          f"ferroloop: {loops['ferroloop']}")
    print("times: wall time of each subprocess, interpreter start-up included; "
          f"{len(scripts)} programs, up to {max(1, args.jobs)} at once, "
          f"launched {args.stagger:g} s apart")
    width = max(len(p.stem) for p in scripts) + 2
    print(f"{'program':<{width}}{'stock':>8}{'ferroloop':>11}  result")

    started = time.perf_counter()
    counts: dict[str, int] = {}
    problems = []
    gate = Gate(args.stagger)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        pairs = {p: pool.submit(run_pair, p, gate, args.timeout) for p in scripts}
        for p in scripts:  # print in program order, as each pair completes
            stock, ferro = pairs[p].result()
            result = verdict(stock, ferro)
            counts[result] = counts.get(result, 0) + 1
            print(f"{p.stem:<{width}}{stock.seconds:>7.2f}s{ferro.seconds:>10.2f}s  {result}",
                  flush=True)
            if result not in ("OK", "SKIP"):
                problems.append(explain(p.stem, stock, ferro))
    wall = time.perf_counter() - started

    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    print(f"{len(scripts)} programs: {summary}; {wall:.1f} s in all")
    for text in problems:
        print(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # a TIMEOUT still shows what was printed
    sys.exit(main())
