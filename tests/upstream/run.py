#!/usr/bin/env python3
"""Run uvloop's and anyio's own test suites against ferroloop.

Each suite is taken from its sdist, at the version pinned in requirements/upstream.txt
(downloaded once with ``pip download --no-binary :all:`` and kept, extracted, in
``.cache/upstream/``), and run against the installed package of the same version. Every
test module runs in worker subprocesses (tests/harness.py: per-test JSON events, a watchdog
per test, a new worker after a hang or crash), once per loop, and each test's outcome on
ferroloop is compared with its reference:

* uvloop's suite. Its classes come in pairs: ``Test_AIO_*``/``*AIO*`` classes, which run on
  asyncio's loop, and ``Test_UV_*``/``*UV*`` ones, which run on uvloop and hold it to
  uvloop's own choices. Both run on the stock loop and on ferroloop (workers.py says how the
  loop is swapped in). The reference of an AIO test is its stock run; the reference of a UV
  test is its stock run *and* expectations.txt: a UV test that fails on ferroloop must be
  listed there with its reason even when it fails on the stock loop too (there, uvloop
  chose differently from asyncio, and ferroloop has decided which to follow: README,
  "Upstream test suites"). ``--with-uvloop`` also runs the UV classes on uvloop, for the
  report's uvloop column.
* anyio's suite: its asyncio backend on the stock loop, then with ferroloop as its loop
  factory; the stock run is the reference.

A test that passes on its reference and not on ferroloop is a regression, and fails the run
unless expectations.txt lists it as ``pending`` (a fix on its way). Regressions are re-run
once alone on ferroloop; passing then, they are reported as flaky and count as passed.
expectations.txt entries that pass on ferroloop now are reported as stale. The last line is
``N passed, M failed`` (passed: tests passing on ferroloop among those that pass on their
reference; failed: unexpected failures plus harness errors), and with ``--ci`` the exit
status is 1 when M > 0.

Usage (from the repository root, with the venv's interpreter)::

    .venvs/3.11/bin/python tests/upstream/run.py --ci             # both suites, CI gate
    .venvs/3.11/bin/python tests/upstream/run.py --suites uvloop --modules test_tcp -v
    .venvs/3.11/bin/python tests/upstream/run.py --with-uvloop --json out.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from harness import (  # noqa: E402  (tests/harness.py, shared with conformance/run.py)
    PASSING,
    ModuleRun,
    first_line_of_error,
    in_pool,
    run_job,
)

PINS_FILE = ROOT / "requirements" / "upstream.txt"
EXPECTATIONS_FILE = HERE / "expectations.txt"
CACHE_DIR = ROOT / ".cache" / "upstream"
WORKERS = HERE / "workers.py"

SUITES = ("uvloop", "anyio")
TIMEOUTS = {"uvloop": 20.0, "anyio": 40.0}  # default per-test watchdogs (see --timeout)
STOCK, FERRO, UVLOOP = "stock", "ferroloop", "uvloop"

# Why a test is listed in expectations.txt (`suite:test-id  # status: reason`).
STATUSES = {
    "skip": "not run on any loop (needs the Internet, or flaky)",
    "asyncio": "ferroloop keeps asyncio's behaviour where uvloop chose differently",
    "uvloop-api": "tests uvloop's own API or internals, which no asyncio loop has",
    "ferroloop": "ferroloop differs from both, deliberately (README: differences from asyncio)",
    "pending": "fails on ferroloop until a fix on its way lands",
}


# ---------------------------------------------------------------------------------------
# The sdists
# ---------------------------------------------------------------------------------------


def pinned_versions(path: Path = PINS_FILE) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def fetch_sdist(name: str, version: str, cache: Path) -> Path:
    """The extracted sdist of `name==version`, downloaded into `cache` the first time."""
    target = cache / f"{name}-{version}"
    stamp = target / ".ferroloop-extracted"
    if stamp.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        print(f"upstream: downloading the {name} {version} sdist", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                        "--no-deps", f"{name}=={version}", "-d", tmp],
                       check=True)
        archives = [p for p in Path(tmp).iterdir() if p.name.endswith(".tar.gz")]
        if len(archives) != 1:
            raise SystemExit(f"upstream: expected one sdist of {name} {version}, got {archives}")
        with tarfile.open(archives[0]) as tar:
            top = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(top) != 1:
                raise SystemExit(f"upstream: {archives[0].name} has several top directories")
            extract_to = Path(tmp) / "x"
            if hasattr(tarfile, "data_filter"):
                tar.extractall(extract_to, filter="data")
            else:  # 3.10 before 3.10.12: the archive comes from the index pip was told
                tar.extractall(extract_to)  # noqa: S202
        shutil.rmtree(target, ignore_errors=True)
        (extract_to / top.pop()).rename(target)
    stamp.write_text(f"{name}=={version}\n")
    return target


def check_installed(name: str, version: str) -> str | None:
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} is not installed (pip install -r requirements/upstream.txt)"
    if installed != version:
        return (f"{name} {installed} is installed, but its suite is pinned at {version} "
                "(pip install -r requirements/upstream.txt)")
    return None


def suite_modules(suite: str, sdist: Path) -> list[str]:
    if suite == "uvloop":  # loaded as tests.<module>
        return sorted(p.stem for p in (sdist / "tests").glob("test_*.py"))
    return sorted(str(p.relative_to(sdist)) for p in (sdist / "tests").rglob("test_*.py"))


# ---------------------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------------------


@dataclass
class Listing:
    status: str
    reason: str
    line: int


_STATUS = re.compile(r"^([a-z-]+)(?:\[py(<|>=)(3\.\d+)\])?$")


def load_expectations(path: Path, version: tuple[int, int] | None = None) -> dict[str, Listing]:
    """`suite:test-id  # status: reason` per line; blank lines and `#` comments skipped.

    A status may name the Pythons it holds on, ``asyncio[py<3.13]`` or ``pending[py>=3.12]``;
    entries for other Pythons than `version` (default: this one) are left out.
    """
    version = version or sys.version_info[:2]
    listed: dict[str, Listing] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, rest = line.partition("  # ")
        status, colon, reason = rest.partition(":")
        key, reason = key.strip(), reason.strip()
        suite = key.split(":", 1)[0]
        m = _STATUS.match(status.strip())
        if (not sep or not colon or not reason or suite not in SUITES or m is None
                or m.group(1) not in STATUSES):
            raise SystemExit(f"{path}:{n}: expected `suite:test-id  # status: reason` with a "
                             f"status of {', '.join(STATUSES)} (optionally [py<3.N] or "
                             f"[py>=3.N]); got {raw!r}")
        if m.group(2):
            bound = tuple(int(x) for x in m.group(3).split("."))
            if (version < bound) != (m.group(2) == "<"):
                continue
        if key in listed:
            raise SystemExit(f"{path}:{n}: {key} is listed twice for this Python")
        listed[key] = Listing(m.group(1), reason, n)
    return listed


# ---------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """What one module's runs say, test by test."""

    suite: str
    module: str
    runs: dict[str, ModuleRun]
    groups: dict[str, str]  # test id -> aio / uv / other / anyio
    passed: list[str] = field(default_factory=list)  # pass on ferroloop and on the reference
    regressions: list[str] = field(default_factory=list)  # unexpected: fail the run
    listed: list[str] = field(default_factory=list)  # fail on ferroloop, listed
    flaky: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # listed, pass on ferroloop

    def key(self, test_id: str) -> str:
        return f"{self.suite}:{test_id}"


