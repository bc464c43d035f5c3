"""`ferroloop.detect_blocking()`: the blocking detector.

FERROLOOP ONLY: the stock loop has no such API (asyncio's nearest is debug mode's
slow-callback warning, after the fact and without a stack), so these run on ferroloop.
Thresholds are generous against the blocking they detect, and nothing here asserts an
upper bound on time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import time
from collections.abc import Iterator

import ferroloop
import pytest


@pytest.fixture
def floop() -> Iterator[ferroloop.Loop]:
    lp = ferroloop.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def _watch_threads(expect: int | None = None) -> int:
    """How many watchdog threads run (a new thread names itself once it runs: waits up
    to 5 s for `expect`)."""
    deadline = time.monotonic() + 5
    while True:
        n = _count_watch_threads()
        if expect is None or n == expect or time.monotonic() > deadline:
            return n
        time.sleep(0.01)


def _count_watch_threads() -> int:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names.count("ferroloop-watch")


def _lines(report) -> list[str]:
    return [f.line for f in report.frames]


def test_sleeping_task_reported_once_with_its_stack(floop):
    """FERROLOOP ONLY: a task that calls time.sleep(0.3) is reported once, with its name,
    the sleeping frame and the episode's full duration."""
    reports = []

    async def sleeper():
        await asyncio.sleep(0)
        time.sleep(0.3)

    async def main():
        with ferroloop.detect_blocking(threshold=0.1, callback=reports.append):
            await asyncio.create_task(sleeper(), name="sleeper")
            await asyncio.sleep(0.05)

    floop.run_until_complete(main())
    assert len(reports) == 1
    r = reports[0]
    assert r.task_name == "sleeper" and r.task is not None
    assert r.task.get_name() == "sleeper"
    assert r.captured and not r.ongoing
    assert "time.sleep(0.3)" in _lines(r)
    assert r.frames[-1].name == "sleeper"
    assert [f.name for f in r.coroutine_frames] == ["sleeper"]
    assert len(r.awaited_by) == 1  # main's task
    assert r.duration >= 0.3
    assert r.captured_after >= 0.1
    assert r.threshold == 0.1
    text = str(r)
    assert "blocked for" in text and "'sleeper'" in text and "time.sleep(0.3)" in text
    assert repr(r).startswith("<BlockingReport")


def test_report_goes_to_the_asyncio_logger(floop, caplog):
    """FERROLOOP ONLY: without a callback the report is a warning on asyncio's logger."""

    async def main():
        detector = ferroloop.detect_blocking(threshold=0.05)
        time.sleep(0.02)  # under the threshold: nothing
        await asyncio.sleep(0)
        time.sleep(0.15)
        await asyncio.sleep(0)
        detector.stop()
        return detector

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        detector = floop.run_until_complete(main())
    # (In debug mode asyncio's own slow-callback warnings come too.)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and "Event loop blocked" in r.getMessage()
    ]
    assert len(messages) == 1
    assert messages[0].startswith("Event loop blocked for")
    assert "time.sleep(0.15)" in messages[0]
    assert detector.reports == 1


def test_cpu_bound_callback_reported(floop):
    """FERROLOOP ONLY: a plain callback spinning in Python is reported while it spins
    (the watchdog gets the GIL at a switch interval), with no task."""
    reports = []

    def spin():
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    detector = ferroloop.detect_blocking(floop, 0.1, callback=reports.append)
    floop.call_soon(spin)
    floop.call_soon(floop.stop)
    floop.run_forever()
    detector.stop()
    assert len(reports) == 1
    r = reports[0]
    assert r.task is None and r.task_name is None
    assert r.captured
    assert any(f.name == "spin" for f in r.frames)
    assert "spin" in (r.handle or "")
    assert r.duration >= 0.3
    assert "by a callback" in str(r)


def test_nothing_reported_under_the_threshold(floop):
    """FERROLOOP ONLY: callbacks shorter than the threshold are never reported."""
    reports = []

    async def main():
        with ferroloop.detect_blocking(threshold=0.3, callback=reports.append) as d:
            for _ in range(5):
                time.sleep(0.05)
                await asyncio.sleep(0)
            await asyncio.sleep(0.4)  # waiting in the poller is not blocking
        return d

    d = floop.run_until_complete(main())
    assert reports == [] and d.reports == 0


