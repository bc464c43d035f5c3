"""The blocking detector (`detect_blocking()`) and its reports.

The watchdog thread is Rust (`_core.Watchdog`, src/watchdog.rs): it watches the loop's
callback sequence number and phase without the GIL and calls back into this module only for
an episode past the threshold: `_capture` (with the GIL, while the loop still blocks if it
can) and `_report` (once the episode is over). Nothing here runs per callback.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import math
import sys
import traceback
import weakref
from asyncio.log import logger
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from . import _core

_COROUTINE_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


class BlockingReport:
    """One blocking episode: what ran, for how long, and its stack while it blocked."""

    duration: float
    """Seconds the loop was blocked (a lower bound, short by at most a tenth of the
    threshold); up to the detector's stop() if it was still blocked then."""
    threshold: float
    ongoing: bool
    """Still blocking when the detector stopped."""
    task: asyncio.Task[Any] | None
    """The task whose step blocked, or None (a plain callback, or the loop's own work)."""
    task_name: str | None
    handle: str | None
    """What ran, as asyncio's slow-callback warning names it (the task for a task step)."""
    frames: traceback.StackSummary
    """The loop thread's stack while it blocked, from the callback down to the blocking
    call (most recent call last). Empty if no stack could be taken while it blocked."""
    coroutine_frames: traceback.StackSummary
    """The frames of `frames` that belong to coroutines: the task's coroutine stack."""
    awaited_by: list[str]
    """Names of the tasks that await this one."""
    created: traceback.StackSummary | None
    """Where the task was created, when known (debug mode records it)."""
    captured: bool
    """Whether `frames` were taken while the loop was still blocked."""
    captured_after: float
    """Seconds into the episode at which the stack was taken."""

    def __init__(self, snapshot: _Snapshot, duration: float, ongoing: bool) -> None:
        self.duration = duration
        self.threshold = snapshot.threshold
        self.ongoing = ongoing
        self.task = snapshot.task
        self.task_name = snapshot.task_name
        self.handle = snapshot.handle
        self.frames = snapshot.frames
        self.coroutine_frames = snapshot.coroutine_frames
        self.awaited_by = snapshot.awaited_by
        self.created = snapshot.created
        self.captured = snapshot.captured
        self.captured_after = snapshot.captured_after

    def __repr__(self) -> str:
        who = f" task={self.task_name!r}" if self.task_name is not None else ""
        return f"<BlockingReport {self.duration:.3f}s{who}>"

    def __str__(self) -> str:
        still = " and still blocking" if self.ongoing else ""
        if self.task_name is not None:
            what = f"task {self.task_name!r}"
        elif self.handle is not None:
            what = "a callback"
        else:
            what = "a callback or the loop's own work between callbacks"
        lines = [
            f"Event loop blocked for {self.duration:.3f} seconds{still} "
            f"(threshold {self.threshold:g}) by {what}"
        ]
        if self.handle is not None:
            lines.append(f"Executing {self.handle}")
        if self.task_name is not None:
            if self.awaited_by:
                lines.append("Awaited by: " + ", ".join(repr(n) for n in self.awaited_by))
            if self.coroutine_frames:
                chain = " -> ".join(f.name for f in self.coroutine_frames)
                lines.append(f"Coroutine stack: {chain}")
            if self.created:
                lines.append("Task created at (most recent call last):")
                lines.extend(_indent(self.created.format()))
            else:
                lines.append("Task created at: unknown (debug mode records it)")
        if self.frames:
            lines.append(
                f"Stack of the blocking call, taken {self.captured_after:.3f} s into it "
                "(most recent call last):"
            )
            lines.extend(_indent(self.frames.format()))
        else:
            lines.append(
                "No stack: the loop thread held the GIL until the callback returned "
                "(a C call that does not release it)"
            )
        return "\n".join(lines)


def _indent(chunks: list[str]) -> list[str]:
    return [line for chunk in chunks for line in chunk.rstrip("\n").split("\n")]


class _Snapshot:
    """What `_capture` took while the loop blocked, for the report."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.task: asyncio.Task[Any] | None = None
        self.task_name: str | None = None
        self.handle: str | None = None
        self.frames = traceback.StackSummary()
        self.coroutine_frames = traceback.StackSummary()
        self.awaited_by: list[str] = []
        self.created: traceback.StackSummary | None = None
        self.captured = False
        self.captured_after = 0.0


def _callback_frames(frame: FrameType | None) -> list[FrameType]:
    """The stack from `frame` outwards, cut at the loop: callbacks run from Rust, so the
    frames below the innermost `Loop.run_forever` are the loop's callers, not the callback."""
    from ._loop import Loop

    run_forever = Loop.run_forever.__code__
    frames = []
    while frame is not None:
        if frame.f_code is run_forever:
            break
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return frames


def _task_of(handle: Any) -> asyncio.Task[Any] | None:
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    return owner if isinstance(owner, asyncio.Task) else None


def _created(task: asyncio.Task[Any]) -> traceback.StackSummary | None:
    tb = getattr(task, "_source_traceback", None)
    if tb:
        return traceback.StackSummary.from_list(tb)
    origin = getattr(task.get_coro(), "cr_origin", None)
    if origin:
        return traceback.StackSummary.from_list(
            [(file, line, name, None) for file, line, name in reversed(origin)]
        )
    return None


