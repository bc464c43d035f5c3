"""What the runners of other projects' test suites share: `conformance/run.py` (CPython's
test_asyncio) and `upstream/run.py` (uvloop's and anyio's suites).

A *job* is one test module on one loop, run in worker subprocesses. A worker writes one JSON
line per event (``tests``: every id it has; ``start``/``end`` of a test with its worst
outcome; ``fixture`` for a failing class/module fixture; ``note``; ``meta``, a dict merged
into `ModuleRun.meta`; ``done``) to a file the parent reads, and runs every test under a
``faulthandler.dump_traceback_later(exit=True)`` watchdog, so a hang that holds the GIL still
ends the worker. When a worker dies in a test
(hang, crash, escaped KeyboardInterrupt) the parent records that test and starts a new worker
for the same job that skips every test already recorded: one hang costs one test. Jobs have a
per-job and a whole-run deadline; Ctrl-C/SIGTERM kill every live worker's process group.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Outcomes a worker records, from best to worst; a test's outcome is the worst it got
# (subtests, errors in tearDown after a failure...).
PASSING = ("pass", "xfail")
SEVERITY = {"pass": 0, "xfail": 0, "skip": 1, "xpass": 2, "fail": 3, "error": 4}

# A worker's exit status after a KeyboardInterrupt/SystemExit escaped a test (recorded).
ESCAPED = 3


class Sink:
    """A worker's event stream: one JSON object per line, flushed at once."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def emit(self, **event: Any) -> None:
        self._f.write(json.dumps(event) + "\n")
        self._f.flush()


def count_instances(cls: type) -> list[int]:
    """Wraps `cls.__init__` to count the instances made: ``[n]``, reset by the caller.
    Workers count the ferroloop loops a test made (the reports' ``on-ferro`` column)."""
    created = [0]
    original_init = cls.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        created[0] += 1
        original_init(self, *args, **kwargs)

    cls.__init__ = counting_init  # type: ignore[misc]
    return created


def iter_tests(suite: Any) -> Iterator[Any]:
    import unittest

    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def make_result_class() -> type:
    """The unittest result class of workers: records each test's worst outcome."""
    import unittest

    class RecordingResult(unittest.TestResult):
        """Records each test's worst outcome and streams start/end events."""

        def __init__(self, sink: Sink, timeout: float, created: list[int]) -> None:
            super().__init__()
            self.sink = sink
            self.timeout = timeout
            self.created = created
            self.current: dict[str, Any] | None = None
            self.current_test: Any = None
            self.last: dict[str, Any] | None = None  # the last test that ended

        def arm(self) -> None:
            import faulthandler

            faulthandler.dump_traceback_later(self.timeout, exit=True)

        def startTest(self, test: Any) -> None:
            super().startTest(test)
            self.arm()
            self.current_test = test
            # 3.10's IsolatedAsyncioTestCase makes its loop before startTest().
            made_before = getattr(test, "_asyncioTestLoop", None) is not None and (
                type(test._asyncioTestLoop).__module__.startswith("ferroloop"))
            self.current = {
                "id": test.id(),
                "outcome": "pass",
                "detail": None,
                "t0": time.monotonic(),
                "created0": self.created[0] - (1 if made_before else 0),
            }
            self.sink.emit(event="start", id=test.id())

        def stopTest(self, test: Any) -> None:
            cur = self.current
            if cur is not None:
                self.sink.emit(
                    event="end",
                    id=cur["id"],
                    outcome=cur["outcome"],
                    detail=cur["detail"],
                    duration=round(time.monotonic() - cur["t0"], 3),
                    ferro=self.created[0] > cur["created0"],
                )
            self.last = cur
            self.current = None
            self.current_test = None
            self.arm()
            super().stopTest(test)

        def _record(self, test: Any, outcome: str, detail: str | None) -> None:
            owner = getattr(test, "test_case", test)  # a _SubTest belongs to its test
            cur = self.current
            if cur is None or owner is not self.current_test:
                if outcome == "skip" and owner is test and hasattr(test, "_testMethodName"):
                    # 3.12+ skips a skipped test without startTest()/stopTest().
                    self.sink.emit(event="end", id=test.id(), outcome="skip", detail=detail,
                                   duration=0.0, ferro=False)
                    return
                # setUpClass/tearDownModule... errors (unittest's _ErrorHolder).
                if outcome not in PASSING:
                    self.sink.emit(event="fixture", id=str(test.id()), outcome=outcome,
                                   detail=detail)
                return
            if owner is not test and outcome == "skip":
                return  # a skipped subtest does not make the whole test skipped
            if SEVERITY[outcome] >= SEVERITY[cur["outcome"]]:
                cur["outcome"] = outcome
            if detail and outcome not in PASSING:
                prefix = f"[{test.id()}] " if owner is not test else ""
                cur["detail"] = ((cur["detail"] + "\n") if cur["detail"] else "") + prefix + detail

        def _format(self, err: Any, test: Any) -> str:
            # unittest's own formatting, which drops unittest's frames.
            return str(self._exc_info_to_string(err, test))  # type: ignore[attr-defined]

        def addSuccess(self, test: Any) -> None:
            super().addSuccess(test)
            self._record(test, "pass", None)

        def addError(self, test: Any, err: Any) -> None:
            super().addError(test, err)
            self._record(test, "error", self._format(err, test))

        def addFailure(self, test: Any, err: Any) -> None:
            super().addFailure(test, err)
            self._record(test, "fail", self._format(err, test))

        def addSkip(self, test: Any, reason: str) -> None:
            super().addSkip(test, reason)
            self._record(test, "skip", reason)

        def addExpectedFailure(self, test: Any, err: Any) -> None:
            super().addExpectedFailure(test, err)
            self._record(test, "xfail", None)

        def addUnexpectedSuccess(self, test: Any) -> None:
            super().addUnexpectedSuccess(test)
            self._record(test, "xpass", "unexpected success")

        def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
            super().addSubTest(test, subtest, err)
            if err is not None:
                outcome = "fail" if issubclass(err[0], test.failureException) else "error"
                self._record(subtest, outcome, self._format(err, test))

    return RecordingResult


