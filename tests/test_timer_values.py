"""Timer deadlines as asyncio keeps and uses them, on the stock loop and on ferroloop:
the object `call_at` is given comes back from `when()`, delays add as numbers, odd values
give asyncio's exception type, and a `time()` replaced on the loop decides what is due.

Where asyncio only fails later, inside the run (a str or Decimal deadline), ferroloop raises
the same exception type at the call; the tests accept either place (README: differences)."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal
from fractions import Fraction
from typing import Any
from unittest import mock

import pytest


def noop(*args: Any) -> None:
    pass


def run_for(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


def raises_at_call_or_run(loop, exc_type, schedule) -> None:
    """`schedule()` raises `exc_type` at once (ferroloop) or the run does (asyncio).

    asyncio fails when it computes the poll timeout from the deadline, which happens
    only with nothing ready and that timer first: the iteration is ended by a writable
    socket's callback, not by a timer or a ready callback."""
    try:
        schedule()
    except exc_type:
        return
    a, b = socket.socketpair()
    try:
        loop.add_writer(a, loop.stop)
        with pytest.raises(exc_type):
            loop.run_forever()
    finally:
        loop.remove_writer(a)
        a.close()
        b.close()


class IntFloat100(int):
    """An int whose __float__ disagrees with its value: arithmetic uses the value."""

    def __float__(self) -> float:
        return 100.0


def test_call_at_int_deadline_comes_back_as_that_int(loop):
    # aiohttp's TimeoutHandle passes an int deadline and reads `_when` back as an int.
    when = 10**12 + 7
    h = loop.call_at(when, noop)
    assert h.when() is when
    assert h._when is when
    assert f"when={when}" in repr(h)
    assert hash(h) == hash(when)
    h.cancel()


def test_call_at_float_deadline_is_the_same_object(loop):
    when = loop.time() + 12.5
    h = loop.call_at(when, noop)
    assert h.when() is when
    h.cancel()


def test_call_later_deadline_is_time_plus_delay(loop):
    before = loop.time()
    h = loop.call_later(5, noop)
    assert isinstance(h.when(), float)
    assert before + 5 <= h.when() <= loop.time() + 5
    h.cancel()


def test_int_subclass_delay_adds_by_value(loop):
    before = loop.time()
    h = loop.call_later(IntFloat100(1), noop)
    assert before + 1 <= h.when() < before + 2
    h.cancel()


def test_int_subclass_deadline_orders_by_value(loop):
    out = []
    now = loop.time()
    loop.call_at(IntFloat100(int(now) - 1), out.append, "int-subclass")
    loop.call_at(now - 0.5, out.append, "float")
    run_for(loop, 0.01)
    assert out == ["int-subclass", "float"]


def test_fraction_deadline_runs_and_is_kept(loop):
    out = []
    when = Fraction(int(loop.time() * 1000) - 5, 1000)
    h = loop.call_at(when, out.append, "fraction")
    assert h.when() is when
    run_for(loop, 0.01)
    assert out == ["fraction"]


def test_fraction_delay(loop):
    out = []
    h = loop.call_later(Fraction(1, 100), out.append, "fraction")
    assert isinstance(h.when(), float)  # float + Fraction is a float
    run_for(loop, 0.1)
    assert out == ["fraction"]


def test_bool_delay_is_one_second(loop):
    before = loop.time()
    h = loop.call_later(True, noop)
    assert before + 1 <= h.when() < before + 2
    h.cancel()


@pytest.mark.parametrize(
    "when, exc_type",
    [("x", TypeError), (Decimal("1.5"), TypeError), (1j, TypeError), (10**400, OverflowError)],
    ids=["str", "Decimal", "complex", "10**400"],
)
def test_bad_call_at_deadline(loop, when, exc_type):
    raises_at_call_or_run(loop, exc_type, lambda: loop.call_at(when, noop))


@pytest.mark.parametrize(
    "delay, exc_type",
    [("x", TypeError), (Decimal("1"), TypeError), (1j, TypeError), (10**400, OverflowError)],
    ids=["str", "Decimal", "complex", "10**400"],
)
def test_bad_call_later_delay(loop, delay, exc_type):
    raises_at_call_or_run(loop, exc_type, lambda: loop.call_later(delay, noop))