def test_c_call_holding_the_gil_reported_when_it_returns(floop):
    """FERROLOOP ONLY: a C call that holds the GIL lets the watchdog in only when it
    returns: the episode is still reported, with its duration."""
    reports = []
    data = [float((i * 7919) % 100_003) for i in range(500_000)]

    def hold_gil():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            sorted(data)  # one C call holding the GIL for a while

    detector = ferroloop.detect_blocking(floop, 0.05, callback=reports.append)
    floop.call_soon(hold_gil)
    floop.call_soon(floop.stop)
    floop.run_forever()
    detector.stop()
    assert len(reports) == 1
    assert reports[0].duration >= 0.2


def test_detector_thread_stops_with_stop_and_close(floop):
    """FERROLOOP ONLY: the watchdog thread never outlives stop() or the loop's close."""
    base = _watch_threads()
    d1 = ferroloop.detect_blocking(floop, 0.1)
    d2 = ferroloop.detect_blocking(floop, 0.2)
    assert d1.is_running() and d2.is_running()
    assert _watch_threads(base + 2) == base + 2
    d1.stop()
    d1.stop()  # idempotent
    assert not d1.is_running()
    assert _watch_threads() == base + 1
    floop.close()
    assert not d2.is_running()
    assert _watch_threads() == base
    assert "stopped" in repr(d2)


def test_detector_objects_are_collected(floop):
    """FERROLOOP ONLY: a stopped detector leaves nothing alive behind it."""
    import weakref

    d = ferroloop.detect_blocking(floop, 0.1)
    ref = weakref.ref(d)
    d.stop()
    del d
    gc.collect()
    assert ref() is None


def test_stop_from_the_report_callback(floop):
    """FERROLOOP ONLY: stop() from inside the callback (the watchdog's own thread) only
    asks it to stop, and the thread ends."""
    reports = []
    holder = {}

    def on_report(report):
        reports.append(report)
        holder["d"].stop()

    holder["d"] = ferroloop.detect_blocking(floop, 0.05, callback=on_report)

    def block():
        time.sleep(0.1)

    for _ in range(2):
        floop.call_soon(block)
    floop.call_soon(floop.stop)
    floop.run_forever()
    deadline = time.monotonic() + 5
    while holder["d"].is_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not holder["d"].is_running()
    assert len(reports) == 1


def test_failing_callback_is_logged(floop, caplog):
    """FERROLOOP ONLY: an exception in the report callback goes to asyncio's logger."""

    def broken(report):
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        detector = ferroloop.detect_blocking(floop, 0.05, callback=broken)
        floop.call_soon(time.sleep, 0.1)
        floop.call_soon(floop.stop)
        floop.run_forever()
        detector.stop()
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "boom" in str(errors[0].exc_info[1])


@pytest.mark.parametrize(
    ("threshold", "exc"),
    [("0.1", TypeError), (None, TypeError), (True, TypeError), (0, ValueError),
     (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError)],
)  # fmt: skip
def test_bad_threshold(floop, threshold, exc):
    """FERROLOOP ONLY: TypeError for a non-number, ValueError for a non-positive one."""
    with pytest.raises(exc):
        ferroloop.detect_blocking(floop, threshold)
    assert floop._detectors == []


def test_bad_arguments(floop):
    """FERROLOOP ONLY: the loop must be a ferroloop loop, running if not given, open;
    the callback callable."""
    with pytest.raises(TypeError):
        ferroloop.detect_blocking(floop, 0.1, callback=42)
    stock = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(TypeError):
            ferroloop.detect_blocking(stock)
    finally:
        stock.close()
    with pytest.raises(RuntimeError):
        ferroloop.detect_blocking()  # no running loop
    floop.close()
    with pytest.raises(RuntimeError):
        ferroloop.detect_blocking(floop)
    assert floop._detectors == []


def test_episode_in_progress_reported_at_stop(floop):
    """FERROLOOP ONLY: stopping while the loop is still blocked reports the episode so
    far, marked ongoing."""
    import threading

    reports = []
    detector = ferroloop.detect_blocking(floop, 0.05, callback=reports.append)
    threading.Timer(0.2, detector.stop).start()
    floop.call_soon(time.sleep, 0.5)
    floop.call_soon(floop.stop)
    floop.run_forever()
    assert len(reports) == 1
    assert reports[0].ongoing
    assert 0.05 <= reports[0].duration
    assert "still blocking" in str(reports[0])


def test_dropped_loop_stops_its_detector():
    """FERROLOOP ONLY: the detector does not keep its loop alive: a loop dropped unclosed
    is collected, closes itself (with asyncio's ResourceWarning) and stops the detector."""
    import warnings
    import weakref

    lp = ferroloop.new_event_loop()
    detector = ferroloop.detect_blocking(lp, 0.1)
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        gc.collect()
    assert ref() is None
    assert not detector.is_running() and detector.loop is None