class BlockingDetector:
    """A running blocking detector (see `ferroloop.detect_blocking`)."""

    def __init__(
        self,
        loop: Any,
        threshold: float,
        callback: Callable[[BlockingReport], object] | None,
    ) -> None:
        self.threshold = threshold
        self.reports = 0
        self._callback = callback
        # Weak: the running thread keeps this object alive, and must not keep the loop
        # alive (an unclosed loop that is dropped closes itself, stopping its detectors).
        self._loop_ref = weakref.ref(loop)
        # The watchdog wakes ten times per threshold: durations are short by at most that.
        interval = min(max(threshold / 10, 0.001), 0.1)
        self._watchdog = _core.Watchdog(loop, threshold, interval, self._capture, self._report)
        loop._detectors.append(self)
        _live.add(self)

    @property
    def loop(self) -> Any:
        """The loop watched (None once it is gone)."""
        return self._loop_ref()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<BlockingDetector threshold={self.threshold:g} {state} reports={self.reports}>"

    def is_running(self) -> bool:
        """Whether the watchdog thread is running."""
        return bool(self._watchdog.is_alive())

    def stop(self) -> None:
        """Stop watching; an episode in progress is reported first. Idempotent."""
        self._watchdog.stop()
        detectors = getattr(self.loop, "_detectors", [])
        if self in detectors:
            detectors.remove(self)

    def __enter__(self) -> BlockingDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Called by the watchdog thread, with the GIL.

    def _capture(self, blocking: bool, handle: Any, ident: int, elapsed: float) -> _Snapshot:
        snap = _Snapshot(self.threshold)
        snap.captured_after = elapsed
        loop = self._loop_ref()
        if not blocking or loop is None:
            return snap
        snap.captured = True
        frames = _callback_frames(sys._current_frames().get(ident))
        snap.frames = traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
        snap.coroutine_frames = traceback.StackSummary.from_list(
            [s for f, s in zip(frames, snap.frames) if f.f_code.co_flags & _COROUTINE_FLAGS]
        )
        del frames
        try:
            task = asyncio.current_task(loop) or _task_of(handle)
        except Exception:
            task = _task_of(handle)
        if handle is not None:
            snap.handle = _core_describe(handle)
        if task is not None:
            snap.task = task
            snap.task_name = task.get_name()
            snap.created = _created(task)
            from ._taskdump import awaiters

            snap.awaited_by = [t.get_name() for t in awaiters(loop, task)]
        return snap

    def _report(self, snapshot: _Snapshot | None, duration: float, ongoing: bool) -> None:
        if snapshot is None:
            return
        report = BlockingReport(snapshot, duration, ongoing)
        self.reports += 1
        if self._callback is None:
            logger.warning("%s", report)
            return
        try:
            self._callback(report)
        except Exception:
            logger.exception("Exception in the blocking detector's callback %r", self._callback)


def _core_describe(handle: Any) -> str:
    from asyncio import base_events

    try:
        return str(base_events._format_handle(handle))  # type: ignore[attr-defined]
    except Exception:
        return object.__repr__(handle)


def detect_blocking(
    loop: Any = None,
    threshold: float = 0.1,
    *,
    callback: Callable[[BlockingReport], object] | None = None,
) -> BlockingDetector:
    """Report every callback or task step that blocks `loop` for longer than `threshold`
    seconds; returns the running detector (`stop()`, or use it as a context manager).

    `loop` defaults to the running loop and must be a ferroloop loop. A watchdog thread
    (native, no Python code until something blocks) checks the loop ten times per
    threshold. When one callback has run past the threshold it takes the loop thread's
    Python stack *while it still blocks*, and once the callback returns it makes one
    `BlockingReport` for the episode, with its final duration: the task (name, coroutine
    stack, the tasks awaiting it, where it was created when debug mode recorded it),
    what ran, and the stack of the blocking call. The report goes to `callback(report)`
    if given (called in the watchdog thread, with the GIL), else to asyncio's logger as
    a warning (its text is `str(report)`).

    Taking the stack needs the GIL: a callback sleeping or doing blocking I/O has released
    it (the stack is taken at once), pure-Python code yields it within the interpreter's
    switch interval (5 ms), but a C call that holds the GIL (a big `re` match, a C
    extension's loop) lets the watchdog in only when it returns: then the report comes
    with no stack, or a stack from after the blocking call, and says so (`captured`).

    Cost while on: the loop stamps each callback's start (one TSC read, ~20 ns) and the
    watchdog wakes `10 / threshold` times a second. The detector stops with `stop()`,
    when the loop closes, or at interpreter exit; its thread never outlives them.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(loop, _core.LoopCore):
        raise TypeError(f"detect_blocking() needs a ferroloop loop, not {type(loop).__name__}")
    # Any real number (int, float, Decimal, Fraction…), as asyncio's delays; not a bool.
    if isinstance(threshold, (bool, complex)) or not hasattr(type(threshold), "__float__"):
        raise TypeError(f"threshold must be a number of seconds, not {type(threshold).__name__}")
    threshold = float(threshold)
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be positive and finite, got {threshold!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
    if loop.is_closed():
        raise RuntimeError("Event loop is closed")
    return BlockingDetector(loop, threshold, callback)


# Called with every new ferroloop loop, and with each as it closes (the CLI's --stats,
# --detect-blocking and --dump-on).
new_loop_hooks: list[Callable[[Any], object]] = []
closed_loop_hooks: list[Callable[[Any], object]] = []


def loop_closed(loop: Any) -> None:
    """`loop` is closing: its detectors stop, the close hooks run."""
    for detector in list(getattr(loop, "_detectors", ())):
        detector.stop()
    for hook in closed_loop_hooks:
        hook(loop)


# A detector's thread needs the interpreter: the ones still running stop before it goes.
_live: weakref.WeakSet[BlockingDetector] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for detector in list(_live):
        detector.stop()