def test_closed_loop_call_at_says_closed_before_the_deadline_type(loop):
    loop.close()
    for when in ("x", 10**400, 1.0):
        with pytest.raises(RuntimeError, match="closed"):
            loop.call_at(when, noop)


def test_closed_loop_call_later_adds_the_delay_first(loop):
    # asyncio computes `self.time() + delay` before its call_at checks the loop.
    loop.close()
    with pytest.raises(TypeError):
        loop.call_later("x", noop)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, noop)


def test_nan_deadline_with_an_infinite_one_pending(loop):
    # Due at once, wherever it lands among the other timers. (asyncio's heap puts a NaN
    # pushed after the inf timer below it, so there it never runs: ferroloop's fix.)
    out = []
    loop.call_at(float("nan"), out.append, "nan")
    inf = loop.call_later(float("inf"), out.append, "inf")
    loop.call_soon(out.append, "soon")  # something ready: 3.13's selector never sees NaN
    run_for(loop, 0.02)
    assert out == ["soon", "nan"]
    inf.cancel()


@pytest.mark.parametrize("loop_factory", ["ferroloop"], indirect=True)
def test_nan_deadline_pushed_after_an_infinite_one_runs(loop):
    # asyncio's heap leaves it under the inf timer (never run); ferroloop runs it.
    out = []
    inf = loop.call_later(float("inf"), out.append, "inf")
    loop.call_at(float("nan"), out.append, "nan")
    run_for(loop, 0.02)
    assert out == ["nan"]
    inf.cancel()


def test_nan_deadline_runs_before_later_timers(loop):
    out = []
    loop.call_at(float("nan"), out.append, "nan")
    loop.call_soon(out.append, "soon")
    loop.call_later(0.005, out.append, "soon-timer")
    run_for(loop, 0.02)
    assert out == ["soon", "nan", "soon-timer"]


def test_infinite_deadlines(loop):
    out = []
    loop.call_at(float("-inf"), out.append, "-inf")
    late = loop.call_at(float("inf"), out.append, "inf")
    assert late.when() == float("inf")
    run_for(loop, 0.01)
    assert out == ["-inf"]
    late.cancel()


def test_patched_time_decides_what_is_due(loop):
    # unittest.mock.patch.object(loop, "time"), as aiohttp's and looptime-style tests do:
    # asyncio's run step calls self.time().
    out = []
    now = loop.time()
    with mock.patch.object(loop, "time", return_value=now + 1000):
        loop.call_at(now + 500, out.append, "due by the patched clock")
        h = loop.call_later(1, out.append, "later")
        assert h.when() == now + 1001
        run_for(loop, 0)
        assert out == ["due by the patched clock"]
        h.cancel()
    assert "time" not in vars(loop)


def test_time_assigned_on_the_instance_and_deleted(loop):
    out = []
    now = loop.time()
    loop.time = lambda: now + 60
    loop.call_at(now + 30, out.append, "due")
    run_for(loop, 0)
    assert out == ["due"]
    del loop.time
    h = loop.call_at(now + 30, out.append, "not due on the real clock")
    run_for(loop, 0.01)
    assert out == ["due"]
    h.cancel()


def test_subclass_overriding_time(loop):
    # A loop class of its own with a time() method (test helpers' fake clocks).
    class FakeClock(type(loop)):  # type: ignore[misc]
        offset = 0.0

        def time(self) -> float:
            return super().time() + self.offset

    lp = FakeClock()
    try:
        out = []
        lp.call_at(lp.time() + 3600, out.append, "an hour ahead")
        lp.offset = 3601.0
        run_for(lp, 0)
        assert out == ["an hour ahead"]
    finally:
        lp.close()


def test_class_swapped_to_one_with_its_own_time(loop):
    # looptime-style tools swap the loop's class for a subclass with its own clock.
    out = []

    class Ahead(type(loop)):  # type: ignore[misc]
        def time(self) -> float:
            return super().time() + 3600

    loop.call_at(loop.time() + 1800, out.append, "due after the swap")
    loop.__class__ = Ahead
    run_for(loop, 0)
    assert out == ["due after the swap"]
