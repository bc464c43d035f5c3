"""The core loop, on the stock loop (the oracle) and on ferroloop.

Every behaviour test takes the `loop` or `loop_factory` fixture from conftest.py, so it runs
once on asyncio's own SelectorEventLoop and once on ferroloop: a test that fails on the stock
loop is a wrong test, one that fails only on ferroloop is a ferroloop bug. A known, open
ferroloop bug gets `ferroloop_bug(...)`: a strict xfail on the ferroloop param only. Where the
stock loop itself is broken on some CPython release, `stock_broken(...)` skips its param.

The suite also runs under PYTHONASYNCIODEBUG=1 and on CPython 3.10 to 3.13, so tests that
depend on the debug mode set it explicitly, and 3.11+ APIs are skipped on 3.10.
No test asserts an upper bound on time: performance is not tested here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
needs_311 = pytest.mark.skipif(not PY311, reason="needs CPython 3.11+")
needs_312 = pytest.mark.skipif(not PY312, reason="needs CPython 3.12+")

var: contextvars.ContextVar[Any] = contextvars.ContextVar("var", default="default")

# A deadline far enough away never to be reached by a passing test. Tests that could hang on
# a broken loop arm such a timer as a fallback and assert that it did not fire.
FAR = 10.0


def ferroloop_bug(reason: str) -> pytest.MarkDecorator:
    """Strict xfail on the ferroloop param only; the stock loop must still pass."""
    return pytest.mark.parametrize(
        "loop_factory",
        [
            "asyncio",
            pytest.param(
                "ferroloop",
                marks=pytest.mark.xfail(strict=True, reason=f"ferroloop bug: {reason}"),
            ),
        ],
        indirect=True,
    )


def _stock_refused_run_forever_corrupts_loop() -> bool:
    """CPython 3.13.0-3.13.2 (gh-130145): a run_forever() refused because a loop is already
    running still runs its clean-up, which unsets the *running* loop's state; nesting tests
    then hang on the stock loop. Probed, not guessed from the version."""
    lp = asyncio.SelectorEventLoop()
    seen = []

    def probe():
        try:
            lp.run_forever()
        except RuntimeError:
            pass
        seen.append(lp.is_running())
        lp.stop()

    try:
        lp.call_soon(probe)
        lp.run_forever()
    finally:
        lp.close()
    return seen != [True]


STOCK_GH130145 = _stock_refused_run_forever_corrupts_loop()


def stock_broken(condition: bool, reason: str) -> pytest.MarkDecorator:
    """Skips the stock-loop param where the oracle itself is broken (a CPython bug)."""
    return pytest.mark.parametrize(
        "loop_factory",
        [pytest.param("asyncio", marks=pytest.mark.skipif(condition, reason=reason)), "ferroloop"],
        indirect=True,
    )


skip_stock_gh130145 = stock_broken(
    STOCK_GH130145,
    "CPython bug gh-130145 (3.13.0-3.13.2): a refused run_forever() resets the running loop",
)


def run_once(loop: asyncio.AbstractEventLoop) -> None:
    """Runs exactly one loop iteration (the `stop()` before `run_forever()` contract)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def noop(*args: Any) -> None:
    pass


def drop_and_collect(holder: list[Any]) -> None:
    """Drops the only references (held in `holder`) and runs the cycle collector."""
    holder.clear()
    gc.collect()