@dataclass
class ModuleRun:
    module: str
    loop: str
    ids: list[str] = field(default_factory=list)  # every test the module has, in order
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    fixtures: dict[str, dict[str, Any]] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # a worker's ``meta`` events, merged
    workers: int = 0
    seconds: float = 0.0
    skipped_reason: str | None = None  # the whole module raised SkipTest

    def passed(self) -> set[str]:
        return {i for i, r in self.results.items() if r["outcome"] in PASSING}

    def outcome(self, test_id: str) -> str:
        r = self.results.get(test_id)
        return r["outcome"] if r else "missing"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# Workers alive now, killed (with their process groups) if the run is interrupted.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()
_STOP = threading.Event()


def _default_signals() -> None:
    # What a shell's background job or nohup leaves ignored, and tests send.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def in_pool(jobs: int, fn: Any, arglist: list[tuple[Any, ...]]) -> Iterator[tuple[Any, Any]]:
    """Yields (args, fn(*args)) as they finish, `jobs` at a time. On an exception here
    (Ctrl-C, SIGTERM) no new worker starts and the running ones are killed."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futs = {pool.submit(fn, *args): args for args in arglist}
        for fut in concurrent.futures.as_completed(futs):
            yield futs[fut], fut.result()
    except BaseException:
        _STOP.set()
        with _LIVE_LOCK:
            for proc in list(_LIVE):
                _kill(proc)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_job(module: str, loop: str, worker_cmd: list[str], opts: argparse.Namespace,
            workdir: Path, only: set[str] | None = None, tag: str = "",
            cwd: Path | None = None, never_run: set[str] | None = None) -> ModuleRun:
    """Runs one module on one loop, in as many workers as hangs and crashes need.

    `worker_cmd` starts a worker; the harness adds ``--out FILE --timeout SECONDS
    --skip-file FILE`` (ids already recorded, not to run again) and, with `only`,
    ``--only-file FILE``. `opts` gives ``timeout``, ``module_timeout``, ``total_timeout``,
    ``deadline`` (monotonic, or None), ``max_restarts`` and ``asyncio_debug``.
    `never_run`: ids skipped as if recorded (tests that would only hang).
    """
    run = ModuleRun(module, loop)
    jobdir = workdir / f"{module}.{loop}{tag}"
    jobdir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    deadline = t_start + opts.module_timeout
    limit = f"module timeout ({opts.module_timeout:g}s)"
    if opts.deadline is not None and opts.deadline < deadline:
        deadline, limit = opts.deadline, f"total timeout ({opts.total_timeout:g}s)"
    max_workers = opts.max_restarts + 1
    known: set[str] = set()
    while run.workers < max_workers:
        n = run.workers
        run.workers += 1
        out = jobdir / f"events.{n}.jsonl"
        log = jobdir / f"log.{n}.txt"
        skip_file = jobdir / f"skip.{n}.txt"
        skip = set(run.results) | (never_run or set())
        skip_file.write_text("\n".join(sorted(skip)))
        cmd = worker_cmd + ["--out", str(out), "--timeout", str(opts.timeout),
                            "--skip-file", str(skip_file)]
        if only is not None:
            only_file = jobdir / "only.txt"
            only_file.write_text("\n".join(sorted(only)))
            cmd += ["--only-file", str(only_file)]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            run.harness_errors.append(f"{limit} reached")
            break
        if _STOP.is_set():
            run.harness_errors.append("interrupted")
            break
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)  # both runs in the same mode
        if getattr(opts, "asyncio_debug", False):
            env["PYTHONASYNCIODEBUG"] = "1"
        rc: int | None
        with open(log, "wb") as logf:
            # Default signal dispositions, as under a terminal: a shell's background
            # job inherits SIGINT ignored (nohup: SIGHUP), and the suites' tests that
            # send them would hang.
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd=cwd or jobdir,
                                    env=env, start_new_session=True,
                                    preexec_fn=_default_signals)
            with _LIVE_LOCK:
                _LIVE.add(proc)
            try:
                rc = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _kill(proc)
                proc.wait()
                rc = None
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(proc)
        # Read what the worker managed to record.
        done = False
        in_progress: str | None = None
        new_results = 0
        try:
            lines = out.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            kind = ev.get("event")
            if kind == "tests":
                for i in ev["ids"]:
                    if i not in known:
                        known.add(i)
                        run.ids.append(i)
            elif kind == "start":
                in_progress = ev["id"]
            elif kind == "end":
                run.results[ev["id"]] = ev
                new_results += 1
                in_progress = None
            elif kind == "fixture":
                run.fixtures.setdefault(ev["id"], ev)
            elif kind == "note":
                if ev["text"] not in run.notes:
                    run.notes.append(ev["text"])
            elif kind == "meta":
                run.meta.update(ev["data"])
            elif kind == "module_skipped":
                run.skipped_reason = ev["reason"]
            elif kind == "done":
                done = True
        if done:
            break
        tail = _tail(log)
        if in_progress is None and rc is not None and rc != ESCAPED:
            # The worker died between tests (a class/module fixture, or before the first
            # test started): blame the next test it would have run, so the next worker
            # makes progress.
            in_progress = next((i for i in run.ids if i not in run.results
                                and i not in skip and (only is None or i in only)), None)
            if in_progress is not None:
                tail = "(died outside a test, before this one started)\n" + tail
        if in_progress is not None:
            if rc is None:
                outcome, what = "timeout", f"{limit} hit here"
            elif re.search(r"^Timeout \(\d+:\d\d:\d\d(\.\d+)?\)!$", tail, re.MULTILINE):
                outcome, what = "timeout", f"no progress for {opts.timeout}s"
            elif rc < 0:
                outcome, what = "crash", f"worker killed by signal {-rc}"
            else:
                outcome, what = "crash", f"worker exited with status {rc}"
            run.results[in_progress] = {
                "event": "end", "id": in_progress, "outcome": outcome, "summary": what,
                "detail": f"{what}; worker output tail:\n{tail}", "duration": None,
                "ferro": None,
            }
            new_results += 1
        if rc is None:
            run.harness_errors.append(f"{limit} reached")
            break
        if new_results == 0:
            run.harness_errors.append(
                f"worker exited with status {rc} without running a test; output tail:\n{tail}")
            break
    else:
        run.harness_errors.append(f"gave up after {max_workers} workers")
    run.seconds = time.monotonic() - t_start
    return run

def first_line_of_error(detail: str | None) -> str:
    if not detail:
        return ""
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    # The exception line is the last non-indented line of a traceback.
    for ln in reversed(lines):
        if not ln.startswith((" ", "\t")):
            return ln.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""