def group_of(suite: str, test_id: str, groups: dict[str, str]) -> str:
    return groups.get(test_id, "other") if suite == "uvloop" else "anyio"


def judge(suite: str, module: str, runs: dict[str, ModuleRun],
          expected: dict[str, Listing]) -> Verdicts:
    stock, ferro = runs[STOCK], runs[FERRO]
    groups = {**stock.meta.get("groups", {}), **ferro.meta.get("groups", {})}
    v = Verdicts(suite, module, runs, groups)
    stock_passed, ferro_passed = stock.passed(), ferro.passed()
    ids = stock.ids + [i for i in ferro.ids if i not in set(stock.ids)]
    for test_id in ids:
        listing = expected.get(v.key(test_id))
        if listing is not None and listing.status == "skip":
            continue
        if test_id in ferro_passed:
            if listing is not None:
                v.stale.append(test_id)
            if test_id in stock_passed or group_of(suite, test_id, groups) == "uv":
                v.passed.append(test_id)
            continue
        outcome = ferro.outcome(test_id)
        if test_id in stock_passed:
            ok = listing is not None and listing.status == "pending"
        elif group_of(suite, test_id, groups) == "uv" and outcome != "skip":
            ok = listing is not None  # fails on both: a decision, listed with its reason
        else:
            continue  # fails (or skips) on its reference too
        (v.listed if ok else v.regressions).append(test_id)
    for fid in ferro.fixtures:  # setUpClass, module fixtures... failing only on ferroloop
        if fid not in stock.fixtures:
            v.regressions.append(fid)
    return v


