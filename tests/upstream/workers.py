"""Workers of `run.py`: run one test module of an upstream suite on one loop, in this process,
streaming per-test JSON events (see tests/harness.py).

    python workers.py uvloop --loop ferroloop --module test_tcp --sdist DIR ...
    python workers.py anyio  --loop stock --module tests/test_sockets.py --sdist DIR ...

The shims, all of them (nothing else of either suite is changed):

* uvloop's suite is unittest. Its classes come in pairs built by `uvloop/_testbase.py`:
  `UVTestCase` (`new_loop()` gives a uvloop loop, `new_policy()` uvloop's policy) and
  `AIOTestCase` (asyncio's). On ``--loop ferroloop`` both hooks of both base classes give
  ferroloop (`ferroloop.new_event_loop()`, `ferroloop.EventLoopPolicy()`); on ``--loop
  stock`` the UV hooks give the stock loop and policy (the AIO ones already do); on ``--loop
  uvloop`` nothing is patched and only the UV classes run. A string class attribute that
  names ``uvloop.new_event_loop()`` as code for a child process (test_signals' `NEW_LOOP`)
  names the loop under test instead. The installed uvloop is imported before the sdist goes
  on `sys.path`, so `from uvloop import _testbase` is the installed package's.
* anyio's suite is pytest, with its own configuration (pyproject.toml: warnings are errors,
  20s pytest-timeout...). Of its `anyio_backend` parameters only plain ``asyncio`` runs
  (``asyncio+uvloop``, ``asyncio+eager`` and ``trio`` test other loops or libraries); on
  ``--loop ferroloop`` that parameter's options get ``loop_factory=ferroloop.new_event_loop``
  (ids unchanged). Tests marked ``network`` (Internet access) are recorded as skipped, and
  so, on a host whose ``localhost`` has no IPv6 address, are the IPv6 variants of
  `TestTCPStream`: their `server_sock` fixture binds ``("localhost", 0)`` and fails on every
  loop, leaking the socket it made, whose ResourceWarning (an error there) then fails
  whichever later test is running when the garbage collector finds it.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import (  # noqa: E402
    ESCAPED,
    SEVERITY,
    Sink,
    count_instances,
    iter_tests,
    make_result_class,
)

STOCK, FERRO, UVLOOP = "stock", "ferroloop", "uvloop"


def _ids(path: str | None) -> set[str]:
    return set(Path(path).read_text().split("\n")) - {""} if path else set()


def _count_ferroloop_loops() -> list[int]:
    from ferroloop import _loop

    return count_instances(_loop.Loop)


def _finish(sink: Sink, status: int = 0) -> None:
    faulthandler.cancel_dump_traceback_later()
    if status == 0:
        sink.emit(event="done")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter shutdown: a test that leaks a non-daemon thread must not hang us.
    os._exit(status)


# ---------------------------------------------------------------------------------------
# uvloop's suite (unittest)
# ---------------------------------------------------------------------------------------


def _patch_uvloop_testbase(loop: str) -> None:
    import asyncio

    import ferroloop
    from uvloop import _testbase as tb

    if loop == FERRO:
        for base in (tb.UVTestCase, tb.AIOTestCase):
            base.new_loop = lambda self: ferroloop.new_event_loop()  # type: ignore[method-assign]
            base.new_policy = lambda self: ferroloop.EventLoopPolicy()  # type: ignore[method-assign]
    elif loop == STOCK:
        tb.UVTestCase.new_loop = lambda self: asyncio.new_event_loop()  # type: ignore[method-assign]
        tb.UVTestCase.new_policy = (  # type: ignore[method-assign]
            lambda self: asyncio.DefaultEventLoopPolicy())


# What a child process's code builds instead of uvloop.new_event_loop(), per loop.
_CHILD_LOOP = {STOCK: "asyncio.new_event_loop()",
               FERRO: "__import__('ferroloop').new_event_loop()"}


def uvloop_main(args: argparse.Namespace, sink: Sink) -> None:
    import unittest

    import uvloop  # the installed package, before the sdist (its uvloop is unbuilt) is on the path

    sys.path.insert(0, args.sdist)
    from uvloop import _testbase as tb

    if not uvloop.__file__ or Path(args.sdist) in Path(uvloop.__file__).parents:
        raise SystemExit(f"upstream: imported the sdist's uvloop, not the installed one: {uvloop}")
    created = _count_ferroloop_loops() if args.loop == FERRO else [0]
    _patch_uvloop_testbase(args.loop)

    faulthandler.dump_traceback_later(args.timeout, exit=True)
    suite = unittest.defaultTestLoader.loadTestsFromName("tests." + args.module)
    tests = list(iter_tests(suite))
    groups: dict[str, str] = {}
    for t in tests:
        cls = type(t)
        groups[t.id()] = ("uv" if issubclass(cls, tb.UVTestCase) else
                          "aio" if issubclass(cls, tb.AIOTestCase) else "other")
        if args.loop in _CHILD_LOOP:
            for name, value in list(vars(cls).items()):
                if value == "uvloop.new_event_loop()":
                    setattr(cls, name, _CHILD_LOOP[args.loop])
    if args.loop == UVLOOP:
        tests = [t for t in tests if groups[t.id()] != "aio"]
    sink.emit(event="meta", data={"groups": groups})
    sink.emit(event="tests", ids=[t.id() for t in tests])
    skip = _ids(args.skip_file) | _ids(args.deselect_file)
    only = _ids(args.only_file) or None
    tests = [t for t in tests if t.id() not in skip and (only is None or t.id() in only)]

    result = make_result_class()(sink, args.timeout, created)
    try:
        unittest.TestSuite(tests).run(result)
    except (KeyboardInterrupt, SystemExit) as exc:
        # unittest lets these out of a test after stopTest() recorded it as passed.
        cur = result.current or result.last
        if cur is not None:
            sink.emit(event="end", id=cur["id"], outcome="error",
                      summary=f"{type(exc).__name__} escaped the test",
                      detail="".join(traceback.format_exception(type(exc), exc,
                                                                exc.__traceback__)),
                      duration=round(time.monotonic() - cur["t0"], 3),
                      ferro=created[0] > cur["created0"])
        _finish(sink, ESCAPED)
    _finish(sink)


# ---------------------------------------------------------------------------------------
# anyio's suite (pytest)
# ---------------------------------------------------------------------------------------


def _resolves_ipv6(host: str) -> bool:
    try:
        return bool(socket.getaddrinfo(host, 0, socket.AF_INET6, socket.SOCK_STREAM))
    except OSError:
        return False


def _plain_asyncio(backend: Any) -> bool:
    """Whether an `anyio_backend` parameter is asyncio on the stock loop factory."""
    if isinstance(backend, tuple):
        name, options = backend
        return bool(name == "asyncio" and "loop_factory" not in options
                    and not options.get("use_uvloop"))
    return bool(backend == "asyncio")


class AnyioPlugin:
    """Selects, patches and records anyio's tests (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, sink: Sink) -> None:
        self.args = args
        self.sink = sink
        self.created = [0]
        self.current: dict[str, Any] | None = None

    def pytest_configure(self, config: Any) -> None:
        # Not before: pytest marks the modules of installed plugins (ferroloop's own is one)
        # for assertion rewriting, and warns (an error, in anyio's configuration) when one
        # was imported before it could.
        if self.args.loop == FERRO:
            self.created = _count_ferroloop_loops()

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        import ferroloop

        ipv6_localhost = _resolves_ipv6("localhost")
        kept, dropped, unrun = [], [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            params = callspec.params if callspec else {}
            backend = params.get("anyio_backend")
            if backend is not None and not _plain_asyncio(backend):
                dropped.append(item)
            elif item.get_closest_marker("network") is not None:
                unrun.append((item, "marked network: needs Internet access"))
            elif (not ipv6_localhost and "::TestTCPStream::" in item.nodeid
                  and params.get("family") == socket.AF_INET6):
                unrun.append((item, "this host's localhost has no IPv6 address (see workers.py)"))
            else:
                kept.append(item)
        self.sink.emit(event="tests", ids=[i.nodeid for i in kept] + [i.nodeid for i, _ in unrun])
        for item, why in unrun:
            self.sink.emit(event="end", id=item.nodeid, outcome="skip", detail=why, ferro=False)
        network = [i for i, _ in unrun]
        skip = _ids(self.args.skip_file) | _ids(self.args.deselect_file)
        only = _ids(self.args.only_file) or None
        selected = []
        for item in kept:
            if item.nodeid in skip or (only is not None and item.nodeid not in only):
                dropped.append(item)
            else:
                selected.append(item)
        if self.args.loop == FERRO:
            for item in selected:
                callspec = getattr(item, "callspec", None)
                if callspec is not None and "anyio_backend" in callspec.params:
                    # ("asyncio", {options}), or just "asyncio" where a test parametrizes
                    # the fixture itself.
                    backend = callspec.params["anyio_backend"]
                    name, options = backend if isinstance(backend, tuple) else (backend, {})
                    callspec.params["anyio_backend"] = (
                        name, {**options, "loop_factory": ferroloop.new_event_loop})
        config.hook.pytest_deselected(items=dropped + network)
        items[:] = selected

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        faulthandler.dump_traceback_later(self.args.timeout, exit=True)
        self.current = {"id": nodeid, "outcome": "pass", "detail": None,
                        "t0": time.monotonic(), "created0": self.created[0]}
        self.sink.emit(event="start", id=nodeid)

    def pytest_runtest_logreport(self, report: Any) -> None:
        cur = self.current
        if cur is None or report.nodeid != cur["id"]:
            return
        xfail = hasattr(report, "wasxfail")
        if report.passed:
            outcome = "xpass" if xfail else "pass"
        elif report.skipped:
            outcome = "xfail" if xfail else "skip"
        elif report.when == "call":
            outcome = "fail"
        else:
            outcome = "error"
        if SEVERITY[outcome] >= SEVERITY[cur["outcome"]]:
            cur["outcome"] = outcome
        if outcome not in ("pass", "xfail"):
            text = report.longreprtext if outcome != "skip" else str(report.longrepr[-1])
            prefix = f"[{report.when}] "
            cur["detail"] = ((cur["detail"] + "\n") if cur["detail"] else "") + prefix + text

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        cur = self.current
        if cur is not None:
            self.sink.emit(event="end", id=cur["id"], outcome=cur["outcome"],
                           detail=cur["detail"], duration=round(time.monotonic() - cur["t0"], 3),
                           ferro=self.created[0] > cur["created0"])
        self.current = None
        faulthandler.dump_traceback_later(self.args.timeout, exit=True)


def anyio_main(args: argparse.Namespace, sink: Sink) -> None:
    import pytest

    plugin = AnyioPlugin(args, sink)
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    os.chdir(args.sdist)
    argv = ["-q", "-p", "no:cacheprovider", "-p", "no:ferroloop", "--rootdir", args.sdist,
            "-c", str(Path(args.sdist) / "pyproject.toml"), args.module]
    rc = pytest.main(argv, plugins=[plugin])
    # 0: all passed; 1: some failed (recorded); 5: nothing selected.
    if rc not in (0, 1, 5):
        print(f"upstream: pytest exited with status {rc}", file=sys.stderr)
        _finish(sink, int(rc) or 2)
    _finish(sink)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", choices=("uvloop", "anyio"))
    ap.add_argument("--loop", choices=(STOCK, FERRO, UVLOOP), required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--sdist", required=True)
    ap.add_argument("--deselect-file", help="ids listed `skip` in the expectations file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--skip-file")
    ap.add_argument("--only-file")
    args = ap.parse_args()
    faulthandler.enable()
    if args.suite == "uvloop" and not sys.warnoptions:
        warnings.simplefilter("default")  # as unittest.main() does
    with open(args.out, "a", buffering=1, encoding="utf-8") as f:
        sink = Sink(f)
        (uvloop_main if args.suite == "uvloop" else anyio_main)(args, sink)


if __name__ == "__main__":
    main()
