#!/usr/bin/env python3
"""Run CPython's own `test.test_asyncio` modules against ferroloop.

Each module runs twice, in separate subprocesses of this interpreter: once on the stock
loop (the oracle) and once with ferroloop swapped in. A test that passes on the stock loop
but not on ferroloop is a *regression*. The report is a table per module (stock passes,
ferroloop passes, regressions), the regressions with their errors, and a last line of the
plain form ``N passed, M failed`` (passed: ferroloop passes among the stock passes;
failed: regressions not listed in ``expected_failures.txt``, plus one per module run the
harness could not finish, e.g. cut by ``--total-timeout``). Nothing is printed after it.

Usage (from the repository root, with the venv's interpreter)::

    .venvs/3.11/bin/python tests/conformance/run.py --ci           # CI gate, exit 1 on regressions
    .venvs/3.11/bin/python tests/conformance/run.py --all -j 2     # every test_asyncio module
    .venvs/3.11/bin/python tests/conformance/run.py --modules test_events,test_streams -v

Without ``--modules``/``--all`` the CI module set runs as a report (exit 0 whatever the
result); ``--ci`` is the same set with a strict exit status.

How ferroloop is swapped in (the ferroloop worker only; the stock worker patches nothing)
------------------------------------------------------------------------------------------
* **The policy.** ``asyncio.new_event_loop()``, ``asyncio.run()``, ``asyncio.Runner()``
  (without ``loop_factory``), ``asyncio.get_event_loop()`` and
  ``unittest.IsolatedAsyncioTestCase`` all get their loop from the event-loop policy, so
  the worker sets ``ferroloop.EventLoopPolicy()`` before importing the test module. Most
  modules call ``asyncio.set_event_loop_policy(None)`` in ``tearDown``/``tearDownModule``;
  asyncio then re-creates the policy lazily with ``from . import DefaultEventLoopPolicy``
  (``events._init_event_loop_policy``), so ``asyncio.DefaultEventLoopPolicy`` (and
  ``asyncio.unix_events.DefaultEventLoopPolicy``) are rebound to ``ferroloop.EventLoopPolicy``
  too. The worker checks that ``asyncio.new_event_loop()`` really returns a
  ``ferroloop.Loop`` before any test runs. ``asyncio.EventLoop`` (3.13+) is left alone: it
  names the stock platform class, and the only test that uses it
  (test_runners ``test_loop_factory_default_event_loop``) asserts just that.
* **Mixin loop factories.** test_events-style modules run one mixin of tests against
  several loops, each concrete class naming its loop in a hook: ``create_event_loop()``
  (test_events, test_sendfile, test_sock_lowlevel) or ``new_loop()`` (test_server,
  test_buffered_proto, test_sslproto). The worker overrides such a hook with one that
  returns ``ferroloop.new_event_loop()`` when the hook's source builds a stock
  ``SelectorEventLoop(...)``. The override is set *in place on the concrete test class*
  (not via a generated subclass), so test ids are identical in both runs and can be
  compared. We deliberately do **not** rebind ``asyncio.SelectorEventLoop`` itself:
  test_base_events, test_selector_events and test_unix_events construct or subclass it
  (at import time, with mock selectors) precisely to test its internals (``_selector``,
  ``_ready``, ``_process_events``...), which ferroloop does not have and need not have.
  Hooks that build something else are left alone, e.g. test_runners' ``new_loop()``, which
  returns a mocked ``BaseEventLoop``, and ``new_loop()`` in functional.py/test_ssl, which
  calls ``asyncio.new_event_loop()`` and so gets ferroloop through the policy anyway.
  Consequence: the Epoll/Poll/Select variants of a mixin all run the same ferroloop test,
  so a ferroloop bug there shows once per variant.
* **What never touches ferroloop.** Tests built on ``test_utils.TestCase.new_test_loop()``
  run on ``test_utils.TestLoop``, a stock ``BaseEventLoop`` with virtual time (a large part
  of test_tasks and test_futures), and tests that construct ``asyncio.BaseEventLoop`` or
  ``SelectorEventLoop`` directly stay on them. They pass in both runs without saying
  anything about ferroloop. The report therefore has an ``on-ferro`` column: how many of
  the stock-passing tests created at least one ferroloop loop while they ran (counted by
  wrapping ``ferroloop.Loop.__init__`` in the ferroloop worker; on 3.10, whose
  IsolatedAsyncioTestCase makes its loop just before the test starts, that loop counts).

Timeouts, crashes and retries
-----------------------------
(The machinery lives in ``tests/harness.py``, shared with ``tests/upstream/run.py``.)
Workers write one JSON line per event (test started, test finished) as they go, to a file
the parent reads. Every test (and the fixtures between tests) runs under a
``faulthandler.dump_traceback_later(timeout, exit=True)`` watchdog: a test that makes no
progress for ``--timeout`` seconds gets every thread's traceback dumped and the worker
killed from faulthandler's own C thread (this works even if the hang holds the GIL). The
parent then records that test as ``timeout`` (or ``crash`` if the worker died of a signal,
e.g. a segfault in the extension), and starts a new worker for the same module that skips
every test already recorded. So one hang costs one test, not the module. Each module's
run also has an overall ``--module-timeout``, and the whole run a ``--total-timeout``
(480s with ``--ci``, so a broken build fails CI in minutes); past them the worker's
process group is killed and the run reports a harness error. Ctrl-C/SIGTERM kill the
workers too. The CI set takes about 30s with ``-j 2``; ``--all`` about 75s.

Regressions are re-run once (``--retries``), alone in a fresh worker, on ferroloop; a test
that passes then is reported as *flaky* and counted as passed (the CPython suite has
timing-sensitive tests, and the two runs of a module share the machine).

The stock side runs once per interpreter
-----------------------------------------
Stock-loop results depend only on the interpreter build, its ``test`` package, this
harness and the options that change outcomes; they are kept under ``--stock-cache``
(default ``~/.cache/ferroloop/conformance/<key>/``, complete runs only) and reused, so a
run after a ferroloop change runs the ferroloop side alone. ``--no-stock-cache`` runs
both sides again.

Expected failures
-----------------
``expected_failures.txt`` next to this file: one test id per line (``test_tasks.Class.test``
or the full ``test.test_asyncio.`` form), then ``# one-line reason``. Only tests of the
stock loop's private internals belong there. Listed regressions don't fail ``--ci``;
listed tests that now pass are reported as stale. A listed test marked ``!not-run``
after its id is not run on ferroloop at all (it hangs there, and would only cost its
timeout).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import pkgutil
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from harness import (  # noqa: E402  (tests/harness.py, shared with upstream/run.py)
    ESCAPED,
    ModuleRun,
    Sink,
    count_instances,
    first_line_of_error,
    in_pool,
    iter_tests,
    make_result_class,
    run_job,
)

EXPECTED_FILE = HERE / "expected_failures.txt"
PREFIX = "test.test_asyncio."

CI_MODULES = (
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_pep492",
    "test_context",
    "test_runners",
    "test_threads",
    # networking (issue 3)
    "test_events",
    "test_streams",
    "test_sock_lowlevel",
    "test_server",
    "test_sendfile",
    "test_buffered_proto",
)

STOCK, FERRO = "stock", "ferroloop"
LOOPS = (STOCK, FERRO)

# Loop-factory hooks of mixin test classes (see the module docstring).
LOOP_HOOKS = ("create_event_loop", "new_loop")


def short_id(test_id: str) -> str:
    return test_id.removeprefix(PREFIX)


# ---------------------------------------------------------------------------------------
# Worker: runs one test module in this process and streams results as JSON lines.
# ---------------------------------------------------------------------------------------

def _install_ferroloop() -> list[int]:
    """Swap ferroloop in (see the module docstring); returns the loop-creation counter."""
    import asyncio
    import asyncio.unix_events
    import warnings

    import ferroloop
    from ferroloop import _loop

    created = count_instances(_loop.Loop)

    with warnings.catch_warnings():
        # 3.14+ deprecates the policy system: naming the policy classes warns.
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = ferroloop.EventLoopPolicy
        if sys.version_info >= (3, 14):
            # asyncio.DefaultEventLoopPolicy is a module __getattr__ that warns (tests
            # check it does) and returns this private name.
            asyncio.unix_events._DefaultEventLoopPolicy = policy
        else:
            asyncio.DefaultEventLoopPolicy = policy
            asyncio.unix_events.DefaultEventLoopPolicy = policy
        asyncio.set_event_loop_policy(policy())
        probe = asyncio.new_event_loop()
    try:
        if not isinstance(probe, ferroloop.Loop):
            raise SystemExit(f"conformance: swap failed, new_event_loop() gave {probe!r}")
    finally:
        probe.close()
    created[0] = 0
    return created


def _ferroloop_hook(self: Any) -> Any:
    import ferroloop

    return ferroloop.new_event_loop()


def _patch_loop_hooks(tests: Iterable[Any]) -> list[str]:
    """Point mixin loop hooks that build a stock SelectorEventLoop at ferroloop."""
    import inspect

    patched = []
    seen: set[type] = set()
    for test in tests:
        cls = type(test)
        if cls in seen:
            continue
        seen.add(cls)
        for hook in LOOP_HOOKS:
            fn = getattr(cls, hook, None)
            if fn is None or not callable(fn):
                continue
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            if "SelectorEventLoop(" in source:
                setattr(cls, hook, _ferroloop_hook)
                patched.append(f"{cls.__qualname__}.{hook}")
    return patched

def worker_main(args: argparse.Namespace) -> None:
    import faulthandler
    import warnings

    faulthandler.enable()
    if not sys.warnoptions:
        warnings.simplefilter("default")  # as unittest.main() does
    with open(args.out, "a", buffering=1, encoding="utf-8") as f:
        _worker_run(args, Sink(f))


def _worker_run(args: argparse.Namespace, sink: Sink) -> None:
    import faulthandler
    import unittest

    created = _install_ferroloop() if args.loop == FERRO else [0]

    skip: set[str] = set()
    only: set[str] | None = None
    if args.skip_file:
        skip = set(Path(args.skip_file).read_text().split())
    if args.only_file:
        only = set(Path(args.only_file).read_text().split())

    # Loading imports the module; the watchdog covers it too.
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    try:
        suite = unittest.defaultTestLoader.loadTestsFromName(PREFIX + args.module)
    except unittest.SkipTest as exc:  # e.g. test_windows_events: "Windows only"
        sink.emit(event="module_skipped", reason=str(exc))
        sink.emit(event="done")
        sys.stdout.flush()
        os._exit(0)
    tests = list(iter_tests(suite))
    if args.loop == FERRO:
        patched = _patch_loop_hooks(tests)
        if patched:
            sink.emit(event="note", text="ferroloop hooks: " + ", ".join(patched))
    sink.emit(event="tests", ids=[t.id() for t in tests])
    tests = [t for t in tests if t.id() not in skip and (only is None or t.id() in only)]

    result = make_result_class()(sink, args.timeout, created)
    try:
        unittest.TestSuite(tests).run(result)
    except (KeyboardInterrupt, SystemExit) as exc:  # what unittest lets out of a test
        # unittest lets KeyboardInterrupt out of a test, after stopTest() has recorded it
        # as passed; record it (again, the parent keeps the last record) as an error.
        cur = result.current or result.last
        if cur is not None:
            sink.emit(
                event="end",
                id=cur["id"],
                outcome="error",
                summary=f"{type(exc).__name__} escaped the test",
                detail="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                duration=round(time.monotonic() - cur["t0"], 3),
                ferro=created[0] > cur["created0"],
            )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ESCAPED)
    faulthandler.cancel_dump_traceback_later()
    sink.emit(event="done")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: a test that leaks a non-daemon thread must not hang us.
    os._exit(0)


# ---------------------------------------------------------------------------------------
# Parent: schedules workers, resumes after hangs/crashes, compares, reports.
# ---------------------------------------------------------------------------------------

def run_module(module: str, loop: str, opts: argparse.Namespace, workdir: Path,
               only: set[str] | None = None, tag: str = "") -> ModuleRun:
    """Runs one test_asyncio module on one loop (see harness.run_job)."""
    cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "--worker",
           "--loop", loop, "--module", module]
    never_run = opts.not_run if loop == FERRO else set()
    return run_job(module, loop, cmd, opts, workdir, only, tag, never_run=never_run)


def default_stock_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ferroloop" / "conformance"


def stock_cache_key(opts: argparse.Namespace) -> str:
    """What a stock-loop result depends on: the interpreter build, its test package, this
    harness, and the options that change outcomes. ferroloop plays no part in it."""
    h = hashlib.sha256()
    h.update(sys.version.encode())
    h.update(os.path.realpath(sys.base_prefix).encode())
    h.update(Path(__file__).read_bytes())
    h.update(repr((opts.asyncio_debug, opts.timeout)).encode())
    spec = importlib.util.find_spec("test.test_asyncio")
    for folder in spec.submodule_search_locations if spec else []:
        for path in sorted(Path(folder).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:24]


def load_cached_stock(cache: Path | None, module: str) -> ModuleRun | None:
    if cache is None:
        return None
    try:
        data = json.loads((cache / f"{module}.json").read_text())
        return ModuleRun(**data)
    except (OSError, ValueError, TypeError):
        return None


def store_cached_stock(cache: Path | None, run: ModuleRun) -> None:
    # Only complete runs without a hang or a crash: those come from a loaded machine as
    # often as from the test, and are worth running again.
    unsettled = any(r["outcome"] in ("timeout", "crash") for r in run.results.values())
    if cache is None or run.harness_errors or unsettled:
        return
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{run.module}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(run)))
    tmp.replace(cache / f"{run.module}.json")


def available_modules() -> list[str]:
    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                  if m.name.startswith("test_"))


def module_weight(module: str) -> int:
    spec = importlib.util.find_spec(PREFIX + module)
    try:
        return os.path.getsize(spec.origin) if spec and spec.origin else 0
    except OSError:
        return 0


NOT_RUN = "!not-run"


def load_expected(path: Path) -> tuple[dict[str, str], set[str]]:
    """The listed tests with their reasons, and those of them never run on ferroloop
    (marked `!not-run`: they hang there, and would only cost their timeout)."""
    expected: dict[str, str] = {}
    not_run: set[str] = set()
    if not path.exists():
        return expected, not_run
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, _, reason = line.partition("#")
        words, reason = head.split(), reason.strip()
        if not reason or not words or words[1:] not in ([], [NOT_RUN]):
            raise SystemExit(
                f"{path}:{n}: expected `test id [{NOT_RUN}]  # one-line reason`, got {raw!r}")
        expected[short_id(words[0])] = reason
        if words[1:]:
            not_run.add(PREFIX + short_id(words[0]))
    return expected, not_run

@dataclass
class Comparison:
    module: str
    stock: ModuleRun
    ferro: ModuleRun
    regressions: list[str] = field(default_factory=list)  # full test ids, in test order
    flaky: list[str] = field(default_factory=list)
    passed: int = 0
    exercised: int = 0


def compare(stock: ModuleRun, ferro: ModuleRun) -> Comparison:
    comp = Comparison(stock.module, stock, ferro)
    stock_passed = stock.passed()
    ferro_passed = ferro.passed()
    in_stock = set(stock.ids)
    order = stock.ids + [i for i in ferro.ids if i not in in_stock]
    for test_id in order:
        if test_id not in stock_passed:
            continue
        if test_id in ferro_passed:
            comp.passed += 1
            if ferro.results[test_id].get("ferro"):
                comp.exercised += 1
        else:
            comp.regressions.append(test_id)
    # A fixture (setUpClass, tearDownModule...) that fails only on ferroloop.
    for fid in ferro.fixtures:
        if fid not in stock.fixtures:
            comp.regressions.append(fid)
    return comp


def print_table(comps: list[Comparison], expected: dict[str, str]) -> None:
    header = ("module", "tests", "stock", "ferroloop", "on-ferro", "regress", "expected",
              "flaky", "time")
    rows = []
    tot = [0] * 7
    for c in comps:
        n_exp = sum(1 for r in c.regressions if short_id(r) in expected)
        vals = [len(c.stock.ids), len(c.stock.passed()), len(c.ferro.passed()), c.exercised,
                len(c.regressions), n_exp, len(c.flaky)]
        tot = [a + b for a, b in zip(tot, vals)]
        secs = f"{c.stock.seconds:.0f}s/{c.ferro.seconds:.0f}s"
        rows.append([c.module] + [str(v) for v in vals] + [secs])
    rows.append(["total"] + [str(v) for v in tot] + [""])
    widths = [max(len(r[i]) for r in rows + [list(header)]) for i in range(len(header))]

    def fmt(r: list[str] | tuple[str, ...]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else r[i].rjust(widths[i])
                         for i in range(len(r))).rstrip()

    print(fmt(header))
    print(fmt(["-" * w for w in widths]))
    for r in rows[:-1]:
        print(fmt(r))
    print(fmt(["-" * w for w in widths]))
    print(fmt(rows[-1]))
    print("(tests: tests in the module; stock/ferroloop: tests passed on each loop; on-ferro: "
          "stock-passing tests that created a ferroloop loop while passing on it; "
          "regress: stock passes that did not pass on ferroloop, after retries; "
          "time: stock/ferroloop wall time)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio modules on the stock loop and on "
                    "ferroloop and report the regressions.")
    ap.add_argument("--ci", action="store_true",
                    help="exit 1 on any regression not listed in expected_failures.txt; "
                         "alone, runs the CI module set")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--modules", help="comma-separated test_asyncio modules")
    sel.add_argument("--all", action="store_true", help="every test_asyncio module")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2,
                    help="worker processes at a time (default: CPU count)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds a test may run without progress (default 30; the slowest "
                         "test_asyncio test takes ~2.5s)")
    ap.add_argument("--module-timeout", type=float, default=900.0,
                    help="seconds one module may take on one loop, restarts included (default 900)")
    ap.add_argument("--total-timeout", type=float, default=None,
                    help="seconds for the whole run, workers are killed after that "
                         "(default: 480 with --ci, else none)")
    ap.add_argument("--max-restarts", type=int, default=25,
                    help="new workers per module after hangs/crashes (default 25)")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of each regression alone on ferroloop (default 1)")
    ap.add_argument("--expected", type=Path, default=EXPECTED_FILE,
                    help="expected failures file (default: expected_failures.txt here)")
    ap.add_argument("--asyncio-debug", action="store_true",
                    help="run both loops with PYTHONASYNCIODEBUG=1 (not CPython's default)")
    ap.add_argument("--json", type=Path, help="write every outcome and error to this file")
    ap.add_argument("--stock-cache", type=Path, default=default_stock_cache(),
                    help="where stock-loop results are kept, per interpreter build and test "
                         "package, so the stock side runs only when those change "
                         "(default: %(default)s)")
    ap.add_argument("--no-stock-cache", action="store_true",
                    help="run the stock side again, whatever the cache holds")
    ap.add_argument("--keep-logs", type=Path, help="keep worker logs in this directory")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print each regression's full error, not just its last line")
    # Worker mode (internal).
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loop", choices=LOOPS, help=argparse.SUPPRESS)
    ap.add_argument("--module", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--skip-file", help=argparse.SUPPRESS)
    ap.add_argument("--only-file", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)

    if opts.worker:
        worker_main(opts)
        return 0

    available = available_modules()
    if not available:
        print("conformance: this interpreter has no test.test_asyncio package", file=sys.stderr)
        print("0 passed, 1 failed")
        return 2
    if opts.all:
        modules = available
    elif opts.modules:
        modules = [m.strip() for m in opts.modules.split(",") if m.strip()]
        modules = [m if m.startswith("test_") else "test_" + m for m in modules]
        unknown = [m for m in modules if m not in available]
        if unknown:
            ap.error(f"no such test_asyncio module(s) on this Python: {', '.join(unknown)}")
    else:
        modules = list(CI_MODULES)
    absent = [m for m in modules if m not in available]
    modules = [m for m in modules if m in available]
    expected, opts.not_run = load_expected(opts.expected)
    strict = opts.ci
    if opts.total_timeout is None and opts.ci:
        opts.total_timeout = 900.0 if opts.all else 480.0
    opts.deadline = (time.monotonic() + opts.total_timeout) if opts.total_timeout else None

    py = f"CPython {platform.python_version()} ({sys.executable})"
    print(f"conformance: {len(modules)} test_asyncio module(s) on {py}, -j {opts.jobs}, "
          f"per-test timeout {opts.timeout:g}s", flush=True)
    if absent:
        print(f"  not on this Python, skipped: {', '.join(absent)}", flush=True)

    if opts.keep_logs:
        workdir = opts.keep_logs.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        cleanup = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ferroloop-conformance-"))
        cleanup = True

    t0 = time.monotonic()
    cache = None if opts.no_stock_cache else opts.stock_cache / stock_cache_key(opts)
    runs: dict[tuple[str, str], ModuleRun] = {}
    for m in modules:
        cached = load_cached_stock(cache, m)
        if cached is not None:
            runs[(m, STOCK)] = cached
    if runs:
        print(f"  stock-loop results of {len(runs)} module(s) from {cache} (this interpreter "
              "and test package ran them before; --no-stock-cache runs them again)", flush=True)
    jobs = sorted(((m, loop) for m in modules for loop in LOOPS if (m, loop) not in runs),
                  key=lambda j: -module_weight(j[0]))
    lock = threading.Lock()
    finished = [0]

    def job(m: str, loop: str) -> ModuleRun:
        r = run_module(m, loop, opts, workdir)
        if loop == STOCK:
            store_cached_stock(cache, r)
        with lock:
            finished[0] += 1
            extra = f", {r.workers} workers" if r.workers > 1 else ""
            errs = ""
            if r.harness_errors:
                errs = f", HARNESS ERROR: {r.harness_errors[0].splitlines()[0]}"
            print(f"  [{finished[0]}/{len(jobs)}] {m} on {loop}: {len(r.passed())}/{len(r.ids)} "
                  f"passed in {r.seconds:.1f}s{extra}{errs}", flush=True)
        return r

    def run_all() -> list[Comparison]:
        for (m, loop), r in in_pool(opts.jobs, job, jobs):
            runs[(m, loop)] = r
        comps = [compare(runs[(m, STOCK)], runs[(m, FERRO)]) for m in modules]

        # Re-run unexpected regressions alone on ferroloop; passing then means flaky.
        for attempt in range(opts.retries):
            todo = {c.module: {r for r in c.regressions
                               if short_id(r) not in expected and r in c.stock.results}
                    for c in comps}
            todo = {m: ids for m, ids in todo.items() if ids}
            if not todo:
                break
            print(f"  retrying {sum(len(v) for v in todo.values())} regression(s) on ferroloop",
                  flush=True)
            retry_jobs = [(m, FERRO, opts, workdir, ids, f".retry{attempt}")
                          for m, ids in todo.items()]
            for args, retry in in_pool(opts.jobs, run_module, retry_jobs):
                comp = next(c for c in comps if c.module == args[0])
                for test_id in retry.passed():
                    if test_id in comp.regressions:
                        comp.regressions.remove(test_id)
                        comp.flaky.append(test_id)
                        comp.passed += 1
                        if retry.results[test_id].get("ferro"):
                            comp.exercised += 1
        return comps

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        comps = run_all()
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ report
    skipped = [c for c in comps if c.stock.skipped_reason and not c.stock.ids]
    comps = [c for c in comps if c not in skipped]
    print()
    print_table(comps, expected)
    if skipped:
        print("modules that skip themselves here: " + ", ".join(
            f"{c.module} ({c.stock.skipped_reason})" for c in skipped))

    harness = [(c.module, loop_run.loop, e) for c in comps
               for loop_run in (c.stock, c.ferro) for e in loop_run.harness_errors]
    unexpected: list[tuple[str, str]] = []
    listed: list[tuple[str, str]] = []
    for c in comps:
        for test_id in c.regressions:
            (listed if short_id(test_id) in expected else unexpected).append((c.module, test_id))

    def describe(c: Comparison, test_id: str) -> tuple[str, str, str]:
        """(outcome, one-line headline, full detail) of a test's ferroloop run."""
        rec = c.ferro.results.get(test_id) or c.ferro.fixtures.get(test_id)
        if rec is None:
            return "missing", "not run on ferroloop (its class or module fixture failed?)", ""
        detail = rec.get("detail") or ""
        return rec["outcome"], rec.get("summary") or first_line_of_error(detail), detail

    by_module = {c.module: c for c in comps}
    if len(unexpected) > 5:
        causes: dict[str, int] = {}
        for module, test_id in unexpected:
            outcome, headline, _ = describe(by_module[module], test_id)
            key = re.sub(r"0x[0-9a-fA-F]+", "0x...", f"[{outcome}] {headline}")
            causes[key] = causes.get(key, 0) + 1
        print(f"\nregressions by error ({len(causes)} distinct):")
        for key, n in sorted(causes.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:5d}  {key}")
    if unexpected:
        print(f"\nregressions ({len(unexpected)}): pass on the stock loop, not on ferroloop")
        for module, test_id in unexpected:
            outcome, headline, detail = describe(by_module[module], test_id)
            print(f"  {short_id(test_id)}  [{outcome}] {headline}")
            if opts.verbose and detail:
                for ln in detail.rstrip().splitlines():
                    print(f"      {ln}")
    if listed:
        print(f"\nexpected failures ({len(listed)}), listed in {opts.expected.name}")
        for module, test_id in listed:
            outcome, _, _ = describe(by_module[module], test_id)
            print(f"  {short_id(test_id)}  [{outcome}]  # {expected[short_id(test_id)]}")
    flaky = [(c.module, t) for c in comps for t in c.flaky]
    if flaky:
        print(f"\nflaky ({len(flaky)}): failed on ferroloop, then passed when re-run alone")
        for module, test_id in flaky:
            outcome, headline, _ = describe(by_module[module], test_id)
            print(f"  {short_id(test_id)}  [first run: {outcome}] {headline}")
    stale = []
    for c in comps:
        ferro_passed = {short_id(i) for i in c.ferro.passed()}
        for test_id in expected:
            if test_id.split(".", 1)[0] == c.module and test_id in ferro_passed:
                stale.append(test_id)
    if stale:
        print(f"\nlisted in {opts.expected.name} but passing now (remove them):")
        for test_id in stale:
            print(f"  {test_id}")
    if harness:
        print("\nharness errors:")
        for module, loop, err in harness:
            print(f"  {module} on {loop}: {err}")
    notes = [(c.module, n) for c in comps for n in c.ferro.notes]
    if notes and opts.verbose:
        print("\nnotes:")
        for module, note in notes:
            print(f"  {module}: {note}")

    if opts.json:
        report = {
            "python": platform.python_version(),
            "modules": {
                c.module: {
                    "tests": len(c.stock.ids),
                    "stock_passed": len(c.stock.passed()),
                    "ferroloop_passed": len(c.ferro.passed()),
                    "on_ferro": c.exercised,
                    "regressions": [short_id(t) for t in c.regressions],
                    "flaky": [short_id(t) for t in c.flaky],
                    "harness_errors": c.stock.harness_errors + c.ferro.harness_errors,
                    "outcomes": {
                        short_id(i): {"stock": c.stock.outcome(i), "ferroloop": c.ferro.outcome(i)}
                        for i in c.stock.ids
                    },
                    "ferroloop_errors": {
                        short_id(i): (c.ferro.results.get(i) or c.ferro.fixtures.get(i)
                                      or {}).get("detail")
                        for i in c.regressions
                    },
                }
                for c in comps
            },
        }
        opts.json.write_text(json.dumps(report, indent=1))

    n_passed = sum(c.passed for c in comps)
    n_failed = len(unexpected) + len(harness)  # a module run that could not finish fails too
    print(f"\nconformance on CPython {platform.python_version()}: {len(modules)} module(s) in "
          f"{time.monotonic() - t0:.0f}s; {len(listed)} expected failure(s), "
          f"{len(flaky)} flaky, {len(harness)} harness error(s)")
    print(f"{n_passed} passed, {n_failed} failed")
    if strict and n_failed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