class Collector:
    """An exception handler that records the contexts it is given."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)


# --------------------------------------------------------------------------- lifecycle


def test_run_forever_until_stop(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, 2)  # same iteration as stop(): still runs
    loop.run_forever()
    assert calls == [1, 2]
    assert not loop.is_running()


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "next iteration")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert calls == ["first"]
    # The stop request was consumed: the next run goes on until a new stop().
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "next iteration"]


def test_run_forever_can_run_again(loop):
    for i in range(3):
        calls = []
        loop.call_soon(calls.append, i)
        run_once(loop)
        assert calls == [i]


def test_run_until_complete_coroutine(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42
    assert not loop.is_running()


def test_run_until_complete_coroutine_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(main())


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"
    # An already-done future returns at once.
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return 42

    assert loop.run_until_complete(Awaitable()) == 42


def test_run_until_complete_not_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_future_of_another_loop(loop, loop_factory):
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_before_done(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(FAR)

    task = loop.create_task(main())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


CLOSED_OPS: dict[str, Callable[[asyncio.AbstractEventLoop, list[Any]], Any]] = {
    "call_soon": lambda lp, keep: lp.call_soon(noop),
    "call_soon_threadsafe": lambda lp, keep: lp.call_soon_threadsafe(noop),
    "call_later": lambda lp, keep: lp.call_later(1, noop),
    "call_at": lambda lp, keep: lp.call_at(lp.time() + 1, noop),
    "create_task": lambda lp, keep: lp.create_task(keep.append(asyncio.sleep(0)) or keep[-1]),
    "run_until_complete": lambda lp, keep: lp.run_until_complete(
        keep.append(asyncio.sleep(0)) or keep[-1]
    ),
    "run_forever": lambda lp, keep: lp.run_forever(),
    "run_in_executor": lambda lp, keep: lp.run_in_executor(None, noop),
    "add_reader": lambda lp, keep: lp.add_reader(keep[0], noop),
    "add_writer": lambda lp, keep: lp.add_writer(keep[0], noop),
}


@pytest.mark.parametrize("op", list(CLOSED_OPS))
def test_closed_loop_raises(loop, op):
    a, b = socket.socketpair()
    keep: list[Any] = [a]
    loop.close()
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            CLOSED_OPS[op](loop, keep)
    finally:
        for obj in keep[1:]:
            obj.close()  # the coroutines that were never scheduled
        a.close()
        b.close()


def test_closed_loop_remove_reader_writer_return_false(loop):
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, noop)
        loop.add_writer(a, noop)
        loop.close()
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False
    finally:
        a.close()
        b.close()


def test_close_is_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_close_running_loop_raises(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as e:
            errors.append(str(e))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_close_releases_pending_callbacks(loop):
    class Token:
        pass

    tokens = [Token(), Token(), Token()]
    refs = [weakref.ref(t) for t in tokens]
    loop.call_soon(noop, tokens[0])
    loop.call_later(FAR, noop, tokens[1])
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, noop, tokens[2])
        del tokens
        loop.close()
        gc.collect()
        assert [r() for r in refs] == [None, None, None]
    finally:
        a.close()
        b.close()


def _release_some_handles(loop: asyncio.AbstractEventLoop) -> None:
    """Runs a few handles and timer handles to completion and lets them go, so that the
    handles created next may reuse their memory."""
    for _ in range(4):
        loop.call_soon(noop)
        loop.call_later(0, noop)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()


def test_closed_loop_with_cycles_is_collected(loop_factory):
    lp = loop_factory()
    _release_some_handles(lp)
    lp.call_soon(lp.stop)  # loop -> handle -> bound method -> loop
    lp.call_later(FAR, lp.stop)
    ref = weakref.ref(lp)
    run_once(lp)
    lp.call_soon(lp.stop)
    lp.close()
    del lp
    gc.collect()
    assert ref() is None


def test_unclosed_loop_with_cycles_is_collected(loop_factory):
    # Handles recycled from released ones must stay visible to the cycle collector
    # (ferroloop's first handle freelist made them untracked).
    warm = loop_factory()
    _release_some_handles(warm)
    warm.close()
    lp = loop_factory()
    lp.call_soon(lp.stop)  # loop -> handle -> bound method -> loop
    lp.call_later(FAR, lp.stop)
    ref = weakref.ref(lp)
    holder = [lp]
    del lp
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        drop_and_collect(holder)
    assert ref() is None


def test_object_handle_cycles_are_collected(loop):
    # The everyday pattern `self._timer = loop.call_later(..., self._on_timeout)` (asyncio's
    # own timeout() and wait_for() build it) makes a cycle through the handle.
    _release_some_handles(loop)

    class Owner:
        def __init__(self):
            self.soon = loop.call_soon(self.fire)
            self.timer = loop.call_later(0, self.fire)

        def fire(self):
            pass

    owner = Owner()
    ref = weakref.ref(owner)
    del owner
    loop.call_later(0.001, loop.stop)
    loop.run_forever()  # both handles run; the loop lets go of them
    gc.collect()
    assert ref() is None


# A burst: more handles waiting than ferroloop keeps tracked by the cycle collector
# while they wait (UNTRACK_FROM in src/loop_core/mod.rs is 512).
BURST = 2000


def queue_burst(loop: asyncio.AbstractEventLoop) -> None:
    """Queues BURST no-op callbacks, so that the next ones wait behind them."""
    for _ in range(BURST):
        loop.call_soon(noop)


def test_burst_handle_held_in_cycle_lives_until_it_ran(loop):
    queue_burst(loop)
    fired = []

    class Owner:
        def __init__(self):
            self.soon = loop.call_soon(self.fire)

        def fire(self):
            fired.append(self)

    owner = Owner()
    ref = weakref.ref(owner)
    del owner
    gc.collect()  # queued: reachable from the loop, not garbage
    assert ref() is not None
    run_once(loop)
    assert fired and fired[0] is ref()
    fired.clear()
    gc.collect()  # ran: the cycle owner -> handle -> bound method -> owner is garbage
    assert ref() is None


def test_burst_context_values_live_until_the_callback_ran(loop):
    var: contextvars.ContextVar[object] = contextvars.ContextVar("var")

    class Value:
        pass

    seen = []
    queue_burst(loop)

    def schedule():
        value = Value()
        var.set(value)
        loop.call_soon(lambda: seen.append(var.get()))
        return weakref.ref(value)

    ref = contextvars.Context().run(schedule)  # only the handle's copy holds the value now
    gc.collect()
    assert ref() is not None
    run_once(loop)
    assert seen == [ref()]
    seen.clear()
    gc.collect()
    assert ref() is None


def test_burst_handle_kept_by_the_exception_handler_is_collected(loop):
    box: dict[str, list[Any]] = {"kept": []}
    loop.set_exception_handler(lambda lp, context: box["kept"].append(context["handle"]))
    queue_burst(loop)

    class Owner:
        def fail(self):
            self.handles = box["kept"]  # owner -> list -> handle -> bound method -> owner
            raise ValueError("boom")

    owner = Owner()
    ref = weakref.ref(owner)
    loop.call_soon(owner.fail)
    del owner
    run_once(loop)
    assert len(box["kept"]) == 1
    box.clear()
    gc.collect()
    assert ref() is None


def test_burst_context_kept_by_a_token_is_collected(loop):
    var: contextvars.ContextVar[object] = contextvars.ContextVar("var")

    class Value:
        pass

    refs = []
    queue_burst(loop)

    def cb():
        value = Value()
        value.token = var.set(value)  # context -> value -> token -> context
        refs.append(weakref.ref(value))

    loop.call_soon(cb)
    run_once(loop)
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None


def test_unclosed_loop_with_a_burst_of_cycles_is_collected(loop_factory):
    lp = loop_factory()
    for _ in range(BURST):
        lp.call_soon(lp.stop)  # loop -> handle -> bound method -> loop
    ref = weakref.ref(lp)
    holder = [lp]
    del lp
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        drop_and_collect(holder)
    assert ref() is None


def test_threadsafe_burst_runs_each_callback_in_its_own_context(loop):
    # Four threads queue faster than the loop runs; every callback sees the value its
    # thread set, in a context of its own (a set() inside one is seen by no other).
    var: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("var")
    mark: contextvars.ContextVar[bool] = contextvars.ContextVar("mark", default=False)
    nthreads, per = 4, 5000
    seen = []
    leaked = []

    def cb(expected):
        seen.append(var.get() == expected)
        leaked.append(mark.get())
        mark.set(True)
        if len(seen) == nthreads * per:
            loop.stop()

    go = threading.Event()

    def producer(t):
        go.wait()
        for i in range(per):
            var.set((t, i))
            loop.call_soon_threadsafe(cb, (t, i))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    loop.call_soon(go.set)
    loop.run_forever()
    for th in threads:
        th.join()
    assert len(seen) == nthreads * per and all(seen)
    assert not any(leaked)
    gc.collect()


def test_is_running(loop):
    seen = []

    async def main():
        seen.append(loop.is_running())

    assert not loop.is_running()
    loop.run_until_complete(main())
    assert seen == [True]
    assert not loop.is_running()


@skip_stock_gh130145
def test_run_forever_inside_callback_raises(loop):
    errors = []
    fut = loop.create_future()

    def cb():
        for run in (loop.run_forever, lambda: loop.run_until_complete(fut)):
            try:
                run()
            except RuntimeError as e:
                errors.append(str(e))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ["This event loop is already running"] * 2
    assert not loop.is_running()


@skip_stock_gh130145
def test_run_while_another_loop_runs_in_this_thread(loop, loop_factory):
    other = loop_factory()
    errors = []
    fut = other.create_future()

    def cb():
        for run in (other.run_forever, lambda: other.run_until_complete(fut)):
            try:
                run()
            except RuntimeError as e:
                errors.append(str(e))
        loop.stop()

    try:
        loop.call_soon(cb)
        loop.run_forever()
    finally:
        other.close()
    assert errors == ["Cannot run the event loop while another loop is running"] * 2


@skip_stock_gh130145
def test_loop_running_in_another_thread(loop):
    started = threading.Event()
    loop.call_soon(started.set)
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert started.wait(5)
        assert loop.is_running()
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_forever()
        fut = concurrent.futures.Future()
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_until_complete(asyncio.wrap_future(fut, loop=loop))
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert not thread.is_alive()
    assert not loop.is_running()


def test_time_is_monotonic_clock(loop):
    t0 = time.monotonic()
    t = loop.time()
    t1 = time.monotonic()
    assert isinstance(t, float)
    assert t0 <= t <= t1
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples)


# --------------------------------------------------------------------------- scheduling


def test_call_soon_fifo(loop):
    order = []
    for i in range(100):
        loop.call_soon(order.append, i)
    run_once(loop)
    assert order == list(range(100))


def test_call_soon_args(loop):
    got = []
    loop.call_soon(lambda *a: got.append(a), 1, "two", None)
    run_once(loop)
    assert got == [(1, "two", None)]


def test_call_later_ordering(loop):
    order = []
    loop.call_later(0.03, order.append, 3)
    loop.call_later(0.01, order.append, 1)
    loop.call_later(0.02, order.append, 2)
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert order == [1, 2, 3]


def test_call_at_ordering(loop):
    order = []
    now = loop.time()
    loop.call_at(now + 0.02, order.append, "b")
    loop.call_at(now + 0.01, order.append, "a")
    loop.call_at(now + 0.03, loop.stop)
    loop.run_forever()
    assert order == ["a", "b"]


def test_equal_deadlines(loop):
    # asyncio documents the order of callbacks scheduled for exactly the same time as
    # undefined, and its heap does not keep FIFO order beyond two of them; so: all of
    # them run, in the same iteration, and two equal deadlines keep their order.
    order = []
    when = loop.time() + 0.01
    loop.call_at(when, order.append, "first")
    loop.call_at(when, order.append, "second")
    run = []
    for i in range(20):
        loop.call_at(when + 0.005, run.append, i)
    loop.call_at(when + 0.005, loop.stop)
    loop.run_forever()
    assert order == ["first", "second"]
    assert sorted(run) == list(range(20))


def test_negative_delays_run_by_deadline(loop):
    order = []
    loop.call_later(-1, order.append, "-1")
    loop.call_later(-3, order.append, "-3")
    loop.call_later(0, order.append, "0")
    loop.call_later(-2, order.append, "-2")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert order == ["-3", "-2", "-1", "0"]


def test_call_at_in_the_past_runs_next_iteration(loop):
    order = []
    loop.call_at(loop.time() - 100, order.append, "past")
    run_once(loop)
    assert order == ["past"]


def test_sub_millisecond_deadlines_keep_their_order(loop):
    order = []
    now = loop.time() + 0.002
    for offset in (0.0004, 0.0001, 0.0003, 0.0002):
        loop.call_at(now + offset, order.append, offset)
    loop.call_at(now + 0.001, loop.stop)
    loop.run_forever()
    assert order == [0.0001, 0.0002, 0.0003, 0.0004]


def test_new_earlier_timer_shortens_the_wait(loop):
    fired = []
    far = loop.call_later(FAR, fired.append, "far")

    def schedule_near():
        loop.call_later(0.01, loop.stop)  # scheduled while the far one is the earliest

    loop.call_soon(schedule_near)
    loop.run_forever()
    assert fired == []
    far.cancel()


def test_timer_never_fires_early(loop):
    fired = []
    handle = loop.call_later(0.05, lambda: fired.append(loop.time()))
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    resolution = time.get_clock_info("monotonic").resolution
    assert len(fired) == 1
    assert fired[0] >= handle.when() - resolution


def test_only_handles_ready_at_iteration_start_run(loop):
    ticks = 0
    seen = []

    def tick():
        nonlocal ticks
        ticks += 1
        if ticks < 5:
            loop.call_soon(tick)
        else:
            loop.stop()

    def a():
        seen.append(("a", ticks))
        loop.call_soon(b)

    def b():
        seen.append(("b", ticks))
        loop.call_later(0, c)

    def c():
        seen.append(("c", ticks))

    loop.call_soon(tick)
    loop.call_soon(a)
    loop.run_forever()
    # Each callback scheduled by another runs in the following iteration.
    assert seen == [("a", 1), ("b", 2), ("c", 3)]


def test_callbacks_scheduled_after_stop_wait_for_next_run(loop):
    order = []

    def a():
        order.append("a")
        loop.call_soon(order.append, "b")

    loop.call_soon(a)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["a"]
    run_once(loop)
    assert order == ["a", "b"]


def test_cancel_after_run(loop):
    calls = []
    h = loop.call_soon(calls.append, 1)
    run_once(loop)
    assert calls == [1]
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    assert "cancelled" in repr(h)


def test_handle_cancel(loop):
    calls = []
    h = loop.call_soon(calls.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()
    run_once(loop)
    assert calls == []


def test_cancelled_timer_does_not_run(loop):
    calls = []
    t = loop.call_later(0.01, calls.append, "timer")
    t.cancel()
    assert t.cancelled()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert calls == []


def test_cancel_timer_from_earlier_callback_same_iteration(loop):
    calls = []
    when = loop.time() + 0.01
    loop.call_at(when, lambda: t2.cancel())
    t2 = loop.call_at(when + 1e-6, calls.append, "t2")
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert calls == []


def test_cancel_releases_callback_and_args(loop):
    class Token:
        def __call__(self):
            pass

    cb, arg = Token(), Token()
    refs = [weakref.ref(cb), weakref.ref(arg)]
    h = loop.call_later(FAR, cb, arg)
    del cb, arg
    h.cancel()
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_many_cancelled_timers_are_released(loop):
    # Cancelled timers must not pile up: once most scheduled timers are cancelled, the
    # loop lets go of them at its next iteration.
    handles = [loop.call_later(FAR + i, noop) for i in range(1000)]
    refs = [weakref.ref(h) for h in handles]
    for i, h in enumerate(handles):
        if i % 5:
            h.cancel()
    live = handles[::5]
    del handles, h
    fired = []
    loop.call_later(0.001, fired.append, True)
    loop.call_later(0.002, loop.stop)
    loop.run_forever()
    gc.collect()
    assert fired == [True]
    alive = [i for i, r in enumerate(refs) if r() is not None]
    assert alive == list(range(0, 1000, 5))
    for h in live:
        h.cancel()


def test_spent_handles_release_callback_args_and_context(loop):
    class Token:
        def __call__(self, *args):
            pass

    tokens = [Token() for _ in range(6)]
    refs = [weakref.ref(t) for t in tokens]
    ctx = contextvars.copy_context()
    ctx.run(var.set, tokens[4])
    ctx2 = contextvars.copy_context()
    ctx2.run(var.set, tokens[5])
    loop.call_soon(tokens[0], tokens[1], context=ctx)
    loop.call_later(0, tokens[2], tokens[3], context=ctx2)
    del tokens, ctx, ctx2
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()
    assert [r() for r in refs] == [None] * 6


def test_finalizer_of_spent_callback_args_can_schedule(loop):
    ran = []

    class Finalizer:
        def __del__(self):
            loop.call_soon(ran.append, "from __del__")

    loop.call_soon(noop, Finalizer())
    loop.call_later(0, noop, Finalizer())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    gc.collect()
    run_once(loop)
    assert ran == ["from __del__", "from __del__"]


def test_new_handles_are_fresh_after_many_have_run(loop):
    # Whatever a loop does with the handles of callbacks that have run, a new handle is
    # a new, independent one, and a handle someone still holds is left alone.
    kept = []
    seen = []

    def cb(key):
        seen.append((key, var.get()))

    for round_ in range(3):
        handles = []
        for i in range(20):
            key = (round_, i)
            ctx = contextvars.copy_context()
            ctx.run(var.set, key)
            if i % 2:
                h = loop.call_soon(cb, key, context=ctx)
            else:
                when = loop.time() + i * 1e-4
                h = loop.call_at(when, cb, key, context=ctx)
                assert h.when() == when
            assert not h.cancelled()
            assert "cb" in repr(h)
            assert weakref.ref(h)() is h
            if hasattr(h, "get_context"):  # Handle.get_context() is new in 3.12
                assert h.get_context() is ctx
            handles.append(h)
        handles[3].cancel()
        kept += handles[:2]
        del handles, h
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
    assert len(seen) == 3 * 19
    assert all(key == value for key, value in seen)
    assert len({id(h) for h in kept}) == len(kept)
    for h in kept:
        assert not h.cancelled()
        assert "cb" in repr(h)  # a spent handle still says what it ran


def test_timer_handle_when(loop):
    when = loop.time() + 100
    t = loop.call_at(when, noop)
    assert t.when() == when
    before = loop.time()
    t2 = loop.call_later(5, noop)
    after = loop.time()
    assert before + 5 <= t2.when() <= after + 5
    t.cancel()
    t2.cancel()


def test_handle_repr(loop):
    loop.set_debug(False)

    def my_callback(*args):
        pass

    h = loop.call_soon(my_callback, 1, "x")
    r = repr(h)
    assert r.startswith("<Handle")
    assert "my_callback(" in r  # 3.13+ leaves the arguments out unless in debug mode
    h.cancel()
    assert "cancelled" in repr(h)
    t = loop.call_later(FAR, my_callback)
    assert repr(t).startswith("<TimerHandle")
    assert "when=" in repr(t)
    assert "my_callback" in repr(t)
    t.cancel()
    assert "cancelled" in repr(t)


def test_handle_repr_cancelled_debug(loop):
    # In debug mode asyncio keeps the repr of a cancelled handle, callback included, for
    # its slow-callback warnings: it says both "cancelled" and what the callback was.
    loop.set_debug(True)

    def my_callback(*args):
        pass

    h = loop.call_soon(my_callback, 1)
    t = loop.call_later(FAR, my_callback, 2)
    h.cancel()
    t.cancel()
    assert repr(h).startswith("<Handle cancelled ")
    assert "my_callback(1)" in repr(h)
    assert repr(t).startswith("<TimerHandle cancelled when=")
    assert "my_callback(2)" in repr(t)


def test_handle_repr_debug_points_at_caller(loop):
    loop.set_debug(True)
    line = inspect.currentframe().f_lineno + 1
    h = loop.call_soon(noop)
    assert f"created at {__file__}:{line}" in repr(h)
    line = inspect.currentframe().f_lineno + 1
    t = loop.call_later(FAR, noop)
    assert f"created at {__file__}:{line}" in repr(t)
    h.cancel()
    t.cancel()


@needs_312  # Handle.get_context() is new in 3.12
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h = loop.call_soon(noop, context=ctx)
    assert h.get_context() is ctx
    t = loop.call_later(FAR, noop, context=ctx)
    assert t.get_context() is ctx
    assert isinstance(loop.call_soon(noop).get_context(), contextvars.Context)
    t.cancel()


SCHEDULERS: dict[str, Callable[..., Any]] = {
    "call_soon": lambda lp, cb, ctx: lp.call_soon(cb, context=ctx),
    "call_soon_threadsafe": lambda lp, cb, ctx: lp.call_soon_threadsafe(cb, context=ctx),
    "call_later": lambda lp, cb, ctx: lp.call_later(0, cb, context=ctx),
    "call_at": lambda lp, cb, ctx: lp.call_at(lp.time(), cb, context=ctx),
}


@pytest.mark.parametrize("method", list(SCHEDULERS))
def test_context_argument(loop, method):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []

    def cb():
        seen.append(var.get())
        var.set("changed by callback")

    SCHEDULERS[method](loop, cb, ctx)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert seen == ["in ctx"]
    assert ctx[var] == "changed by callback"
    assert var.get() == "default"


def test_default_context_is_a_copy_at_schedule_time(loop):
    seen = []

    def cb():
        seen.append(var.get())
        var.set("set in callback")

    token = var.set("at schedule time")
    try:
        loop.call_soon(cb)
        var.set("after scheduling")
    finally:
        var.reset(token)
    run_once(loop)
    assert seen == ["at schedule time"]
    assert var.get() == "default"


def test_contextvars_propagate_into_tasks(loop):
    async def child():
        value = var.get()
        var.set("child")
        return value

    async def main():
        var.set("parent")
        got = await loop.create_task(child())
        return got, var.get()

    assert loop.run_until_complete(main()) == ("parent", "parent")
    assert var.get() == "default"


def test_call_soon_inside_task_copies_task_context(loop):
    seen = []

    async def main():
        var.set("task value")
        loop.call_soon(lambda: seen.append(var.get()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert seen == ["task value"]


@needs_311
def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from ctx")

    async def child():
        value = var.get()
        var.set("child")
        return value

    async def main():
        return await loop.create_task(child(), context=ctx)

    assert loop.run_until_complete(main()) == "from ctx"
    assert ctx[var] == "child"


@pytest.mark.parametrize("delay", [None, "1", b"1", Decimal("0.01")], ids=repr)
def test_call_later_bad_delay(loop, delay):
    with pytest.raises(TypeError):
        loop.call_later(delay, noop)


def test_scheduling_signatures(loop):
    out = []
    loop.call_soon(callback=lambda: out.append("call_soon"))
    loop.call_later(delay=0, callback=lambda: out.append("call_later"))
    loop.call_at(when=loop.time(), callback=lambda: out.append("call_at"))
    loop.call_soon_threadsafe(callback=lambda: out.append("threadsafe"))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(out) == ["call_at", "call_later", "call_soon", "threadsafe"]
    for bad in (
        lambda: loop.call_soon(noop, unknown=1),
        lambda: loop.call_soon_threadsafe(noop, unknown=1),
        lambda: loop.call_later(0, noop, unknown=1),
        lambda: loop.call_at(0, noop, unknown=1),
        lambda: loop.call_soon(),
        lambda: loop.call_later(1),
        lambda: loop.add_reader(0),
    ):
        with pytest.raises(TypeError):
            bad()


@pytest.mark.skipif(not PY311, reason="3.10's asyncio fails an assert (AssertionError) instead")
def test_call_at_none(loop):
    with pytest.raises(TypeError):
        loop.call_at(None, noop)


def test_nan_deadline(loop):
    # ferroloop once panicked here (Duration::from_secs_f64(NaN)).
    # The stock loop runs a NaN timer at once up to 3.12 and raises ValueError (from the
    # selector's timeout) on 3.13; either is fine, a Rust panic is not.
    calls = []

    def cb():
        calls.append("nan")
        loop.stop()

    loop.call_at(float("nan"), cb)  # the only timer: the poll timeout derives from it
    try:
        loop.run_forever()
    except ValueError:
        assert sys.version_info >= (3, 13)
    else:
        assert calls == ["nan"]


def test_infinite_delay_never_fires(loop):
    calls = []
    t = loop.call_later(float("inf"), calls.append, "inf")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == []
    t.cancel()


# --------------------------------------------------------------------------- threads wake-ups


@pytest.mark.parametrize("watching_fd", [False, True], ids=["no-fd", "watching-fd"])
def test_call_soon_threadsafe_wakes_blocked_loop(loop, watching_fd):
    if watching_fd:  # the poll then has an fd to watch besides the loop's own waker
        a, b = socket.socketpair()
        loop.add_reader(a, noop)
    fired = []
    timer = loop.call_later(FAR, fired.append, "timer")
    started = threading.Event()

    def poke():
        started.wait(5)
        time.sleep(0.05)  # let the loop block in its poll for the far timer
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(started.set)
    thread = threading.Thread(target=poke)
    thread.start()
    loop.run_forever()
    thread.join()
    assert fired == []  # it stopped before the timer
    timer.cancel()
    if watching_fd:
        loop.remove_reader(a)
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_call_soon_threadsafe_wakes_loop_with_nothing_scheduled(loop):
    started = threading.Event()
    result = []

    def poke():
        started.wait(5)
        time.sleep(0.05)  # the loop now blocks with no deadline at all
        loop.call_soon_threadsafe(result.append, "woken")
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(started.set)
    thread = threading.Thread(target=poke)
    thread.start()
    loop.run_forever()
    thread.join()
    assert result == ["woken"]


def test_call_soon_threadsafe_future_result(loop):
    fut = loop.create_future()
    thread = threading.Timer(0.01, lambda: loop.call_soon_threadsafe(fut.set_result, 42))
    thread.start()
    fallback = loop.call_later(FAR, fut.cancel)
    assert loop.run_until_complete(fut) == 42
    thread.join()
    fallback.cancel()


def test_run_coroutine_threadsafe(loop):
    async def add(a, b):
        await asyncio.sleep(0)
        return a + b

    results = []

    def worker():
        results.append(asyncio.run_coroutine_threadsafe(add(1, 2), loop).result(10))
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=worker)
    thread.start()
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert results == [3]


def test_call_soon_threadsafe_many_threads_none_lost(loop):
    # 8 threads x 100k callbacks. Debug mode records a traceback per handle, which would
    # make this slow without testing anything more, so it runs in non-debug mode.
    loop.set_debug(False)
    nthreads, per_thread = 8, 100_000
    count = 0

    def inc():
        nonlocal count
        count += 1

    def worker():
        call = loop.call_soon_threadsafe
        for _ in range(per_thread):
            call(inc)

    def coordinator():
        workers = [threading.Thread(target=worker) for _ in range(nthreads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        loop.call_soon_threadsafe(loop.stop)  # queued after every increment

    thread = threading.Thread(target=coordinator)
    thread.start()
    loop.run_forever()
    thread.join()
    assert count == nthreads * per_thread


class _FinalizerInContext:
    """Puts `obj` in a context that only a cancelled timer holds, so that `obj` is
    finalized when the loop releases that timer (at the start of its next iteration)."""

    @staticmethod
    def arm(loop: asyncio.AbstractEventLoop, obj: object) -> None:
        ctx = contextvars.copy_context()
        ctx.run(var.set, obj)
        # Two cancelled timers at the top of the heap, the first holding `obj`: both
        # loops release the first while purging, before they compute the poll timeout.
        loop.call_later(0.2, noop, context=ctx).cancel()
        loop.call_later(0.3, noop).cancel()


def test_callback_queued_by_finalizer_during_purge_runs(loop):
    """A callback queued by a finalizer that runs while the loop releases cancelled timers
    runs at once, not after the next timer (ferroloop once computed its poll timeout
    before releasing them)."""
    ran = []

    class Finalizer:
        def __del__(self):
            loop.call_soon(lambda: (ran.append("finalizer"), loop.stop()))

    fallback = loop.call_later(1.0, ran.append, "fallback")
    loop.call_soon(_FinalizerInContext.arm, loop, Finalizer())
    loop.run_forever()
    fallback.cancel()
    assert ran == ["finalizer"]


def test_call_soon_threadsafe_while_loop_releases_gil_before_poll(loop):
    """call_soon_threadsafe wakes the loop whenever it lands, even while the loop thread has
    released the GIL between two iterations (here in a finalizer): ferroloop once lost
    that wake-up and slept until its next timer."""
    in_del = threading.Event()
    queued = threading.Event()
    ran = []

    class ReleasesGil:
        def __del__(self):
            in_del.set()
            queued.wait(5)  # blocks without the GIL while the thread queues a callback

    def poke():
        if in_del.wait(5):
            loop.call_soon_threadsafe(lambda: (ran.append("threadsafe"), loop.stop()))
        queued.set()

    fallback = loop.call_later(1.0, ran.append, "fallback")
    loop.call_soon(_FinalizerInContext.arm, loop, ReleasesGil())
    thread = threading.Thread(target=poke)
    thread.start()
    loop.run_forever()
    thread.join()
    fallback.cancel()
    assert ran == ["threadsafe"]


# --------------------------------------------------------------------------- tasks


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_create_task_name(loop):
    async def main():
        return asyncio.current_task().get_name()

    task = loop.create_task(main(), name="my-task")
    assert task.get_name() == "my-task"
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == "my-task"


def test_create_task_not_a_coroutine(loop):
    with pytest.raises(TypeError):
        loop.create_task(42)


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, coro, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        return "ok"

    coro = main()
    task = loop.create_task(coro, name="named")
    # 3.13.3 and 3.14+ pass every keyword on to the factory (gh-128307); 3.13.4+ sets
    # the name itself, as versions before 3.13.3 did.
    passes_all = sys.version_info >= (3, 14) or sys.version_info[:3] == (3, 13, 3)
    assert calls == [(loop, coro, {"name": "named"} if passes_all else {})]
    assert task.get_name() == "named"
    assert loop.run_until_complete(task) == "ok"
    # asyncio.ensure_future and friends go through the factory too.
    assert loop.run_until_complete(main()) == "ok"
    assert len(calls) == 2
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


@needs_311
def test_task_factory_receives_context(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()
    loop.run_until_complete(loop.create_task(asyncio.sleep(0), context=ctx))
    assert calls == [{"context": ctx}]


def test_set_task_factory_not_callable(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)
    assert loop.get_task_factory() is None


def test_current_task_all_tasks_running_loop(loop):
    async def sleeper():
        await asyncio.sleep(FAR)

    async def main():
        me = asyncio.current_task()
        other = loop.create_task(sleeper())
        await asyncio.sleep(0)
        tasks = asyncio.all_tasks()
        running = asyncio.get_running_loop()
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
        return me, other, tasks, running, asyncio.all_tasks()

    task = loop.create_task(main())
    me, other, tasks, running, after = loop.run_until_complete(task)
    assert me is task
    assert tasks == {task, other}
    assert running is loop
    assert after == {task}
    assert asyncio.current_task(loop) is None
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_get_event_loop_inside_coroutine(loop):
    async def main():
        return asyncio.get_event_loop()

    assert loop.run_until_complete(main()) is loop


def test_primitives_queue_event_lock(loop):
    async def main():
        queue = asyncio.Queue(maxsize=2)
        done = asyncio.Event()
        lock = asyncio.Lock()
        got = []

        async def producer():
            for i in range(10):
                await queue.put(i)
            await queue.put(None)

        async def consumer():
            while (item := await queue.get()) is not None:
                async with lock:
                    got.append(item)
                    await asyncio.sleep(0)
            done.set()

        tasks = [asyncio.ensure_future(producer()), asyncio.ensure_future(consumer())]
        await asyncio.wait_for(done.wait(), FAR)
        await asyncio.gather(*tasks)
        return got

    assert loop.run_until_complete(main()) == list(range(10))


def test_wait_first_completed_and_as_completed(loop):
    async def after(delay, value):
        await asyncio.sleep(delay)
        return value

    async def main():
        tasks = [asyncio.ensure_future(after(d, d)) for d in (0.03, 0.01, 0.02)]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = [t.result() for t in done]
        order = [await f for f in asyncio.as_completed(tasks)]
        return first, len(pending), order

    assert loop.run_until_complete(main()) == ([0.01], 2, [0.01, 0.02, 0.03])


def test_task_cancel(loop):
    cleaned = []

    async def sleeper():
        try:
            await asyncio.sleep(FAR)
        finally:
            cleaned.append(True)

    async def main():
        task = loop.create_task(sleeper())
        await asyncio.sleep(0)
        assert task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task

    task = loop.run_until_complete(main())
    assert task.cancelled()
    assert cleaned == [True]


def test_cancel_run_until_complete_task(loop):
    async def sleeper():
        await asyncio.sleep(FAR)

    task = loop.create_task(sleeper())
    loop.call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_wait_for_timeout(loop):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(FAR), 0.01)
        return await asyncio.wait_for(asyncio.sleep(0, "in time"), FAR)

    assert loop.run_until_complete(main()) == "in time"


def test_shield(loop):
    async def inner():
        await asyncio.sleep(0.01)
        return "inner done"

    async def main():
        inner_task = loop.create_task(inner())
        outer = asyncio.ensure_future(asyncio.shield(inner_task))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await inner_task

    assert loop.run_until_complete(main()) == "inner done"


def test_gather_return_exceptions(loop):
    async def ok(x):
        await asyncio.sleep(0)
        return x

    async def fail():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def main():
        return await asyncio.gather(ok(1), fail(), ok(3), return_exceptions=True)

    r = loop.run_until_complete(main())
    assert r[0] == 1 and r[2] == 3
    assert isinstance(r[1], ValueError) and str(r[1]) == "bad"


def test_gather_propagates_first_exception(loop):
    async def fail():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def main():
        await asyncio.gather(asyncio.sleep(0), fail())

    with pytest.raises(ValueError, match="bad"):
        loop.run_until_complete(main())


@needs_311
def test_task_group(loop):
    async def work(x):
        await asyncio.sleep(0.001 * x)
        return x

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(work(i)) for i in range(5)]
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == list(range(5))


@needs_311
def test_task_group_failure_cancels_siblings(loop):
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(FAR)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fail():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper())
            tg.create_task(fail())

    with pytest.raises(ExceptionGroup) as info:  # noqa: F821 (3.11+ builtin)
        loop.run_until_complete(main())
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert cancelled == [True]


@needs_311
def test_asyncio_timeout(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(FAR)
        async with asyncio.timeout(None) as cm:
            cm.reschedule(loop.time() + FAR)
            await asyncio.sleep(0)
        return cm.expired()

    assert loop.run_until_complete(main()) is False


# --------------------------------------------------------------------------- errors


def test_exception_in_callback_reaches_handler(loop):
    handler = Collector()
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    after = []

    def bad_callback():
        raise ValueError("oops")

    h = loop.call_soon(bad_callback)
    loop.call_soon(after.append, "loop went on")
    run_once(loop)
    assert after == ["loop went on"]
    [ctx] = handler.contexts
    assert ctx["message"].startswith("Exception in callback ")
    assert "bad_callback" in ctx["message"]
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["handle"] is h


def test_exception_in_timer_callback_reaches_handler(loop):
    handler = Collector()
    loop.set_exception_handler(handler)

    def bad_timer():
        raise KeyError("k")

    t = loop.call_later(0, bad_timer)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    [ctx] = handler.contexts
    assert ctx["message"].startswith("Exception in callback ")
    assert isinstance(ctx["exception"], KeyError)
    assert ctx["handle"] is t


def test_exception_context_has_source_traceback_in_debug(loop):
    loop.set_debug(True)
    handler = Collector()
    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    run_once(loop)
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["source_traceback"]


def test_default_handler_logs_callback_exception(loop, caplog):
    def bad_callback():
        raise ValueError("logged")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(bad_callback)
        run_once(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Exception in callback")
    assert records[0].exc_info[0] is ValueError


def test_call_exception_handler_custom(loop):
    handler = Collector()
    loop.set_exception_handler(handler)
    context = {"message": "custom", "extra": 1}
    loop.call_exception_handler(context)
    assert handler.contexts == [context]
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "hello there", "exception": KeyError("k")})
        loop.call_exception_handler({"message": "via call_exception_handler"})
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("hello there") for m in messages)
    assert any(m.startswith("via call_exception_handler") for m in messages)


def test_failing_handler_falls_back_to_default(loop, caplog):
    def bad_handler(lp, context):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    after = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(after.append, "still running")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_once(loop)
    assert after == ["still running"]
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert any("Unhandled error in exception handler" in r.getMessage() for r in records)


def test_set_exception_handler_not_callable(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_propagates(loop, exc_type):
    handler = Collector()
    loop.set_exception_handler(handler)
    after = []

    def boom():
        raise exc_type()

    loop.call_soon(boom)
    loop.call_soon(after.append, "pending")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert handler.contexts == []
    # The loop is still usable, and the callback queued behind the failing one survives.
    run_once(loop)
    assert after == ["pending"]
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_task_propagates(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0.001, "again")) == "again"


def test_base_exception_in_timer_propagates(loop):
    def boom():
        raise KeyboardInterrupt

    loop.call_later(0.001, boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    run_once(loop)
    assert not loop.is_running()


def _interrupt_main_thread_later(signum: int, delay: float) -> threading.Thread:
    def send():
        time.sleep(delay)
        signal.pthread_kill(threading.main_thread().ident, signum)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
def test_sigint_while_blocked_raises_keyboard_interrupt(loop):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    fired = []
    timer = loop.call_later(FAR, fired.append, "timer")
    thread = _interrupt_main_thread_later(signal.SIGINT, 0.05)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        thread.join()
    assert fired == []
    assert not loop.is_running()
    timer.cancel()
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
def test_python_signal_handler_runs_while_blocked(loop):
    got = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append((signum, list(fired))))
    fired = []
    try:
        thread = _interrupt_main_thread_later(signal.SIGUSR1, 0.02)
        loop.call_later(0.2, lambda: (fired.append("timer"), loop.stop()))
        loop.run_forever()  # the handler runs, and the loop goes on to its timer
        thread.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [(signal.SIGUSR1, [])]  # it ran while the loop waited for the timer
    assert fired == ["timer"]


def test_busy_callbacks_do_not_starve_timers_and_io(loop, sockpair):
    a, b = sockpair
    spins = 0
    seen = []

    def spin():
        nonlocal spins
        spins += 1
        if not loop.is_closed() and len(seen) < 2:
            loop.call_soon(spin)

    def on_readable():
        seen.append(("io", a.recv(10)))
        loop.remove_reader(a)

    def on_timer():
        seen.append(("timer",))

    loop.call_soon(spin)
    loop.add_reader(a, on_readable)
    b.send(b"x")
    loop.call_later(0.01, on_timer)
    fallback = loop.call_later(FAR, loop.stop)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert sorted(seen) == [("io", b"x"), ("timer",)]
    assert spins > 1


def test_task_exception_never_retrieved_reported(loop):
    handler = Collector()
    loop.set_exception_handler(handler)

    async def fail():
        raise ValueError("lost")

    task = loop.create_task(fail())
    run_once(loop)
    assert task.done()
    del task
    gc.collect()
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], ValueError)


# --------------------------------------------------------------------------- debug


def test_get_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_debug_default_follows_environment(loop):
    assert loop.get_debug() is bool(sys.flags.dev_mode or os.environ.get("PYTHONASYNCIODEBUG"))


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow_callback():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback)
        run_once(loop)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(
        m.startswith("Executing") and "slow_callback" in m and "took" in m for m in messages
    ), messages


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.05)
        run_once(loop)
    assert not [r for r in caplog.records if r.name == "asyncio"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_debug_rejects_coroutine_function(loop, method):
    loop.set_debug(True)

    async def coro_func():
        pass

    args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
    with pytest.raises(TypeError, match="coroutines cannot be used with"):
        getattr(loop, method)(*args, coro_func)
    coro = coro_func()
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used with"):
            getattr(loop, method)(*args, coro)
    finally:
        coro.close()


def test_debug_call_soon_coroutine_message(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_soon\(\)"):
        loop.call_soon(coro_func)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_debug_rejects_non_callable(loop, method):
    loop.set_debug(True)
    args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
    with pytest.raises(TypeError, match="a callable object was expected"):
        getattr(loop, method)(*args, 42)


def test_non_debug_non_callable_reported_when_run(loop):
    # Without debug mode asyncio does not check the callback: the TypeError of calling it
    # reaches the exception handler when it runs, and the loop goes on.
    loop.set_debug(False)
    handler = Collector()
    loop.set_exception_handler(handler)
    h = loop.call_soon(42)
    after = []
    loop.call_soon(after.append, 1)
    run_once(loop)
    assert after == [1]
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], TypeError)
    assert ctx["handle"] is h
    assert ctx["message"].startswith("Exception in callback")


def test_debug_call_soon_from_another_thread_raises(loop):
    loop.set_debug(True)
    errors = []

    def worker():
        try:
            loop.call_soon(noop)
        except RuntimeError as e:
            errors.append(str(e))
        loop.call_soon_threadsafe(loop.stop)

    def start():
        threading.Thread(target=worker).start()

    loop.call_soon(start)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert len(errors) == 1
    assert "Non-thread-safe operation" in errors[0]


def test_debug_run_in_executor_rejects_coroutine_function(loop):
    loop.set_debug(True)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with run_in_executor"):
        loop.run_in_executor(None, coro_func)


def test_set_debug_while_running_enables_origin_tracking(loop):
    loop.set_debug(False)

    async def never_awaited():
        pass

    async def main():
        asyncio.get_running_loop().set_debug(True)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        coro = never_awaited()
        del coro
        gc.collect()

    with pytest.warns(RuntimeWarning, match="was never awaited") as record:
        loop.run_until_complete(main())
    messages = [str(w.message) for w in record if "never_awaited" in str(w.message)]
    assert messages and "Coroutine created at" in messages[0]


def test_debug_never_awaited_coroutine_shows_origin(loop):
    loop.set_debug(True)

    async def never_awaited():
        pass

    async def main():
        coro = never_awaited()
        del coro
        gc.collect()

    with pytest.warns(RuntimeWarning, match="was never awaited") as record:
        loop.run_until_complete(main())
    messages = [str(w.message) for w in record if "never_awaited" in str(w.message)]
    assert messages and "Coroutine created at" in messages[0]


# --------------------------------------------------------------------------- executors


def test_run_in_executor_default(loop):
    def work(a, b):
        return a + b, threading.get_ident()

    async def main():
        return await loop.run_in_executor(None, work, 2, 3)

    (result, ident) = loop.run_until_complete(main())
    assert result == 5
    assert ident != threading.get_ident()
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_custom(loop):
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="custom-pool") as executor:
        name = loop.run_until_complete(
            loop.run_in_executor(executor, lambda: threading.current_thread().name)
        )
    assert name.startswith("custom-pool")


def test_set_default_executor(loop):
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="default-pool")
    try:
        loop.set_default_executor(executor)
        name = loop.run_until_complete(
            loop.run_in_executor(None, lambda: threading.current_thread().name)
        )
        assert name.startswith("default-pool")
    finally:
        executor.shutdown(wait=True)


@needs_311
def test_set_default_executor_rejects_non_thread_pool(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_shutdown_default_executor(loop):
    def thread_name():
        return threading.current_thread().name

    name = loop.run_until_complete(loop.run_in_executor(None, thread_name))
    loop.run_until_complete(loop.shutdown_default_executor())
    assert name not in {t.name for t in threading.enumerate()}  # its threads were joined
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, thread_name)
    # An explicit executor still works.
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="explicit") as executor:
        name = loop.run_until_complete(loop.run_in_executor(executor, thread_name))
    assert name.startswith("explicit")


def test_close_shuts_default_executor_down(loop):
    loop.run_until_complete(loop.run_in_executor(None, noop))
    loop.close()
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, noop)


def test_to_thread(loop):
    def work(x):
        return x, var.get(), threading.get_ident()

    async def main():
        var.set("propagated")
        return await asyncio.to_thread(work, 7)

    x, value, ident = loop.run_until_complete(main())
    assert (x, value) == (7, "propagated")
    assert ident != threading.get_ident()
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_exception(loop):
    def fail():
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))
    loop.run_until_complete(loop.shutdown_default_executor())


# --------------------------------------------------------------------------- async generators


def test_shutdown_asyncgens_finalizes_suspended_generator(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append("finally")

    gen = agen()

    async def first_item():
        return await gen.__anext__()  # first iterated on the loop: its hook sees it

    assert loop.run_until_complete(first_item()) == 1
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert finalized == ["finally"]


def test_abandoned_asyncgen_finalized_while_running(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            finalized.append("finally")

    async def main():
        gen = agen()
        await gen.__anext__()
        del gen
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert finalized == ["finally"]


def test_asyncgen_hooks_installed_and_restored(loop):
    def my_firstiter(agen):
        pass

    def my_finalizer(agen):
        pass

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=my_firstiter, finalizer=my_finalizer)
    try:
        before = sys.get_asyncgen_hooks()

        async def main():
            return sys.get_asyncgen_hooks()

        inside = loop.run_until_complete(main())
        after = sys.get_asyncgen_hooks()
    finally:
        sys.set_asyncgen_hooks(*saved)
    assert inside.firstiter is not None and inside.finalizer is not None
    assert inside.firstiter != my_firstiter and inside.finalizer != my_finalizer
    assert after == before


# --------------------------------------------------------------------------- fds


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("as_int", [False, True], ids=["object", "int"])
def test_add_reader_socket(loop, sockpair, as_int):
    a, b = sockpair
    fd = a.fileno() if as_int else a
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))
        loop.stop()

    loop.add_reader(fd, on_readable, "tag")
    fallback = loop.call_later(FAR, loop.stop)
    loop.call_soon(b.send, b"hello")
    loop.run_forever()
    fallback.cancel()
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False


def test_add_reader_pipe(loop, pipe):
    r, w = pipe
    got = []

    def on_readable():
        got.append(os.read(r, 100))
        loop.stop()

    loop.add_reader(r, on_readable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.call_soon(os.write, w, b"through a pipe")
    loop.run_forever()
    fallback.cancel()
    assert got == [b"through a pipe"]
    assert loop.remove_reader(r) is True


class FileNo:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def test_add_writer_pipe_fileno_object(loop, pipe):
    r, w = pipe
    calls = []

    def on_writable():
        calls.append(os.write(w, b"x"))
        assert loop.remove_writer(FileNo(w)) is True
        loop.stop()

    loop.add_writer(FileNo(w), on_writable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == [1]
    assert os.read(r, 10) == b"x"
    assert loop.remove_writer(w) is False


def test_add_writer_socket(loop, sockpair):
    a, b = sockpair
    calls = []

    def on_writable():
        calls.append(a.send(b"ping"))
        loop.remove_writer(a)
        loop.stop()

    loop.add_writer(a, on_writable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == [4]
    assert b.recv(10) == b"ping"


def test_reader_is_level_triggered(loop, sockpair):
    a, b = sockpair
    b.send(b"unread")
    calls = 0

    def on_readable():
        nonlocal calls
        calls += 1  # the data is left unread: the fd stays readable
        if calls == 3:
            loop.remove_reader(a)
            loop.stop()

    loop.add_reader(a, on_readable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert calls == 3
    assert a.recv(100) == b"unread"


def test_reader_once_per_iteration_until_drained(loop, sockpair):
    a, b = sockpair
    b.send(b"x")
    calls = []

    def on_readable():
        calls.append(a.recv(100))

    loop.add_reader(a, on_readable)
    for _ in range(3):
        run_once(loop)
    assert calls == [b"x"]
    assert loop.remove_reader(a) is True


def test_reader_and_writer_on_same_fd(loop, sockpair):
    a, b = sockpair
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a)
        b.send(b"now readable")

    def on_readable():
        events.append(("r", a.recv(100)))
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    fallback = loop.call_later(FAR, loop.stop)
    loop.run_forever()
    fallback.cancel()
    assert events == ["w", ("r", b"now readable")]
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_replace_reader(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a, calls.append, "first")
    loop.add_reader(a, calls.append, "second")
    b.send(b"x")
    run_once(loop)
    run_once(loop)
    assert calls and set(calls) == {"second"}
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_remove_unregistered(loop, sockpair):
    a, _ = sockpair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(a, noop)
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True


def test_removed_reader_not_called(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a, calls.append, 1)
    b.send(b"x")
    assert loop.remove_reader(a) is True
    run_once(loop)
    run_once(loop)
    assert calls == []


def test_reader_removed_by_earlier_callback_same_iteration(loop):
    # Both fds are readable in the same iteration; whichever reader runs first removes
    # the other, whose already-queued callback must then not run.
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        (a1, b1), (a2, b2) = pairs
        calls = []

        def reader(me, other):
            calls.append(me)
            loop.remove_reader(other)
            loop.remove_reader(me)

        loop.add_reader(a1, reader, a1, a2)
        loop.add_reader(a2, reader, a2, a1)
        b1.send(b"x")
        b2.send(b"x")
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        assert len(calls) == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_exception_in_reader_reaches_handler(loop, sockpair):
    a, b = sockpair
    handler = Collector()
    loop.set_exception_handler(handler)

    def bad_reader():
        loop.remove_reader(a)
        raise ValueError("reader")

    loop.add_reader(a, bad_reader)
    b.send(b"x")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    [ctx] = handler.contexts
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["message"].startswith("Exception in callback")


def test_reader_fires_on_eof(loop, sockpair):
    a, b = sockpair
    r, w = os.pipe()
    got = []

    def on_socket():
        got.append(("socket", a.recv(10)))
        loop.remove_reader(a)

    def on_pipe():
        got.append(("pipe", os.read(r, 10)))
        loop.remove_reader(r)

    try:
        loop.add_reader(a, on_socket)
        loop.add_reader(r, on_pipe)
        b.shutdown(socket.SHUT_WR)  # the peer is done writing: EOF
        os.close(w)  # the pipe's writer is gone: EOF (a hang-up for epoll)
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
    finally:
        os.close(r)
    assert sorted(got) == [("pipe", b""), ("socket", b"")]


def test_remove_reader_after_fd_closed(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, noop)
    a.close()
    b.close()
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False


def test_many_ready_fds_all_served(loop):
    # More ready fds than one poll may return at once: every reader is still called.
    pairs = [socket.socketpair() for _ in range(300)]
    try:
        served = set()

        def on_readable(i, sock):
            served.add(i)
            sock.recv(10)
            loop.remove_reader(sock)
            if len(served) == len(pairs):
                loop.stop()

        for i, (a, b) in enumerate(pairs):
            loop.add_reader(a, on_readable, i, a)
            b.send(b"x")
        fallback = loop.call_later(FAR, loop.stop)
        loop.run_forever()
        fallback.cancel()
        assert served == set(range(len(pairs)))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize(
    "bad", [-1, object(), FileNo(-5), FileNo("x")], ids=["-1", "object", "neg-fileno", "str-fileno"]
)
def test_bad_fd(loop, method, bad):
    with pytest.raises(ValueError):
        getattr(loop, method)(bad, noop)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_bad_fd(loop, method):
    with pytest.raises(ValueError):
        getattr(loop, method)(-1)
    with pytest.raises(ValueError):
        getattr(loop, method)(object())


def test_add_reader_regular_file(loop, tmp_path):
    # epoll refuses regular files, and asyncio lets that PermissionError through.
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, noop)
        assert loop.remove_reader(f) is False


# --------------------------------------------------------------------------- API surface

PUBLIC_API = sorted(n for n in vars(asyncio.AbstractEventLoop) if not n.startswith("_"))


@pytest.mark.parametrize("name", PUBLIC_API)
def test_public_api_is_implemented(loop, name):
    # Every public method of asyncio.AbstractEventLoop exists and is the loop's own, not
    # the abstract one (which raises a bare NotImplementedError).
    assert callable(getattr(loop, name))
    assert getattr(type(loop), name) is not getattr(asyncio.AbstractEventLoop, name)


_EXIT_UNCLOSED = """
import asyncio, sys
import ferroloop
factory = {"asyncio": asyncio.SelectorEventLoop, "ferroloop": ferroloop.new_event_loop}[sys.argv[1]]
loop = factory()
asyncio.set_event_loop(loop)
async def coro():
    pass
async def main():
    for _ in range(1000):
        loop.create_task(coro())
    loop.call_later(5.0, print).cancel()
    await asyncio.sleep(0)
loop.run_until_complete(main())
print("done")
"""


@pytest.mark.parametrize("kind", ["asyncio", "ferroloop"])
def test_unclosed_loop_collected_at_exit_is_quiet(kind, tmp_path):
    """A loop left unclosed is collected at interpreter exit without an error (its
    `__del__` ran `close()` with the modules' globals already cleared)."""
    script = tmp_path / "exit_unclosed.py"
    script.write_text(_EXIT_UNCLOSED)
    r = subprocess.run(
        [sys.executable, str(script), kind], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "done"
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
