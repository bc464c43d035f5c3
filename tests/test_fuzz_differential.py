"""Differential fuzz: random programs of call_soon/call_later/call_at/cancel, tasks,
gather, wait_for, Event, Queue and call_soon_threadsafe (tests/fuzz_programs.py), each run
on the stock loop and on ferroloop in virtual time; the traces (what ran, in which
iteration, in which order, with which results) must be equal.

FERROLOOP_FUZZ_EXAMPLES sets the number of programs (default 500; `make soak` runs more).
"""

from __future__ import annotations

import asyncio
import os

import ferroloop
import fuzz_programs as fp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FERROLOOP_FUZZ_EXAMPLES", "500"))

ops = st.builds(
    fp.Op,
    kind=st.sampled_from(fp.KINDS),
    a=st.integers(min_value=0, max_value=20),
    b=st.integers(min_value=0, max_value=20),
)
programs = st.lists(ops, min_size=1, max_size=25)

RUN = {"programs": 0}


def trace_on(factory, program):
    loop = factory()
    try:
        return fp.run(loop, program)
    finally:
        loop.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(programs)
def test_programs_trace_as_on_the_stock_loop(program):
    RUN["programs"] += 1
    stock = trace_on(asyncio.SelectorEventLoop, program)
    assert trace_on(ferroloop.new_event_loop, program) == stock


def test_virtual_time_drives_the_trace():
    # The harness itself: timers fire by virtual deadline, a thread's callback lands
    # where the program queued it, whatever the machine's speed.
    program = [
        fp.Op("later", 3),
        fp.Op("at", 1),
        fp.Op("soon"),
        fp.Op("threadsafe"),
        fp.Op("sleeper", 2),
        fp.Op("wait_for", 5, 1),
    ]
    for factory in (asyncio.SelectorEventLoop, ferroloop.new_event_loop):
        trace = trace_on(factory, program)
        names = [t[1] for t in trace]
        assert names[:2] == ["soon", "threadsafe"]
        assert [t[0] for t in trace] == sorted(t[0] for t in trace)
        assert ("wait_for", 5, "timeout") in [t[1:] for t in trace]