def describe(run: ModuleRun, test_id: str) -> tuple[str, str, str]:
    """(outcome, one-line headline, full detail) of a test in one run."""
    rec = run.results.get(test_id) or run.fixtures.get(test_id)
    if rec is None:
        return "missing", "not run (its class or module fixture failed?)", ""
    detail = rec.get("detail") or ""
    return rec["outcome"], rec.get("summary") or first_line_of_error(detail), detail


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

GROUP_NAMES = {"aio": "AIO classes", "uv": "UV classes", "other": "other", "anyio": "asyncio"}


def summarize(verdicts: list[Verdicts], expected: dict[str, Listing],
              with_uvloop: bool) -> list[dict[str, Any]]:
    """One row per suite and class group: the counts of the README's table."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in verdicts:
        stock, ferro = v.runs[STOCK], v.runs[FERRO]
        uv = v.runs.get(UVLOOP)
        regress, listed = set(v.regressions), set(v.listed)
        for test_id in stock.ids:
            group = group_of(v.suite, test_id, v.groups)
            row = rows.setdefault((v.suite, group), {
                "suite": v.suite, "group": group, "tests": 0, "skipped_listed": 0,
                "stock_passed": 0,
                "uvloop_passed": 0 if with_uvloop and group in ("uv", "other") else None,
                "ferroloop_passed": 0, "on_ferro": 0, "listed": {},
                "regressions": 0, "flaky": 0, "stale": 0})
            row["tests"] += 1
            listing = expected.get(v.key(test_id))
            if listing is not None and listing.status == "skip":
                row["skipped_listed"] += 1
                continue
            if stock.outcome(test_id) in PASSING:
                row["stock_passed"] += 1
            if uv is not None and row["uvloop_passed"] is not None and (
                    uv.outcome(test_id) in PASSING):
                row["uvloop_passed"] += 1
            if ferro.outcome(test_id) in PASSING or test_id in v.flaky:
                row["ferroloop_passed"] += 1
                rec = ferro.results.get(test_id) or {}
                if rec.get("ferro") or test_id in v.flaky:
                    row["on_ferro"] += 1
            if test_id in listed and listing is not None:
                row["listed"][listing.status] = row["listed"].get(listing.status, 0) + 1
            row["regressions"] += test_id in regress
            row["flaky"] += test_id in v.flaky
            row["stale"] += test_id in v.stale
    return [rows[k] for k in sorted(rows, key=lambda k: (SUITES.index(k[0]), k[1]))]


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["suite", "tests", "skipped", "stock", "uvloop", "ferroloop", "on-ferro", "listed",
              "regress", "flaky", "stale"]
    table = []
    for r in rows:
        listed = sum(r["listed"].values())
        table.append([f"{r['suite']} {GROUP_NAMES[r['group']]}", str(r["tests"]),
                      str(r["skipped_listed"]), str(r["stock_passed"]),
                      "-" if r["uvloop_passed"] is None else str(r["uvloop_passed"]),
                      str(r["ferroloop_passed"]), str(r["on_ferro"]), str(listed),
                      str(r["regressions"]), str(r["flaky"]), str(r["stale"])])
    widths = [max(len(x[i]) for x in table + [header]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    print(fmt(header))
    print(fmt(["-" * w for w in widths]))
    for r in table:
        print(fmt(r))
    print("(tests: tests the suite has here; skipped: listed `skip`, not run; stock, uvloop, "
          "ferroloop: tests passed on each loop; on-ferro: ferroloop passes that made a "
          "ferroloop loop; listed: ferroloop failures listed in expectations.txt; regress: "
          "unexpected failures; stale: listed but passing now)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run uvloop's and anyio's test suites on the stock loop and on ferroloop "
                    "and report where ferroloop differs.")
    ap.add_argument("--ci", action="store_true", help="exit 1 on any unexpected failure")
    ap.add_argument("--suites", default=",".join(SUITES),
                    help="comma-separated: uvloop, anyio (default: both)")
    ap.add_argument("--modules", help="comma-separated modules (test_tcp, tests/test_sockets.py)")
    ap.add_argument("--with-uvloop", action="store_true",
                    help="also run uvloop's UV classes on uvloop (the report's uvloop column)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds a test may run without progress (default: 20 for uvloop's "
                         "suite, whose slowest passing test takes ~9s; 40 for anyio's, whose "
                         "own pytest-timeout fails a test after 20)")
    ap.add_argument("--module-timeout", type=float, default=600.0)
    ap.add_argument("--total-timeout", type=float, default=None,
                    help="seconds for the whole run (default: 900 with --ci, else none)")
    ap.add_argument("--max-restarts", type=int, default=25)
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of each unexpected failure alone on ferroloop (default 1)")
    ap.add_argument("--expected", type=Path, default=EXPECTATIONS_FILE)
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    ap.add_argument("--json", type=Path, help="write every outcome and error to this file")
    ap.add_argument("--keep-logs", type=Path, help="keep worker logs in this directory")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="full errors of unexpected failures, and every listed test")
    opts = ap.parse_args(argv)
    opts.asyncio_debug = False

    suites = [s.strip() for s in opts.suites.split(",") if s.strip()]
    if unknown := [s for s in suites if s not in SUITES]:
        ap.error(f"unknown suite(s): {', '.join(unknown)}")
    expected = load_expectations(opts.expected)
    pins = pinned_versions()
    if opts.total_timeout is None and opts.ci:
        opts.total_timeout = 900.0
    opts.deadline = (time.monotonic() + opts.total_timeout) if opts.total_timeout else None

    problems = [p for s in suites if (p := check_installed(s, pins[s]))]
    if problems:
        for p in problems:
            print(f"upstream: {p}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 2
    sdists = {s: fetch_sdist(s, pins[s], opts.cache_dir) for s in suites}
    wanted = {m.strip() for m in opts.modules.split(",")} if opts.modules else None
    modules = {s: [m for m in suite_modules(s, sdists[s]) if wanted is None or m in wanted]
               for s in suites}
    if wanted is not None:
        found = {m for ms in modules.values() for m in ms}
        if missing := wanted - found:
            ap.error(f"no such module(s) in {', '.join(suites)}: {', '.join(sorted(missing))}")

    py = f"CPython {platform.python_version()} ({sys.executable})"
    print(f"upstream: {', '.join(f'{s} {pins[s]}' for s in suites)} on {py}, -j {opts.jobs}, "
          "per-test timeout " + (f"{opts.timeout:g}s" if opts.timeout else ", ".join(
              f"{TIMEOUTS[s]:g}s ({s})" for s in suites)), flush=True)
    if opts.keep_logs:
        workdir = opts.keep_logs.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ferroloop-upstream-"))
    deselect: dict[str, Path] = {}
    for s in suites:
        deselect[s] = workdir / f"{s}.deselect.txt"
        deselect[s].write_text("\n".join(k.split(":", 1)[1] for k, v in expected.items()
                                         if v.status == "skip" and k.startswith(s + ":")))

    def loops_of(suite: str) -> tuple[str, ...]:
        return (STOCK, FERRO, UVLOOP) if suite == "uvloop" and opts.with_uvloop else (STOCK, FERRO)

    def job(suite: str, module: str, loop: str, only: set[str] | None = None,
            tag: str = "") -> ModuleRun:
        cmd = [sys.executable, "-X", "faulthandler", str(WORKERS), suite, "--loop", loop,
               "--module", module, "--sdist", str(sdists[suite]),
               "--deselect-file", str(deselect[suite])]
        name = f"{suite}-{module.replace('/', '_')}"
        job_opts = argparse.Namespace(**vars(opts))
        job_opts.timeout = opts.timeout or TIMEOUTS[suite]
        return run_job(name, loop, cmd, job_opts, workdir, only, tag)

    jobs = [(s, m, loop) for s in suites for m in modules[s] for loop in loops_of(s)]
    weight = {(s, m): (sdists[s] / "tests" / f"{m}.py" if s == "uvloop"
                       else sdists[s] / m).stat().st_size for s in suites for m in modules[s]}
    jobs.sort(key=lambda j: -weight[(j[0], j[1])])
    runs: dict[tuple[str, str, str], ModuleRun] = {}
    lock = threading.Lock()
    done = [0]
    t0 = time.monotonic()

    def timed_job(suite: str, module: str, loop: str) -> ModuleRun:
        r = job(suite, module, loop)
        with lock:
            done[0] += 1
            errs = f", HARNESS ERROR: {r.harness_errors[0].splitlines()[0]}" \
                if r.harness_errors else ""
            extra = f", {r.workers} workers" if r.workers > 1 else ""
            print(f"  [{done[0]}/{len(jobs)}] {suite} {module} on {loop}: "
                  f"{len(r.passed())}/{len(r.ids)} passed in {r.seconds:.1f}s{extra}{errs}",
                  flush=True)
        return r

    def run_all() -> list[Verdicts]:
        for (s, m, loop), r in in_pool(opts.jobs, timed_job, jobs):
            runs[(s, m, loop)] = r
        verdicts = [judge(s, m, {loop: runs[(s, m, loop)] for loop in loops_of(s)}, expected)
                    for s in suites for m in modules[s]]
        for attempt in range(opts.retries):
            # Only what passes on the stock loop: a test failing on both is no flake.
            todo = [(v, {t for t in v.regressions
                         if t in v.runs[FERRO].ids and t in v.runs[STOCK].passed()})
                    for v in verdicts]
            todo = [(v, ids) for v, ids in todo if ids]
            if not todo:
                break
            print(f"  retrying {sum(len(ids) for _, ids in todo)} failure(s) alone on "
                  "ferroloop", flush=True)
            retry_jobs = [(v.suite, v.module, FERRO, ids, f".retry{attempt}") for v, ids in todo]
            for args, retry in in_pool(opts.jobs, job, retry_jobs):
                v = next(v for v, _ in todo if (v.suite, v.module) == args[:2])
                for test_id in retry.passed():
                    if test_id in v.regressions:
                        v.regressions.remove(test_id)
                        v.flaky.append(test_id)
                        v.passed.append(test_id)
        return verdicts

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        verdicts = run_all()
    finally:
        if not opts.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ report
    print()
    rows = summarize(verdicts, expected, opts.with_uvloop)
    print_table(rows)
    regressions = [(v, t) for v in verdicts for t in v.regressions]
    if regressions:
        print(f"\nunexpected failures ({len(regressions)}): pass on the reference (or UV "
              "tests failing on both loops and not listed), not on ferroloop")
        for v, t in regressions:
            outcome, headline, detail = describe(v.runs[FERRO], t)
            ref = v.runs[STOCK].outcome(t)
            print(f"  {v.key(t)}  [stock: {ref}, ferroloop: {outcome}] {headline}")
            if opts.verbose and detail:
                for ln in detail.rstrip().splitlines():
                    print(f"      {ln}")
    listed = [(v, t) for v in verdicts for t in v.listed]
    if listed:
        by_status: dict[str, int] = {}
        for v, t in listed:
            st = expected[v.key(t)].status
            by_status[st] = by_status.get(st, 0) + 1
        print(f"\nlisted in {opts.expected.name} ({len(listed)}): "
              + ", ".join(f"{n} {st}" for st, n in sorted(by_status.items())))
        if opts.verbose:
            for v, t in listed:
                outcome, _, _ = describe(v.runs[FERRO], t)
                lst = expected[v.key(t)]
                print(f"  {v.key(t)}  [stock: {v.runs[STOCK].outcome(t)}, ferroloop: "
                      f"{outcome}]  # {lst.status}: {lst.reason}")
    flaky = [(v, t) for v in verdicts for t in v.flaky]
    if flaky:
        print(f"\nflaky ({len(flaky)}): failed on ferroloop, then passed when re-run alone")
        for v, t in flaky:
            outcome, headline, _ = describe(v.runs[FERRO], t)
            print(f"  {v.key(t)}  [first run: {outcome}] {headline}")
    stale = [(v, t) for v in verdicts for t in v.stale]
    if stale:
        print(f"\nSTALE: listed in {opts.expected.name} but passing on ferroloop now "
              f"({len(stale)}); remove them:")
        for v, t in stale:
            lst = expected[v.key(t)]
            print(f"  {v.key(t)}  (line {lst.line}, {lst.status}: {lst.reason})")
    harness = [(v, loop, e) for v in verdicts for loop, r in v.runs.items()
               for e in r.harness_errors]
    if harness:
        print("\nharness errors:")
        for v, loop, err in harness:
            print(f"  {v.suite} {v.module} on {loop}: {err}")

    if opts.json:
        report = {
            "python": platform.python_version(),
            "versions": {s: pins[s] for s in suites},
            "summary": rows,
            "modules": {
                f"{v.suite}:{v.module}": {
                    "outcomes": {t: {loop: r.outcome(t) for loop, r in v.runs.items()}
                                 for t in v.runs[STOCK].ids},
                    "groups": v.groups,
                    "regressions": v.regressions,
                    "listed": v.listed,
                    "flaky": v.flaky,
                    "stale": v.stale,
                    "ferroloop_errors": {t: describe(v.runs[FERRO], t)[2]
                                         for t in v.regressions + v.listed},
                    "seconds": {loop: round(r.seconds, 1) for loop, r in v.runs.items()},
                }
                for v in verdicts
            },
        }
        opts.json.write_text(json.dumps(report, indent=1))

    n_passed = sum(len(v.passed) for v in verdicts)
    n_failed = len(regressions) + len(harness)
    print(f"\nupstream suites on CPython {platform.python_version()} in "
          f"{time.monotonic() - t0:.0f}s: {len(listed)} listed, {len(flaky)} flaky, "
          f"{len(stale)} stale, {len(harness)} harness error(s)")
    print(f"{n_passed} passed, {n_failed} failed")
    return 1 if opts.ci and n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
